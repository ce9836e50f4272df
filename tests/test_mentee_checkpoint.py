"""The Mentee checkpoint layout: validated as a whole, in one place.

Every damaged file below is a real torch file written by ``torch.save`` from a
good checkpoint's contents with one field broken. Each must be one
CheckpointError naming the file and the field from ``resume`` and
``resume_training``, and one line on stderr with exit status 2 from
``inspect`` and ``plot``: never a KeyError, AttributeError or RuntimeError from
deep inside, and never a traceback.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import mentor_fn as mf
from mentor_fn import CheckpointError, Classifier, Mentee
from mentor_fn._app.cli import main
from mentor_fn._files.mentee_file import (
    DistributedPlainPart,
    contents_of,
    read_distributed_plain_part,
    read_mentee_checkpoint,
    write_distributed_plain_part,
)


class Net(Mentee):
    def __init__(self, hidden: int = 5) -> None:
        super().__init__()
        self.body = nn.Linear(3, hidden)
        self.head = nn.Linear(hidden, 2)
        self.trainer = Classifier()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).relu())


def data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, generator=generator), torch.tensor([0, 1, 0, 1]))]


@pytest.fixture(scope="module")
def good_contents(tmp_path_factory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("good") / "good.ckpt"
    model = Net()
    model.create_train_objects(lr=0.01)
    model.fit(data(), data(), epochs=2, progress=False).save(path)
    return torch.load(path, weights_only=True)


def setting(*keys: Any, value: Any) -> Callable[[dict[str, Any]], None]:
    def damage(contents: dict[str, Any]) -> None:
        inner = contents
        for key in keys[:-1]:
            inner = inner[key]
        inner[keys[-1]] = value

    return damage


def removing(*keys: Any) -> Callable[[dict[str, Any]], None]:
    def damage(contents: dict[str, Any]) -> None:
        inner = contents
        for key in keys[:-1]:
            inner = inner[key]
        del inner[keys[-1]]

    return damage


# name: (damage, what the message names)
DAMAGED = {
    "best without metric": (setting("best", value={"epoch": 1}), "best['metric'] is missing"),
    "best mode": (setting("best", "mode", value="up"), "best['mode']"),
    "param_groups a str": (
        setting("curriculum", "optimizer", "param_groups", value="x"),
        "curriculum['optimizer']['param_groups'] must be a list",
    ),
    "recipe lr a str": (
        setting("curriculum", "recipe", "lr", value="0.01"),
        "curriculum['recipe']['lr'] must be a number",
    ),
    "recipe lr negative": (
        setting("curriculum", "recipe", "lr", value=-1.0),
        "curriculum['recipe']['lr'] must be finite and >= 0",
    ),
    "integer weights": (
        setting("model", "body.weight", value=3),
        "model['body.weight'] must be a tensor, got int 3",
    ),
    "weights a list": (setting("model", value=[1, 2]), "model must be a dict"),
    "no curriculum": (removing("curriculum"), "curriculum is missing"),
    "curriculum state": (
        setting("curriculum", "state", value={"layers": 1}),
        "curriculum['state'] is not a curriculum state",
    ),
    "optimizer state of an unknown parameter": (
        setting("curriculum", "optimizer", "state", "ghost.weight", value={}),
        "names 'ghost.weight'",
    ),
    "group of an unknown parameter": (
        setting("curriculum", "optimizer", "param_groups", 0, "params", value=["ghost"]),
        "['params'] names 'ghost'",
    ),
    "history a str": (setting("history", value="x"), "history must be a list"),
    "record without epoch": (removing("history", 0, "epoch"), "history[0]['epoch'] is missing"),
    "record lr a str": (
        setting("history", 1, "lr", "body", value="fast"),
        "history[1]['lr']['body'] must be a number",
    ),
    "epoch a str": (setting("epoch", value="2"), "epoch must be an int"),
    "epoch negative": (setting("epoch", value=-1), "epoch must be >= 0"),
    "model_class an int": (setting("model_class", value=5), "model_class must be a str"),
    "constructor args": (
        setting("constructor", value={"args": 3, "kwargs": {}}),
        "constructor['args'] must be a list",
    ),
    "scheduler recipe": (
        setting("scheduler_recipe", "name", value=5),
        "scheduler_recipe['name'] must be a str",
    ),
    "best weights reshaped": (
        setting("best_weights", "head.bias", value=torch.zeros(7)),
        "best_weights['head.bias'] has shape [7]",
    ),
    "best weights incomplete": (
        removing("best_weights", "head.bias"),
        "best_weights['head.bias'] is missing",
    ),
    "rng state": (
        setting("rng_state", value=torch.zeros(3)),
        "rng_state must be a 1-d uint8 tensor",
    ),
    "python rng state": (setting("python_rng_state", value=(1, 2)), "python_rng_state"),
    "numpy rng state": (
        setting("numpy_rng_state", value={"algorithm": "MT19937"}),
        "numpy_rng_state['position'] is missing",
    ),
}


@pytest.mark.parametrize("name", list(DAMAGED))
def test_damaged_file_is_one_checkpoint_error_and_one_cli_line(
    name, good_contents, tmp_path, capsys
):
    check_damage(good_contents, *DAMAGED[name], tmp_path, capsys)


def check_damage(
    good: dict[str, Any],
    damage: Callable[[dict[str, Any]], None],
    expected: str,
    tmp_path: Any,
    capsys: Any,
) -> None:
    contents = copy.deepcopy(good)
    damage(contents)
    path = tmp_path / "damaged.ckpt"
    torch.save(contents, path)

    for resume in (Mentee.resume, Net.resume, Mentee.resume_training, Net.resume_training):
        with pytest.raises(CheckpointError) as caught:
            resume(path)
        assert str(path) in str(caught.value) and expected in str(caught.value)

    capsys.readouterr()
    for argv in (["inspect", str(path)], ["plot", str(path), "-o", str(tmp_path / "t.png")]):
        with pytest.raises(SystemExit) as raised:
            main(argv)
        assert raised.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], lines
    assert not (tmp_path / "t.png").exists()


SCHEDULE = mf.Schedule(
    [
        mf.Phase("probe", mf.freeze("body"), until=mf.after_epochs(1)),
        mf.Phase(
            "all",
            mf.unfreeze("body"),
            until=mf.any_of(mf.plateau("val_loss"), mf.after_epochs(3)),
            warmup_steps=2,
        ),
    ]
)


@pytest.fixture(scope="module")
def scheduled_contents(tmp_path_factory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("scheduled") / "scheduled.ckpt"
    Net().fit(data(), data(), 2, path, schedule=SCHEDULE, lr=0.01, progress=False)
    return torch.load(path, weights_only=True)


def _cursor_in_the_first_phase(contents: dict[str, Any]) -> None:
    cursor = contents["schedule"]["cursor"]
    cursor.update(phase=0, epochs=0, steps=1, progress=None)


SCHEDULE_DAMAGED = {
    "section a number": (setting("schedule", value=3), "schedule must be a dict"),
    "section of another format": (
        setting("schedule", "format", value="x"),
        "schedule is not readable: not a mentor_fn ScheduleRunner state dict",
    ),
    "cursor steps negative": (
        setting("schedule", "cursor", "steps", value=-1),
        "schedule['cursor'] is not readable: ScheduleCursor.steps must be an int >= 0",
    ),
    "cursor phase out of range": (
        setting("schedule", "cursor", "phase", value=7),
        "schedule['cursor'] is not readable: does not fit the saved schedule: cursor phase 7",
    ),
    "cursor in another phase than the state": (
        _cursor_in_the_first_phase,
        "schedule['cursor'] does not fit the saved curriculum",
    ),
    "fingerprint altered": (
        setting("schedule", "fingerprint", value="0" * 64),
        "schedule['fingerprint'] is not readable: '000",
    ),
    "phases a str": (
        setting("schedule", "schedule", "phases", value="x"),
        "schedule['schedule'] is not readable: malformed Schedule dict: 'phases' must be a list",
    ),
    "unknown transition": (
        setting("schedule", "schedule", "phases", 0, "transition", "kind", value="melt"),
        "schedule['schedule'] is not readable: malformed Schedule dict: phases[0]",
    ),
    "initial state": (
        setting("schedule", "initial_state", value={"layers": 1}),
        "schedule['initial_state'] is not readable",
    ),
    "record phase an int": (
        setting("history", 0, "phase", value=1),
        "history[0]['phase'] must be a str",
    ),
}


@pytest.mark.parametrize("name", list(SCHEDULE_DAMAGED))
def test_a_damaged_schedule_section_is_one_checkpoint_error_naming_the_field(
    name, scheduled_contents, tmp_path, capsys
):
    check_damage(scheduled_contents, *SCHEDULE_DAMAGED[name], tmp_path, capsys)


def test_the_scheduled_file_reads_back_and_resumes(scheduled_contents, tmp_path):
    path = tmp_path / "scheduled.ckpt"
    torch.save(scheduled_contents, path)
    saved = read_mentee_checkpoint(path).schedule
    assert saved is not None and saved.schedule == SCHEDULE and saved.phase.name == "all"
    assert saved.cursor.epochs == 1 and saved.fingerprint == SCHEDULE.fingerprint()
    model, _, _ = Net.resume_training(path)
    assert model.schedule_runner.cursor == saved.cursor
    assert [record["phase"] for record in model.history] == ["probe", "all"]


def test_the_good_file_reads_back_as_saved(good_contents, tmp_path):
    path = tmp_path / "good.ckpt"
    torch.save(good_contents, path)
    checkpoint = read_mentee_checkpoint(path)
    assert checkpoint.path == str(path) and checkpoint.model_class.endswith(".Net")
    assert checkpoint.constructor.kwargs == {"hidden": 5} and checkpoint.epoch == 2
    assert checkpoint.state.layers == ("body", "head")
    assert checkpoint.optimizer_name == "torch.optim.adam.Adam" and checkpoint.global_lr == 0.01
    groups = checkpoint.saved_groups
    assert [group.layers for group in groups] == [("body",), ("head",), ()]
    assert [group.is_reference for group in groups] == [False, False, True]
    assert groups[0].parameters == ("body.weight", "body.bias")
    assert contents_of(checkpoint).keys() <= good_contents.keys()


def test_older_files_without_the_optional_sections_still_resume(good_contents, tmp_path):
    contents = copy.deepcopy(good_contents)
    for key in ("cuda_rng_states", "python_rng_state", "numpy_rng_state", "schedule"):
        contents.pop(key, None)
    path = tmp_path / "older.ckpt"
    torch.save(contents, path)
    model, optimizer, _ = Net.resume_training(path)
    assert model.epoch == 2 and optimizer is not None


def test_a_save_that_would_not_resume_writes_nothing(tmp_path):
    model = Net()
    path = tmp_path / "m.ckpt"
    model.save(path)
    before = path.read_bytes()
    model.history.append({"train": {"loss": 1.0}})  # a record without its epoch
    with pytest.raises(ValueError, match=r"history\[0\]\['epoch'\] is missing"):
        model.save(path)
    buffer = io.BytesIO()
    with pytest.raises(ValueError, match="would not resume"):
        model.save(buffer)
    assert path.read_bytes() == before and buffer.getvalue() == b""


def test_distributed_plain_part_round_trip_and_damage(tmp_path):
    model = Net()
    model.create_train_objects(lr=0.1)
    curriculum = model.curriculum.state_dict()
    path = tmp_path / "curriculum.pt"
    keys = {"body.weight": ["exp_avg"]}
    write_distributed_plain_part(path, DistributedPlainPart(curriculum, keys, {"step": 3}))
    part = read_distributed_plain_part(path)
    assert part.optimizer_state_keys == keys and part.extra == {"step": 3}
    assert "optimizer_state_keys" not in part.curriculum

    contents = torch.load(path, weights_only=True)
    contents["curriculum"]["recipe"]["coalesce"] = "no"
    torch.save(contents, path)
    with pytest.raises(CheckpointError, match=r"\['recipe'\]\['coalesce'\] must be a bool"):
        read_distributed_plain_part(path)
