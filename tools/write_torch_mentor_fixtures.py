"""Write the torch_mentor checkpoint fixtures of tests/data/torch_mentor/ with torch_mentor itself.

torch_mentor (PyPI: ``torch-mentor``) needs torchvision, which has no build
for the CPU torch of the project's own environment, so this runs in a second
environment (never the project's ``.venv``)::

    python3 -m venv .venv-tv
    .venv-tv/bin/pip install torch==2.14.1 torchvision==0.29.1
    .venv-tv/bin/pip install torch-mentor timm
    .venv-tv/bin/pip install -e '.[test]'
    .venv-tv/bin/python tools/write_torch_mentor_fixtures.py

Each torch_mentor release whose checkpoint format differs (0.2.2: no lr
coefficients; 0.2.3: coefficients, one optimizer group per layer; 0.3.0: a
flat optimizer group, coefficient groups rebuilt without Adam's settings, a
batch count) is installed with ``pip install --no-deps --target`` into a
scratch folder and runs the scenarios in its own process. Every file is
written by torch_mentor's own ``save`` (through ``fit``): nothing here writes
its format by hand. For the runs torch_mentor can continue itself, its
continued trajectory (per-epoch metrics, final weights, group lrs) is written
beside the file as plain data, so the test suite compares a run continued in
mentor_fn with the same run continued in torch_mentor.

Usage: ``python tools/write_torch_mentor_fixtures.py [--output DIR] [--versions-dir DIR]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

VERSIONS = ("0.2.2", "0.2.3", "0.3.0")
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "tests" / "data" / "torch_mentor"
EPOCHS_BEFORE, EPOCHS_AFTER = 2, 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--versions-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "mentor_fn_torch_mentor_versions",
        help="where each torch_mentor release is installed (pip --target)",
    )
    parser.add_argument("--worker", metavar="VERSION", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        _write_version(arguments.worker, arguments.output)
        return 0
    arguments.output.mkdir(parents=True, exist_ok=True)
    _write_data(arguments.output)
    for version in VERSIONS:
        target = arguments.versions_dir / version
        if not (target / "mentor").is_dir():
            subprocess.run(
                [
                    *(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"),
                    *("--target", str(target), f"torch-mentor=={version}"),
                ],
                check=True,
            )
        environment = {**os.environ, "PYTHONPATH": str(target)}
        command = [sys.executable, __file__, "--worker", version, "--output", str(arguments.output)]
        subprocess.run(command, check=True, env=environment)
    return 0


# The data every run trains on: fixed tensors, saved once, so that the test suite
# trains on exactly these (no generator needs to agree across torch versions).


def _write_data(output: Path) -> None:
    import torch

    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(32, 4, generator=generator)
    targets = torch.randint(0, 3, (32,), generator=generator)
    torch.save({"inputs": inputs, "targets": targets, "batch_size": 8}, output / "data.pt")


def _write_version(version: str, output: Path) -> None:
    import mentor
    import torch
    from mentor import Mentee
    from mentor.trainers import Classifier
    from torch import nn
    from torch.nn import functional
    from torch.utils.data import DataLoader, TensorDataset

    installed = getattr(getattr(mentor, "version", None), "__version__", None)
    assert installed in (None, version), f"expected torch_mentor {version}, got {installed}"
    data = torch.load(output / "data.pt", weights_only=True)
    loader = DataLoader(
        TensorDataset(data["inputs"], data["targets"]),
        batch_size=data["batch_size"],
        shuffle=False,
    )

    class TinyNet(Mentee):
        """A parameter on the model itself, a BatchNorm, a nested body, a head.

        The Linear before the BatchNorm has no bias, as usual: the BatchNorm
        removes it, so its gradient would be rounding noise, which Adam scales
        up to full steps, and no two builds of torch would agree on it.
        """

        def __init__(self, hidden=6, num_classes=3):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(num_classes))
            self.body = nn.Sequential(
                nn.Linear(4, hidden, bias=False),
                nn.BatchNorm1d(hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
            )
            self.head = nn.Linear(hidden, num_classes)
            self.trainer = Classifier()

        def forward(self, x):
            return self.head(torch.relu(self.body(x))) * self.scale

    class TinyPlain(Mentee):
        """No trainer: its own steps; validation reports accuracy only (no loss)."""

        def __init__(self, hidden=6, num_classes=3):
            super().__init__()
            self.body = nn.Linear(4, hidden)
            self.head = nn.Linear(hidden, num_classes)

        def forward(self, x):
            return self.head(torch.relu(self.body(x)))

        def training_step(self, sample, loss_fn=None):
            inputs, targets = sample
            logits = self(inputs)
            loss = (loss_fn or self.loss_fn or functional.cross_entropy)(logits, targets)
            accuracy = (logits.argmax(1) == targets).float().mean().item()
            return loss, {"acc": accuracy, "loss": loss.item()}

        def validation_step(self, sample, loss_fn=None):
            inputs, targets = sample
            return {"acc": (self(inputs).argmax(1) == targets).float().mean().item()}

    has_coefficients = version != "0.2.2"
    # 0.3.0 cannot train with coefficients (its coefficient groups lack Adam's
    # settings): its trained run uses the flat group it trains with.
    trains_with_coefficients = version == "0.2.3"

    def freeze(model, name):
        # 0.2.2 freezes by prefixes (freeze(*names)); later releases by patterns.
        if version == "0.2.2":
            model.freeze(name)
        else:
            model.freeze([name])

    def fresh(model_class=TinyNet):
        torch.manual_seed(0)
        return model_class(hidden=6, num_classes=3)

    def path(name):
        return output / f"tm{version}_{name}.pt"

    def continued(name, model_class=TinyNet):
        """torch_mentor's own continuation of the run saved as ``name``."""
        file = path(name)
        try:
            model, optimizer, _ = model_class.resume_training(str(file), model_class=model_class)
            model.fit(loader, loader, epochs=EPOCHS_AFTER)
        except Exception as error:  # recorded: the test shows mentor_fn continues it
            record = {"resume_error": f"{type(error).__name__}: {error}"}
        else:
            record = {
                "train_history": [dict(h) for h in model._train_history[-EPOCHS_AFTER:]],
                "validate_history": {
                    epoch: dict(metrics)
                    for epoch, metrics in model._validate_history.items()
                    if epoch > EPOCHS_BEFORE
                },
                "state_dict": {k: v.clone() for k, v in model.state_dict().items()},
                "group_lrs": [float(group["lr"]) for group in optimizer.param_groups],
            }
        record["torch_mentor_version"] = version
        record["torch_version"] = str(torch.__version__)
        torch.save(record, file.with_suffix(".continued.pt"))

    # Trained with Classifier, saved by fit at each epoch, then continued.
    model = fresh()
    freeze(model, "body.1")  # a frozen BatchNorm: its statistics keep updating
    if trains_with_coefficients:
        model.set_lr_coefficient(0.5, "body")
    model.create_train_objects(lr=0.01, step_size=1, gamma=0.5)
    model.fit(loader, loader, epochs=EPOCHS_BEFORE, checkpoint_path=str(path("trained")))
    continued("trained")

    # Saved before any optimizer existed: the curriculum alone.
    model = fresh()
    freeze(model, "body.0")
    if has_coefficients:
        model.set_lr_coefficient(0.25, "body")
        model.set_lr_coefficient(0.5, "body.3")
    model.save(str(path("untrained")))

    if version == "0.2.3":
        # A layer frozen after the optimizer was built keeps its (inert) group;
        # torch_mentor's own resume rebuilds without it and cannot load the state.
        model = fresh()
        model.set_lr_coefficient(0.5, "body")
        model.create_train_objects(lr=0.01, step_size=1, gamma=0.5)
        model.fit(loader, loader, epochs=1)
        freeze(model, "body.3")
        model.fit(loader, loader, epochs=1, checkpoint_path=str(path("frozen_after_build")))
        continued("frozen_after_build")

    if version == "0.3.0":
        # Coefficients set after training: 0.3.0 rebuilds the groups without
        # Adam's settings (its own training then fails with KeyError 'betas').
        # TinyPlain: with a parameter left out of the new groups (TinyNet's
        # scale), 0.3.0 cannot even save the optimizer.
        model = fresh(TinyPlain)
        model.create_train_objects(lr=0.01, step_size=1, gamma=0.5)
        model.fit(loader, loader, epochs=EPOCHS_BEFORE)
        model.set_lr_coefficient(0.5, "body")
        model.save(str(path("coefficients_after_training")))
        continued("coefficients_after_training", TinyPlain)

        # Own steps, a loss object, inference state: what mentor_fn has no place for.
        model = fresh(TinyPlain)
        model.create_train_objects(lr=0.01, step_size=1, gamma=0.5, loss_fn=nn.CrossEntropyLoss())
        model.register_inference_state("class_names", ["a", "b", "c"])
        model.fit(loader, loader, epochs=1, checkpoint_path=str(path("own_steps")))

        # An object the weights-only unpickler cannot rebuild (a defaultdict):
        # reading it needs full unpickling (mentor_fn's trust=True).
        import collections

        model = fresh()
        model.register_inference_state("counts", collections.defaultdict(int, {"a": 1}))
        model.save(str(path("needs_trust")))


if __name__ == "__main__":
    sys.exit(main())
