"""Coming from torch_mentor: its checkpoints convert, and the converted run goes on.

The files in tests/data/torch_mentor/ were written by torch_mentor 0.2.2, 0.2.3
and 0.3.0 themselves (tools/write_torch_mentor_fixtures.py, run in a second
environment with torch 2.14.1), with torch_mentor's own continuation of each
run it can continue. A run converted and continued in mentor_fn here (torch
2.13) must follow the run continued in torch_mentor.

Tolerance of the comparison: 1e-6, absolute, on weights (all of magnitude < 2)
and per-epoch mean losses. Both continuations make the same 8 Adam steps on
tensors of at most 36 float32 values, but with another torch build and its
kernels, where a float32 operation may round differently by one unit in the
last place (6e-8 relative). Measured here: identical with torch's default
threads, at most 6e-8 apart with one thread (another summation order), so
1e-6 leaves a margin of 15. The fixtures' model has no parameter whose
gradient is rounding noise (no bias before its BatchNorm): Adam would scale
that noise up to full steps, and no two builds would agree.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional
from torch.utils.data import DataLoader, TensorDataset
from torch_features import needs_torch_mentor_reading

import mentor_fn as mf
from mentor_fn import CheckpointError, Classifier, Mentee
from mentor_fn._app.cli import main

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), needs_torch_mentor_reading]

DATA = Path(__file__).parent / "data" / "torch_mentor"
VERSIONS = ("0.2.2", "0.2.3", "0.3.0")
TOLERANCE = 1e-6  # see the module docstring


class TinyNet(Mentee):
    """The fixtures' TinyNet, as a mentor_fn Mentee (same modules, same forward)."""

    def __init__(self, hidden: int = 6, num_classes: int = 3) -> None:
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x))) * self.scale


class TinyPlain(Mentee):
    """The fixtures' TinyPlain: its own steps; validation reports accuracy only."""

    def __init__(self, hidden: int = 6, num_classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Linear(4, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))

    def training_step(self, batch):
        inputs, targets = batch
        logits = self(inputs)
        loss = functional.cross_entropy(logits, targets)
        return loss, {"acc": (logits.argmax(1) == targets).float().mean().item(), "loss": loss}

    def validation_step(self, batch):
        inputs, targets = batch
        return {"acc": (self(inputs).argmax(1) == targets).float().mean().item()}


def loader() -> DataLoader:
    data = torch.load(DATA / "data.pt", weights_only=True)
    dataset = TensorDataset(data["inputs"], data["targets"])
    return DataLoader(dataset, batch_size=data["batch_size"], shuffle=False)


def fixture(name: str) -> Path:
    return DATA / f"tm{name}.pt"


def converted(tmp_path: Path, name: str, **options) -> tuple[Path, mf.TorchMentorConversion]:
    destination = tmp_path / f"{name}.ckpt"
    return destination, mf.convert_torch_mentor_checkpoint(fixture(name), destination, **options)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_converted_run_continues_like_torch_mentor_continues_it(tmp_path, version):
    path, report = converted(tmp_path, f"{version}_trained")
    assert report.torch_mentor_version == version and report.epoch == 2
    reference = torch.load(fixture(f"{version}_trained").with_suffix(".continued.pt"))
    assert "resume_error" not in reference, reference.get("resume_error")

    model, optimizer, _ = TinyNet.resume_training(path)
    assert model.current_epoch == 2
    model.fit(loader(), loader(), epochs=2, progress=False)

    for name, expected in reference["state_dict"].items():
        assert torch.allclose(
            model.state_dict()[name].double(), expected.double(), atol=TOLERANCE, rtol=0
        ), name
    for mine, theirs in zip(model.history[-2:], reference["train_history"]):
        assert mine["train"]["loss"] == pytest.approx(theirs["loss"], abs=TOLERANCE)
    validated = [reference["validate_history"][epoch] for epoch in (3, 4)]
    for mine, theirs in zip(model.history[-2:], validated):
        assert mine["val"]["loss"] == pytest.approx(theirs["loss"], abs=TOLERANCE)
    # The trainable groups' lrs are torch_mentor's, decayed by the same StepLR.
    live = sorted(g["lr"] for g in optimizer.param_groups if g["params"] and not _frozen(model, g))
    assert live == pytest.approx(sorted(reference["group_lrs"]), rel=1e-12)


def _frozen(model: Mentee, group: dict) -> bool:
    return all(model.curriculum_state.is_frozen(layer) for layer in group["layers"])


def test_the_converted_curriculum_is_torch_mentors(tmp_path):
    path, _ = converted(tmp_path, "0.2.3_untrained")
    model = TinyNet.resume(path)
    # frozen_modules ['body.0'], lr_coefficients {'body': 0.25, 'body.3': 0.5}
    assert sorted(model._frozen_modules) == ["body.0"]
    assert dict(model._lr_coefficients) == {"body": 0.25, "body.3": 0.5}
    assert model.curriculum_state.coefficient("body.1") == 0.25
    assert model.optimizer is None and model.history == [] and model.epoch == 0
    saved = torch.load(fixture("0.2.3_untrained"), weights_only=False)
    for name, tensor in saved["state_dict"].items():
        assert torch.equal(model.state_dict()[name], tensor)


def test_layers_frozen_after_the_build_keep_their_inert_group_and_train_on(tmp_path):
    # torch_mentor cannot resume this one itself (it rebuilds without the group).
    reference = torch.load(fixture("0.2.3_frozen_after_build").with_suffix(".continued.pt"))
    assert "different number of parameter groups" in reference["resume_error"]
    path, report = converted(tmp_path, "0.2.3_frozen_after_build")
    assert any("scale" in line and "never trained" in line for line in report.changed)
    model, optimizer, _ = TinyNet.resume_training(path)
    groups = {g["layers"]: g for g in optimizer.param_groups if g["params"]}
    assert set(groups) == {("body.0",), ("body.1",), ("body.3",), ("head",)}
    frozen_before = {
        n: t.clone() for n, t in model.state_dict().items() if n.startswith(("body.3", "scale"))
    }
    model.fit(loader(), epochs=1, progress=False)
    for name, tensor in frozen_before.items():
        assert torch.equal(model.state_dict()[name], tensor), name
    # Unfreezing body.3 is a patch: its group is there.
    plan = model.curriculum.unfreeze("body.3")
    assert isinstance(plan, mf.NoChange | mf.Patch)


def test_coefficient_groups_without_adams_settings_train_in_mentor_fn(tmp_path):
    reference = torch.load(
        fixture("0.3.0_coefficients_after_training").with_suffix(".continued.pt")
    )
    assert reference["resume_error"] == "KeyError: 'betas'"
    path, report = converted(tmp_path, "0.3.0_coefficients_after_training")
    assert any("Adam's defaults" in line for line in report.changed)
    model, optimizer, _ = TinyPlain.resume_training(path)
    lrs = {g["layers"]: g["lr"] for g in optimizer.param_groups if g["params"]}
    assert lrs == {("body",): 0.005, ("head",): 0.01}  # as torch_mentor set them
    before = model.state_dict()["body.weight"].clone()
    model.fit(loader(), loader(), epochs=1, progress=False)
    assert not torch.equal(model.state_dict()["body.weight"], before)
    assert set(model.history[-1]["val"]) == {"acc"}  # accuracy-only validation


def test_what_cannot_be_carried_is_listed(tmp_path):
    _, report = converted(tmp_path, "0.3.0_own_steps")
    not_carried = "\n".join(report.not_carried)
    for expected in (
        "default_loss_fn (a torch.nn.modules.loss.CrossEntropyLoss)",
        "inference_state ['class_names']",
        "epoch 0",
        "software_history and argv_history",
        "total_train_iterations (4 batches)",
        "memfails",
        "random number generator states",
    ):
        assert expected in not_carried, expected
    assert "the optimizer state" in " ".join(report.carried)
    text = str(report)
    assert text.splitlines()[0].startswith("converted torch_mentor 0.3.0 checkpoint")


def test_files_that_need_full_unpickling_need_trust(tmp_path):
    source = fixture("0.3.0_needs_trust")
    with pytest.raises(CheckpointError, match=r"full unpickling, which runs code.*trust=True"):
        converted(tmp_path, "0.3.0_needs_trust")
    assert not (tmp_path / "0.3.0_needs_trust.ckpt").exists()
    path, report = converted(tmp_path, "0.3.0_needs_trust", trust=True)
    assert report.fully_unpickled and "by full unpickling, trusted" in str(report)
    assert any("inference_state ['counts']" in line for line in report.not_carried)
    assert TinyNet.resume(path).epoch == 0
    with pytest.raises(TypeError, match="trust must be a bool"):
        mf.convert_torch_mentor_checkpoint(source, tmp_path / "x.ckpt", trust="yes")


def _untouched(path: Path):
    return path.read_bytes(), os.stat(path).st_mtime_ns


def test_damaged_unknown_and_foreign_files_are_refused_and_never_touched(tmp_path):
    good = fixture("0.3.0_trained")
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    saved = torch.load(good, weights_only=False)
    unknown = tmp_path / "unknown.pt"  # a later release's layout: a key no release writes
    torch.save({**saved, "new_field": 1}, unknown)
    older = tmp_path / "older.pt"  # and one without a key every release writes
    torch.save({k: v for k, v in saved.items() if k != "layer_names"}, older)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    mentor_fn_file = tmp_path / "mine.ckpt"
    TinyNet().save(mentor_fn_file)
    cases = {
        damaged: "truncated, corrupt",
        unknown: r"torch_mentor release this mentor_fn does not know.*\['new_field'\]",
        older: r"does not know.*keys missing: \['layer_names'\]",
        foreign: "not a torch_mentor checkpoint",
        mentor_fn_file: "already a mentor_fn checkpoint",
        tmp_path / "missing.pt": "not found",
    }
    for source, message in cases.items():
        before = _untouched(source) if source.exists() else None
        destination = tmp_path / "out.ckpt"
        with pytest.raises(CheckpointError, match=message):
            mf.convert_torch_mentor_checkpoint(source, destination)
        assert not destination.exists()
        if before is not None:
            assert _untouched(source) == before
    # The source itself, on success too, is only read.
    before = _untouched(good)
    mf.convert_torch_mentor_checkpoint(good, tmp_path / "fine.ckpt")
    assert _untouched(good) == before


def test_the_destination_is_never_the_source(tmp_path):
    source = tmp_path / "run.pt"
    shutil.copy(fixture("0.3.0_trained"), source)
    before = _untouched(source)
    with pytest.raises(ValueError, match="is the source"):
        mf.convert_torch_mentor_checkpoint(source, tmp_path / "." / "run.pt")
    assert _untouched(source) == before
    with pytest.raises(TypeError, match="source must be a path"):
        mf.convert_torch_mentor_checkpoint(io.BytesIO(), tmp_path / "x.ckpt")


def test_the_model_settles_what_the_file_cannot_say(tmp_path):
    path, _ = converted(tmp_path, "0.2.3_trained", model=TinyNet())
    model, _, _ = TinyNet.resume_training(path)
    assert model.curriculum_state.norm_layers == {"body.1"}  # known from the model's types
    with pytest.raises(CheckpointError, match="does not fit the model given"):
        converted(tmp_path, "0.2.3_trained", model=TinyNet(hidden=7))
    with pytest.raises(TypeError, match=r"model must be an nn\.Module"):
        converted(tmp_path, "0.2.3_trained", model="TinyNet")


def test_the_command_line_converts_and_inspect_reads_the_result(tmp_path, capsys):
    destination = tmp_path / "converted.ckpt"
    assert main(["convert", str(fixture("0.2.2_trained")), str(destination)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("converted torch_mentor 0.2.2 checkpoint")
    assert "not carried: random number generator states" in out
    assert main(["inspect", str(destination)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"Mentee checkpoint (converted from torch_mentor) {destination}"
    assert "body.1  yes" in out
    with pytest.raises(SystemExit) as raised:
        main(["convert", str(fixture("0.3.0_needs_trust")), str(tmp_path / "x.ckpt")])
    assert raised.value.code == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "--trust" in error
    with pytest.raises(SystemExit) as raised:
        main(["inspect", str(fixture("0.3.0_trained"))])
    assert raised.value.code == 2
    assert "convert it first" in capsys.readouterr().err


def test_a_converted_history_plots_what_it_does_not_record_as_not_recorded(tmp_path):
    """torch_mentor's history records no frozen layers: the timeline shows a layer as
    trainable only where the record gives it an lr, and as not recorded elsewhere,
    never as trainable by default; the epochs trained after the conversion say."""
    pytest.importorskip("matplotlib")
    from mentor_fn._app.plot import lane_states, plot_checkpoint

    path, _ = converted(tmp_path, "0.2.3_frozen_after_build")
    model, _, _ = TinyNet.resume_training(path)
    converted_records = len(model.history)
    model.fit(loader(), loader(), epochs=1, progress=False)
    layers = model.curriculum_state.layers
    lanes = lane_states(model.history, layers)
    frozen_now = [layer for layer in layers if model.curriculum_state.is_frozen(layer)]
    assert frozen_now, "the fixture froze a layer"
    for layer in frozen_now:
        assert None in lanes[layer][:converted_records]  # not recorded, not trainable
        assert lanes[layer][converted_records:] == [True]
    model.save(tmp_path / "continued.ckpt")
    assert plot_checkpoint(tmp_path / "continued.ckpt", tmp_path / "timeline.png").stat().st_size
