"""Compute the demo's premise rule: which rotation angle the target task uses.

Usage, from anywhere (the venv with the demo's extra active)::

    python tools/choose_demo_angle.py    # about 20 s: three pretrainings

The rule (docs/demo-protocol.md, fixed before it was computed): for seeds 0,
1 and 2, pretrain exactly as the demo does, then measure the fraction of the
seed's target validation images, rotated by each angle of the grid, that the
pretrained network classifies correctly, with no transfer at all. The
demo's angle is the largest angle whose mean over the three seeds is at
least 50%. Nothing here runs lp_ft or fine-tuning: the rule measures only
whether the pretrained features transfer.

It prints a Markdown table (one row per angle: each seed, the mean, whether
it qualifies) and the chosen angle; docs/demo-protocol.md holds a copy, and
``ROTATION_DEGREES`` in mentor_fn/_demo_data.py is the chosen angle.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Mapping, Sequence

ANGLES = (15, 30, 45, 60, 75, 90)
SEEDS = (0, 1, 2)
THRESHOLD = 0.5
"""The mean no-transfer target accuracy an angle needs, as a fraction."""


def choose_angle(means: Mapping[int, float], threshold: float = THRESHOLD) -> int | None:
    """The largest angle whose mean accuracy is at least ``threshold``; None if none is."""
    qualifying = [angle for angle, mean in means.items() if mean >= threshold]
    return max(qualifying) if qualifying else None


def measure(angles: Sequence[int] = ANGLES, seeds: Sequence[int] = SEEDS) -> dict[int, list[float]]:
    """angle -> the pretrained network's target val accuracy per seed, with no transfer."""
    from mentor_fn._app.demo.data import load_tasks
    from mentor_fn._app.demo.protocol import Watch, _pretrain, accuracy
    from mentor_fn._app.demo.run import _one_torch_thread

    table: dict[int, list[float]] = {angle: [] for angle in angles}
    with _one_torch_thread():  # as the demo runs: the same numbers
        for seed in seeds:
            # The same pretraining as the demo's at this seed; the source task
            # does not depend on the angle.
            pretrained = _pretrain(load_tasks(seed).source, seed, Watch())
            for angle in angles:
                table[angle].append(accuracy(pretrained, load_tasks(seed, angle).target.val))
            print(f"seed {seed} done", file=sys.stderr, flush=True)
    return table


def markdown_table(table: Mapping[int, Sequence[float]], seeds: Sequence[int] = SEEDS) -> str:
    """The table as Markdown: angle, each seed, mean, and whether the angle qualifies."""
    header = ["angle", *(f"seed {seed}" for seed in seeds), "mean", f">= {THRESHOLD:.0%}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for angle, values in table.items():
        mean = statistics.mean(values)
        cells = [
            f"{angle}",
            *(f"{value:.1%}" for value in values),
            f"{mean:.1%}",
            "yes" if mean >= THRESHOLD else "no",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table and the chosen angle; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    table = measure()
    print(markdown_table(table))
    chosen = choose_angle({angle: statistics.mean(values) for angle, values in table.items()})
    if chosen is None:
        print(f"chosen angle: none (no angle reaches {THRESHOLD:.0%})")
        return 1
    print(f"chosen angle: {chosen} degrees")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
