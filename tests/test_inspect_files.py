"""``inspect`` reads every file mentor_fn writes, and says first what kind it is.

Each file is written by mentor_fn's own writers (``save_checkpoint``,
``torch.save`` of the state dicts, the distributed checkpoint's plain part);
a damaged one is one line naming the file and the first bad field, exit 2.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mentor_fn as mf
from mentor_fn._app.cli import main
from mentor_fn._files.mentee_file import DistributedPlainPart, write_distributed_plain_part

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    curriculum = mf.Curriculum(
        model, 0.01, scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 1, 0.5)
    )
    schedule = mf.Schedule(
        [
            mf.Phase("head", mf.freeze("0|1"), until=mf.after_epochs(1)),
            mf.Phase("all", mf.unfreeze("0|1")),
        ]
    )
    runner = mf.ScheduleRunner(curriculum, schedule)
    runner.start()
    curriculum.build()
    model(torch.randn(5, 3)).sum().backward()
    curriculum.optimizer.step()
    runner.step()
    curriculum.scheduler.step()
    return model, curriculum, runner


def inspected(path, capsys) -> str:
    assert main(["inspect", str(path)]) == 0
    return capsys.readouterr().out


def test_a_save_checkpoint_file_of_a_curriculum(tmp_path, capsys):
    model, curriculum, runner = run(tmp_path)
    path = tmp_path / "own_sc.ckpt"
    contents = {
        "model": model.state_dict(),
        "curriculum": curriculum.state_dict(),
        "runner": runner.state_dict(),
        "epoch": 1,
    }
    mf.save_checkpoint(path, contents)
    out = inspected(path, capsys)
    lines = out.splitlines()
    assert lines[0] == (
        "save_checkpoint file holding Curriculum.state_dict() and "
        f"ScheduleRunner.state_dict(): {path}"
    )
    assert "Curriculum state dict (['curriculum']): Adam at global lr 0.01" in out
    assert "optimizer: 1 group(s), 2 parameter(s) with optimizer state" in out
    assert "scheduler: StepLR, 1 step(s) taken" in out
    assert "ScheduleRunner state dict (['runner']):" in out and "now: phase 'head'" in out
    assert "\n2      no" in out and "\n0      yes" in out  # the state table
    assert "total  2 of 3" in out and "parameters" in out


def test_state_dicts_saved_with_torch_save(tmp_path, capsys):
    _, curriculum, runner = run(tmp_path)
    alone = tmp_path / "curriculum.pt"
    torch.save(curriculum.state_dict(), alone)
    out = inspected(alone, capsys)
    assert out.splitlines()[0] == f"Curriculum.state_dict() saved with torch.save: {alone}"
    assert "(parameters: '?', the file holds no weights" in out
    both = tmp_path / "both.pt"
    torch.save({"curriculum": curriculum.state_dict(), "runner": runner.state_dict()}, both)
    out = inspected(both, capsys)
    assert out.splitlines()[0].startswith("torch.save file holding Curriculum.state_dict() and")
    assert "planned end" not in out  # no epoch in the file to count from
    state = tmp_path / "state.pt"
    torch.save(curriculum.state.set_norm_policy("eval").to_dict(), state)
    out = inspected(state, capsys)
    assert out.splitlines()[0] == f"CurriculumState.to_dict() saved with torch.save: {state}"
    assert "norm policy 'eval'" in out


def test_a_distributed_checkpoints_plain_part(tmp_path, capsys):
    _, curriculum, _ = run(tmp_path)
    section = dict(curriculum.state_dict())
    saved = dict(section["optimizer"])
    keys = {name: sorted(values) for name, values in saved.pop("state").items()}
    section["optimizer"] = {**saved, "state": {}}
    folder = tmp_path / "dcp"
    folder.mkdir()
    write_distributed_plain_part(folder / "curriculum.pt", DistributedPlainPart(section, keys, {}))
    for path in (folder, folder / "curriculum.pt"):
        out = inspected(path, capsys)
        assert out.startswith("distributed checkpoint (its plain part")
        assert "2 parameter(s) with optimizer state" in out


def test_a_damaged_section_is_one_line_naming_the_file_and_the_field(tmp_path, capsys):
    _, curriculum, runner = run(tmp_path)
    broken = curriculum.state_dict()
    broken["recipe"] = {**broken["recipe"], "lr": "fast"}
    path = tmp_path / "broken.ckpt"
    mf.save_checkpoint(path, {"curriculum": broken})
    with pytest.raises(SystemExit) as raised:
        main(["inspect", str(path)])
    assert raised.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert str(path) in error and "['curriculum']['recipe']['lr'] must be a number" in error
    schedule = runner.state_dict()
    schedule["fingerprint"] = "0" * 16
    torch.save({"runner": schedule}, path)
    with pytest.raises(SystemExit):
        main(["inspect", str(path)])
    assert "['runner']['fingerprint']" in capsys.readouterr().err
