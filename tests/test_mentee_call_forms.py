"""torch_mentor's remaining call forms on a Mentee, each as torch_mentor code writes it.

``resume_training(path, ..., lr=...)``, resuming and loading from a binary
file object (an ``io.BytesIO``, an open file), ``current_epoch``, and a
``validation_step`` that reports accuracy only (no loss).
"""

from __future__ import annotations

import io
import os

import pytest
import torch
from torch import nn
from torch.nn import functional

import mentor_fn as mf
from mentor_fn import Classifier, Mentee

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Net(Mentee):
    def __init__(self, hidden: int = 5) -> None:
        super().__init__()
        self.body = nn.Linear(3, hidden)
        self.head = nn.Linear(hidden, 2)
        self.trainer = Classifier()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).relu())


class AccuracyOnly(Mentee):
    """torch_mentor style: its own steps; validation reports accuracy only."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def training_step(self, batch):
        inputs, targets = batch
        logits = self(inputs)
        loss = functional.cross_entropy(logits, targets)
        return loss, {"acc": (logits.argmax(1) == targets).float().mean().item()}

    def validation_step(self, batch):
        inputs, targets = batch
        return {"acc": (self(inputs).argmax(1) == targets).float().mean().item()}


def data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, generator=generator), torch.tensor([0, 1, 0, 1])) for _ in range(2)]


def trained(tmp_path, *, lr: float = 0.01) -> Net:
    model = Net()
    model.create_train_objects(lr=lr, step_size=1, gamma=0.5)
    return model.fit(data(), data(), epochs=2, progress=False)


def test_resume_training_takes_lr_repeating_the_global_lr(tmp_path):
    path = tmp_path / "run.ckpt"
    trained(tmp_path).save(path)
    model, optimizer, scheduler = Net.resume_training(path, lr=0.01)
    _, reference_optimizer, _ = Net.resume_training(path)
    assert optimizer is model.optimizer and scheduler is model.lr_scheduler
    # The run goes on as saved: the scheduler's decay is kept (0.01 * 0.5**2).
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.0025] * 3)
    assert (
        optimizer.state_dict()["param_groups"] == reference_optimizer.state_dict()["param_groups"]
    )
    for mine, theirs in zip(optimizer.state.values(), reference_optimizer.state.values()):
        assert torch.equal(mine["exp_avg"], theirs["exp_avg"])


def test_resume_training_refuses_another_lr_for_a_saved_optimizer_before_building(tmp_path):
    path = tmp_path / "run.ckpt"
    trained(tmp_path).save(path)
    with pytest.raises(ValueError, match=r"lr=0\.5.*global lr 0\.01.*create_train_objects"):
        Net.resume_training(path, lr=0.5)
    with pytest.raises(ValueError, match="lr must be finite"):
        Net.resume_training(path, lr=float("nan"))


def test_resume_training_with_lr_creates_the_missing_training_objects(tmp_path):
    path = tmp_path / "untrained.ckpt"
    Net().freeze("body").save(path)
    model, optimizer, scheduler = Net.resume_training(path, lr=0.02)
    assert model.optimizer is optimizer
    assert isinstance(optimizer, torch.optim.Adam)
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR)
    assert [g["layers"] for g in optimizer.param_groups if g["params"]] == [("head",)]
    assert optimizer.param_groups[0]["lr"] == 0.02
    # Without lr, a file saved before create_train_objects resumes without them.
    assert Net.resume_training(path)[1:] == (None, None)


def test_resume_and_resume_training_read_a_binary_file_object(tmp_path):
    model = trained(tmp_path)
    buffer = io.BytesIO()
    model.save(buffer)
    buffer.seek(0)
    resumed = Net.resume(buffer)
    assert resumed.current_epoch == 2 and resumed.optimizer is None
    buffer.seek(0)
    again, optimizer, _ = Mentee.resume_training(buffer, model_class=Net)
    assert again.history == model.history
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor)
    assert optimizer.state_dict()["param_groups"] == model.optimizer.state_dict()["param_groups"]

    path = tmp_path / "run.ckpt"
    model.save(path)
    with open(path, "rb") as handle:
        assert Net.resume(handle).epoch == 2
    with open(path, "rb") as handle:
        assert mf.load_checkpoint(handle)["epoch"] == 2


def test_a_damaged_file_object_names_itself(tmp_path):
    path = tmp_path / "run.ckpt"
    trained(tmp_path).save(path)
    with open(path, "rb") as handle:
        broken = io.BytesIO(handle.read()[: os.path.getsize(path) // 2])
    with pytest.raises(mf.CheckpointError, match=r"'<BytesIO>' is truncated, corrupt"):
        Net.resume(broken)
    with open(path, "rb") as handle, pytest.raises(mf.CheckpointError, match=str(path)):
        handle.seek(3)  # not at the start: not a checkpoint from here
        Net.resume(handle)
    with pytest.raises(TypeError, match=r"binary file object.*got 3"):
        Net.resume(3)
    with open(path, encoding="latin-1") as text, pytest.raises(TypeError, match="binary file"):
        Net.resume(text)


def test_current_epoch_counts_the_epochs_trained(tmp_path):
    model = Net()
    assert model.current_epoch == 0
    model.fit(data(), epochs=3, progress=False)
    assert model.current_epoch == model.epoch == 3 == len(model.history)


def test_a_validation_step_reporting_accuracy_only_is_accepted():
    model = AccuracyOnly()
    model.create_train_objects(lr=0.05, scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau)
    model.fit(data(), data(), epochs=2, progress=True)
    record = model.history[-1]
    assert set(record["val"]) == {"acc"}  # no validation loss: none is made up
    assert set(record["train"]) == {"loss", "acc"}
    # With no validation loss, the best epoch goes by the training loss, and
    # ReduceLROnPlateau steps on it too.
    losses = [r["train"]["loss"] for r in model.history]
    assert model.best["metric"] == "loss"
    assert model.best["value"] == min(losses)
    assert model.lr_scheduler.best == min(losses)
    buffer = io.BytesIO()  # such a history round-trips through a checkpoint
    model.save(buffer)
    buffer.seek(0)
    assert Mentee.resume(buffer, model_class=AccuracyOnly).history == model.history
