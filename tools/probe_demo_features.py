"""How much of the target task a fitted linear probe reads from the pretrained features.

Usage, from anywhere (the venv with the demo's extra active)::

    python tools/probe_demo_features.py --degrees 90    # about 15 s

For seeds 0, 1 and 2: pretrain exactly as the demo does, then fit
scikit-learn's ``LogisticRegression`` (defaults, ``max_iter=5000``) on the
100 labelled target images, rotated by ``--degrees``, once on the pretrained
backbone's pooled features (what the head sees) and once on the raw pixels,
and print the target validation accuracy of each, beside the pretrained
network's own (no transfer). Context for docs/demo-protocol.md; not part of
the demo's protocol, and it runs neither lp_ft nor fine-tuning.
"""

from __future__ import annotations

import argparse
import sys

SEEDS = (0, 1, 2)


def main(argv: list[str] | None = None) -> int:
    """Print one line per seed; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--degrees", type=float, required=True, help="the target's rotation")
    options = parser.parse_args(argv)

    import torch
    from sklearn.linear_model import LogisticRegression

    from mentor_fn._app.demo.data import load_tasks
    from mentor_fn._app.demo.protocol import Watch, _pretrain, accuracy
    from mentor_fn._app.demo.run import _one_torch_thread

    print(f"target rotated by {options.degrees:g} degrees; target val accuracy")
    print("seed  no transfer  probe on features  probe on pixels")
    with _one_torch_thread():
        for seed in SEEDS:
            tasks = load_tasks(seed, options.degrees)
            model = _pretrain(tasks.source, seed, Watch()).eval()
            (train_x, train_y), (val_x, val_y) = (
                tasks.target.train.tensors,
                tasks.target.val.tensors,
            )
            with torch.no_grad():
                features = [model.backbone(x).mean(dim=(2, 3)).numpy() for x in (train_x, val_x)]
            pixels = [x.flatten(1).numpy() for x in (train_x, val_x)]
            scores = []
            for train, val in (features, pixels):
                probe = LogisticRegression(max_iter=5000).fit(train, train_y.numpy())
                scores.append(probe.score(val, val_y.numpy()))
            print(
                f"{seed:>4}  {accuracy(model, tasks.target.val):>11.1%}  "
                f"{scores[0]:>17.1%}  {scores[1]:>15.1%}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
