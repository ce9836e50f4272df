"""The demo runs end to end (reduced: few epochs), learns, and writes what it says."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mentor_fn as mf
from mentor_fn._demo import PHASES, TRANSFER_CLASSES, DigitsCNN, run_demo

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EPOCHS = 2


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    output = tmp_path_factory.mktemp("demo")
    stream = io.StringIO()
    result = run_demo(epochs=EPOCHS, output=output, seed=0, quiet=False, stream=stream)
    return result, stream.getvalue(), output


def test_curriculum_beats_chance_by_a_wide_margin(demo):
    result, _, _ = demo
    assert result.chance == pytest.approx(1 / len(TRANSFER_CLASSES))
    # Chance is 20%; two epochs per phase already reach well over 60%.
    assert result.curriculum_accuracy >= 2.5 * result.chance
    assert result.baseline_accuracy >= 2.5 * result.chance
    assert result.pretrain_accuracy >= 0.8


def test_writes_a_checkpoint_and_a_png(demo):
    result, _, output = demo
    assert result.checkpoint == output / "demo.ckpt"
    assert result.timeline == output / "timeline.png"
    assert result.timeline.read_bytes()[:8] == PNG_SIGNATURE
    contents = mf.load_checkpoint(result.checkpoint)
    assert contents["model_class"] == "mentor_fn._demo.DigitsCNN"
    assert contents["epoch"] == len(PHASES) * EPOCHS


def test_prints_the_phase_tables_and_epochs(demo):
    _, text, _ = demo
    for number, phase in enumerate(PHASES, 1):
        assert f"phase {number}/{len(PHASES)}: {phase.name}" in text
    assert text.count("effective lr") == len(PHASES)
    assert "trainable params" in text
    assert "baseline: the same" in text
    assert "with the curriculum" in text
    # one line per epoch: pretraining, the phases, the baseline
    assert text.count("epoch ") >= EPOCHS * (1 + 2 * len(PHASES))


def test_history_records_the_three_phases(demo):
    result, _, _ = demo
    history = result.history
    assert [record["phase"] for record in history] == [
        phase.name for phase in PHASES for _ in range(EPOCHS)
    ]
    backbone = {f"backbone.block{b}.conv{c}" for b in (1, 2, 3) for c in (1, 2)}
    head_only, top_block, everything = history[0], history[EPOCHS], history[-1]
    assert set(head_only["frozen"]) == backbone
    assert set(head_only["lr"]) == {"head"}
    assert set(top_block["frozen"]) == backbone - {"backbone.block3.conv1", "backbone.block3.conv2"}
    # layer-wise lr decay: the top block learns DECAY times slower than the head
    assert top_block["lr"]["backbone.block3.conv1"] == pytest.approx(0.8 * top_block["lr"]["head"])
    assert everything["frozen"] == []
    lrs = everything["lr"]
    assert lrs["backbone.block1.conv1"] < lrs["backbone.block2.conv1"] < lrs["head"]


def test_the_checkpoint_resumes_the_final_state(demo):
    result, _, _ = demo
    model = mf.Mentee.resume(result.checkpoint)
    assert isinstance(model, DigitsCNN)
    state = model.curriculum_state
    assert not any(state.resolved_frozen())
    assert state.coefficient("backbone.block1.conv1") == pytest.approx(0.8**3)
    assert state.coefficient("head") == 1.0
    model, optimizer, scheduler = DigitsCNN.resume_training(result.checkpoint)
    assert optimizer is not None and scheduler is not None
    x = torch.rand(4, 1, 8, 8)
    model.fit([(x, torch.tensor([0, 1, 2, 3]))], epochs=1, progress=False)
    assert model.epoch == len(PHASES) * EPOCHS + 1


def test_the_command_runs_in_a_fresh_process(tmp_path: Path):
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "mentor_fn",
            "demo",
            "--epochs",
            "1",
            "--quiet",
            "--output",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "with the curriculum" in completed.stdout
    assert "Traceback" not in completed.stderr
    assert (tmp_path / "demo.ckpt").is_file()
    assert (tmp_path / "timeline.png").read_bytes()[:8] == PNG_SIGNATURE


def test_quiet_prints_only_the_summary_and_restores_the_thread_count(tmp_path: Path):
    before = torch.get_num_threads()
    stream = io.StringIO()
    run_demo(epochs=1, output=tmp_path, quiet=True, stream=stream)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("validation accuracy")
    assert len(lines) == 5
    assert torch.get_num_threads() == before  # the demo runs on one thread, then restores


@pytest.mark.parametrize("epochs", [0, -1, 1.5, True])
def test_epochs_must_be_a_positive_int(epochs, tmp_path: Path):
    with pytest.raises(ValueError, match="epochs"):
        run_demo(epochs=epochs, output=tmp_path, quiet=True)


def test_without_scikit_learn_says_what_to_install(monkeypatch, tmp_path: Path):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"mentor_fn\[demo\]"):
        run_demo(epochs=1, output=tmp_path, quiet=True, stream=io.StringIO())
