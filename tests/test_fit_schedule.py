"""Mentee.fit(schedule=...): phases advanced by fit's own metrics and steps, saved in the
checkpoint and resumed bit-for-bit; another schedule refused unless allowed."""

from __future__ import annotations

import io
import itertools
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import TensorDataset

import mentor_fn as mf
from mentor_fn._mentee.fit_loop import epoch_metrics
from mentor_fn.testing import schedules

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Net(mf.Mentee):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.head = nn.Linear(hidden, 3)
        self.trainer = mf.Classifier()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).relu())


def data(seed: int = 0, samples: int = 8) -> TensorDataset:
    """A shuffled Dataset (batch size 4: two optimizer steps per epoch)."""
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.randn(samples, 4, generator=generator),
        torch.randint(0, 3, (samples,), generator=generator),
    )


TRAIN, VAL = data(0), data(1, samples=4)
FIT = {"batch_size": 4, "progress": False}

SCHEDULE = mf.Schedule(
    [
        mf.Phase("head", mf.freeze("body"), until=mf.after_epochs(2), lr=0.02),
        mf.Phase(
            "top",
            mf.unfreeze(r"body\.2"),
            until=mf.any_of(mf.plateau("val_loss", patience=2), mf.after_epochs(4)),
            warmup_steps=3,
        ),
        mf.Phase(
            "all", mf.unfreeze("body"), optimizer="fresh", lr_scale=0.5, until=mf.after_epochs(2)
        ),
    ]
)


def fitted(epochs: int | None, schedule: mf.Schedule = SCHEDULE, **options: Any) -> Net:
    torch.manual_seed(0)
    return Net().fit(TRAIN, VAL, epochs, schedule=schedule, lr=0.01, **FIT, **options)


def replayed_phases(schedule: mf.Schedule, history: list[dict[str, Any]]) -> list[str]:
    """The phase of each epoch by the pure schedule, fed fit's metrics (two steps an epoch)."""
    cursor, names = schedule.start(), []
    for record in history:
        for _ in range(2):
            cursor = schedule.advance(cursor, steps=1)
        names.append(schedule.phase_at(cursor).name)
        cursor = schedule.advance(cursor, epoch_end=True, metrics=epoch_metrics(record))
    return names


# Following a schedule ------------------------------------------------------------------


def test_fit_follows_the_schedule_until_it_finishes():
    model = fitted(None)  # no epochs: until the last phase's until holds
    runner = model.schedule_runner
    assert runner is not None and runner.finished and runner.phase.name == "all"
    phases = [record["phase"] for record in model.history]
    assert phases == replayed_phases(SCHEDULE, model.history)
    assert phases[:2] == ["head", "head"] and phases[-2:] == ["all", "all"]
    assert "top" in phases and len(phases) == model.epoch
    assert model.history[0]["frozen"] == ["body.0", "body.2"]
    assert model.history[-1]["frozen"] == []
    # Finished: fit without epochs has nothing left to do; with epochs, the last phase goes on.
    assert model.fit(TRAIN, VAL, **FIT).epoch == len(phases)
    model.fit(TRAIN, VAL, 1, **FIT)
    assert model.epoch == len(phases) + 1 and model.history[-1]["phase"] == "all"


def test_the_metrics_are_named_by_split():
    record = {"train": {"loss": 0.5, "accuracy": 0.25}, "val": {"loss": 0.75}}
    assert epoch_metrics(record) == {"train_loss": 0.5, "train_accuracy": 0.25, "val_loss": 0.75}
    assert epoch_metrics({"train": {"loss": 1.0}, "val": {}}) == {"train_loss": 1.0}


def test_a_plateau_on_the_validation_loss_ends_its_phase():
    schedule = mf.Schedule(
        [
            mf.Phase("probe", mf.freeze("body"), until=mf.plateau("val_loss", patience=1)),
            mf.Phase("all", mf.unfreeze("body"), until=mf.after_epochs(1)),
        ]
    )
    model = fitted(None, schedule)
    phases = [record["phase"] for record in model.history]
    assert phases == replayed_phases(schedule, model.history) and phases[-1] == "all"
    losses = [record["val"]["loss"] for record in model.history if record["phase"] == "probe"]
    # The probe phase ended at the first epoch whose validation loss did not improve.
    improving = losses[:-1]
    assert all(b < a for a, b in itertools.pairwise(improving)) and losses[-1] >= min(improving)


def test_warmup_ramps_after_each_optimizer_step():
    model = fitted(4)
    top = [record for record in model.history if record["phase"] == "top"]
    head_lr = [record["lr"]["head"] for record in top]
    ramp = [record["lr"]["body.2"] / lr for record, lr in zip(top, head_lr)]
    # The lr each epoch started with: entered at 1/3, two steps later at 3/3.
    assert ramp[:2] == pytest.approx([1 / 3, 1.0], rel=1e-12)


def test_the_first_phase_is_entered_before_the_training_objects_are_built():
    model = fitted(1)
    # Built once, in phase 0's layout (no group for the frozen body) at the phase's lr.
    groups = model.optimizer.param_groups
    assert [group["layers"] for group in groups] == [("head",), ()]
    assert groups[-1]["lr"] == 0.02 and model.curriculum.lr == 0.02


def test_a_fresh_first_phase_from_no_training_objects():
    fresh = mf.Schedule(
        [
            mf.Phase(
                "probe",
                mf.freeze("body"),
                optimizer="fresh",
                lr_scale=0.5,
                until=mf.after_epochs(2),
            ),
            mf.Phase("all", mf.unfreeze("body"), optimizer="fresh"),
        ]
    )
    torch.manual_seed(0)
    model = Net().fit(TRAIN, VAL, 1, schedule=fresh, lr=0.02, **FIT)
    assert model.curriculum.lr == 0.01 and model.history[0]["lr"] == {"head": 0.01}
    first = model.optimizer
    assert [group["layers"] for group in first.param_groups] == [("head",), ()]
    assert int(first.state[model.head.weight]["step"]) == 2  # built once, before the first step
    model.fit(TRAIN, VAL, 2, **FIT)
    assert model.optimizer is not first and model.history[-1]["frozen"] == []


def test_a_schedule_starts_on_live_training_objects_too():
    torch.manual_seed(0)
    model = Net()
    model.create_train_objects(lr=0.01)
    optimizer = model.optimizer
    model.fit(TRAIN, VAL, 1, schedule=SCHEDULE, **FIT)
    assert model.optimizer is optimizer  # the head phase keeps it; only its lr changes
    assert model.history[0]["phase"] == "head" and model.curriculum.lr == 0.02


def test_create_train_objects_between_fits_keeps_the_run():
    model = fitted(1)
    cursor = model.schedule_runner.cursor
    model.create_train_objects(lr=0.01)
    model.fit(TRAIN, VAL, 2, **FIT)
    assert model.schedule_runner.curriculum is model.curriculum
    assert [record["phase"] for record in model.history] == ["head", "head", "top"]
    assert cursor.epochs == 1 and model.schedule_runner.cursor.phase == 1


# Refusals, each before anything changes -------------------------------------------------


def untouched(model: Net) -> None:
    assert model.epoch == 0 and model.optimizer is None and model.schedule_runner is None


@pytest.mark.parametrize(
    ("until", "val", "message"),
    [
        (mf.plateau("loss"), VAL, "fit reports its metrics as train_<name> and val_<name>"),
        (mf.plateau("val_loss"), None, "fit has no val_data"),
    ],
)
def test_a_metric_fit_cannot_report_is_refused_at_once(until, val, message):
    schedule = mf.Schedule(
        [
            mf.Phase("a", mf.freeze("body"), until=mf.after_epochs(1)),
            mf.Phase("b", mf.unfreeze("body"), until=until),
        ]
    )
    model = Net()
    with pytest.raises(ValueError, match=re.escape(message)):
        model.fit(TRAIN, val, 3, schedule=schedule, **FIT)
    untouched(model)


def test_epochs_may_be_omitted_only_when_the_schedule_can_finish():
    open_ended = mf.Schedule([mf.Phase("all", mf.unfreeze("body"))])
    model = Net()
    with pytest.raises(ValueError, match="last phase 'all' has no until"):
        model.fit(TRAIN, VAL, schedule=open_ended, **FIT)
    untouched(model)
    model.fit(TRAIN, VAL, **FIT)  # no schedule: one epoch, as ever
    assert model.epoch == 1
    for bad, error in ((1.5, TypeError), (True, TypeError), (-1, ValueError)):
        with pytest.raises(error, match="epochs"):
            model.fit(TRAIN, VAL, bad, **FIT)


def test_an_unserializable_schedule_fails_before_training_when_checkpoints_are_asked(tmp_path):
    def custom(state: mf.CurriculumState) -> mf.CurriculumState:
        return state.freeze("body")

    schedule = mf.Schedule([mf.Phase("mine", custom, until=mf.after_epochs(1))])
    model = Net()
    path = tmp_path / "run.ckpt"
    with pytest.raises(TypeError, match="custom"):
        model.fit(TRAIN, VAL, 2, path, schedule=schedule, **FIT)
    untouched(model)
    assert not path.exists()
    model.fit(TRAIN, VAL, 1, schedule=schedule, **FIT)  # without checkpoints it trains
    assert model.history[0]["phase"] == "mine"
    with pytest.raises(TypeError, match="custom"):
        model.save(path)
    assert not path.exists()


def test_another_schedule_is_refused_unless_allowed():
    model = fitted(1)
    longer = mf.Schedule([*SCHEDULE.phases[:2], mf.Phase("all", mf.unfreeze("body"))])
    weights = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(ValueError, match="allow_schedule_change=True") as caught:
        model.fit(TRAIN, VAL, 1, schedule=longer, **FIT)
    assert not isinstance(caught.value, mf.CheckpointError)
    assert model.epoch == 1 and all(
        torch.equal(weights[k], v) for k, v in model.state_dict().items()
    )
    model.fit(TRAIN, VAL, 1, schedule=longer, allow_schedule_change=True, **FIT)
    assert model.schedule_runner.schedule is longer and model.history[-1]["phase"] == "head"
    with pytest.raises(ValueError, match="goes with the new schedule"):
        model.fit(TRAIN, VAL, 1, allow_schedule_change=True, **FIT)


def test_a_state_changed_by_hand_is_refused_until_the_schedule_is_detached():
    model = fitted(1)
    model.unfreeze("body", reset_optimizer_if_needed=True)
    with pytest.raises(ValueError, match=r"'body.0'.*changed by hand.*detach_schedule"):
        model.fit(TRAIN, VAL, 1, **FIT)
    assert model.epoch == 1
    model.detach_schedule().fit(TRAIN, VAL, 1, **FIT)
    assert model.schedule_runner is None and "phase" not in model.history[-1]
    model.fit(TRAIN, VAL, 1, schedule=SCHEDULE, **FIT)  # starts again from its first phase
    assert model.history[-1]["phase"] == "head" and model.history[-1]["frozen"] == [
        "body.0",
        "body.2",
    ]


# Checkpoints and resume --------------------------------------------------------------


def run_state(model: Net) -> dict[str, Any]:
    """Everything a continued run depends on, in comparable form."""
    saved = model.curriculum.state_dict()
    runner = model.schedule_runner
    return {
        "weights": model.state_dict(),
        "optimizer": saved["optimizer"],
        "scheduler": saved["scheduler"],
        "state": model.curriculum_state,
        "cursor": None if runner is None else runner.cursor,
        "history": [{k: v for k, v in record.items() if k != "time"} for record in model.history],
        "best": model.best,
    }


def assert_equal(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_equal(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            assert_equal(x, y, f"{where}[{index}]")
    else:
        assert a == b, where


def resumed_run(
    schedule: mf.Schedule, total: int, saved_at: int, folder: str, *, pass_schedule: bool
) -> Net:
    """Train ``saved_at`` epochs with checkpoints, resume from the file, train the rest."""
    path = os.path.join(folder, "run.ckpt")
    torch.manual_seed(0)
    Net().fit(TRAIN, VAL, saved_at, path, schedule=schedule, lr=0.01, **FIT)
    torch.manual_seed(123)  # the file's generators win
    model, _, _ = Net.resume_training(path)
    model.fit(TRAIN, VAL, total - saved_at, schedule=schedule if pass_schedule else None, **FIT)
    return model


@pytest.mark.parametrize(
    ("saved_at", "where"), [(1, "mid-phase"), (3, "mid-warmup"), (4, "mid-plateau")]
)
def test_resume_continues_bit_for_bit(saved_at, where, tmp_path):
    total = 8
    expected = run_state(fitted(total))
    path = tmp_path / "run.ckpt"
    torch.manual_seed(0)
    Net().fit(TRAIN, VAL, saved_at, path, schedule=SCHEDULE, lr=0.01, **FIT)
    saved = mf.load_checkpoint(path)["schedule"]
    cursor = mf.ScheduleCursor.from_dict(saved["cursor"])
    if where == "mid-warmup":
        assert cursor.phase == 1 and 0 < cursor.steps < 3
    if where == "mid-plateau":
        plateau_progress = cursor.progress[0][0]
        assert cursor.phase == 1 and plateau_progress[0] is not None
    for pass_schedule in (False, True):
        continued = resumed_run(
            SCHEDULE, total, saved_at, str(tmp_path), pass_schedule=pass_schedule
        )
        assert_equal(run_state(continued), expected)


def test_resuming_with_another_schedule_is_a_checkpoint_error_unless_allowed(tmp_path):
    path = tmp_path / "run.ckpt"
    fitted(1, checkpoint_path=path)
    longer = mf.Schedule([*SCHEDULE.phases[:2], mf.Phase("all", mf.unfreeze("body"))])
    with pytest.raises(mf.CheckpointError, match="allow_schedule_change=True") as caught:
        Net.resume_training(path, schedule=longer)
    assert str(path) in str(caught.value)
    # Resumed without a schedule, then fit with another one: refused at fit, as a CheckpointError.
    model, _, _ = Net.resume_training(path)
    with pytest.raises(mf.CheckpointError, match="allow_schedule_change=True"):
        model.fit(TRAIN, VAL, 1, schedule=longer, **FIT)
    assert model.epoch == 1
    model, _, _ = Net.resume_training(path, schedule=longer, allow_schedule_change=True)
    assert model.schedule_runner.schedule is longer
    model.fit(TRAIN, VAL, 1, **FIT)
    assert model.history[-1]["phase"] == "head"
    # A new schedule whose phases do not fit the saved state is refused even when allowed.
    other = mf.Schedule([mf.Phase("head", mf.freeze("head"), until=mf.after_epochs(2))])
    with pytest.raises(mf.CheckpointError, match=r"cannot continue.*'body.0'"):
        Net.resume_training(path, schedule=other, allow_schedule_change=True)
    # A file without a schedule run: a schedule is started by fit, not by resume_training.
    plain = tmp_path / "plain.ckpt"
    Net().save(plain)
    with pytest.raises(mf.CheckpointError, match="holds no schedule run"):
        Net.resume_training(plain, schedule=SCHEDULE)
    with pytest.raises(TypeError, match=r"mentor_fn\.Schedule"):
        Net.resume_training(path, schedule="head")


def test_resume_alone_restores_no_schedule_run(tmp_path):
    path = tmp_path / "run.ckpt"
    fitted(1, checkpoint_path=path)
    model = Net.resume(path)
    assert model.schedule_runner is None and model.history[0]["phase"] == "head"


def test_the_schedule_section_holds_the_runners_state(tmp_path):
    model = fitted(3, checkpoint_path=tmp_path / "run.ckpt")
    buffer = io.BytesIO()
    model.save(buffer)
    buffer.seek(0)
    section = torch.load(buffer, weights_only=True)["schedule"]
    assert section == model.schedule_runner.state_dict()
    assert section["fingerprint"] == SCHEDULE.fingerprint()
    assert mf.Schedule.from_dict(section["schedule"]) == SCHEDULE


# Property: save at any epoch boundary, resume, continue bit-for-bit --------------------

MODEL = Net()


def trainable_in_every_phase(schedule: mf.Schedule) -> bool:
    """Every phase trains some parameter (a phase freezing everything has no loss to step)."""
    state = mf.CurriculumState.from_model(MODEL)
    for phase in schedule.phases:
        state = phase.transition(state)
        if not any(
            state.resolved_trainable()[state.layers.index(owner)]
            for owner in state.parameter_owners
        ):
            return False
    return True


@settings(max_examples=8, suppress_health_check=[HealthCheck.too_slow])
@given(
    schedule=schedules(MODEL, max_phases=3, metrics=("val_loss", "train_loss")),
    total=st.integers(2, 5),
    data=st.data(),
)
def test_resume_at_any_epoch_boundary_continues_bit_for_bit(schedule, total, data):
    assume(trainable_in_every_phase(schedule))
    saved_at = data.draw(st.integers(1, total - 1), label="saved_at")
    pass_schedule = data.draw(st.booleans(), label="pass_schedule")
    expected = run_state(fitted(total, schedule))
    with tempfile.TemporaryDirectory() as folder:
        continued = resumed_run(schedule, total, saved_at, folder, pass_schedule=pass_schedule)
        assert list(Path(folder).iterdir()) == [Path(folder) / "run.ckpt"]
    assert_equal(run_state(continued), expected)
