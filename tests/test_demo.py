"""The demo: its data and protocol, its default run, and the README blocks it generates.

The default run happens once per session (tests/demo_run.py); the other tests
are cheap: the tasks, the tables, and the printing paths with a run's result
reused.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from demo_run import DemoRun, default_demo

import mentor_fn as mf
from mentor_fn._app.demo import protocol as runs
from mentor_fn._app.demo import run as _demo
from mentor_fn._app.demo.data import (
    CLASSES,
    ROTATION_DEGREES,
    SHOTS_PER_CLASS,
    SOURCE_TRAIN_FRACTION,
    load_tasks,
    rotate,
)
from mentor_fn._app.demo.model import DigitsCNN
from mentor_fn._app.demo.protocol import Accuracies, SeedResult, Transfer
from mentor_fn._app.demo.report import COLUMNS, ROWS, SeedsSummary, Spread, seed_table, seeds_table

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PROTOCOL = ROOT / "docs" / "demo-protocol.md"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WALL_TIME = re.compile(r"\b\d+\.\d s\b")
"""A wall time, as the demo prints it ("in 7.1 s"): the only thing that differs between runs."""
BACKBONE = {f"backbone.block{b}.conv{c}" for b in (1, 2, 3) for c in (1, 2)}
PINNED_TORCH = "2.13.0"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoRun:
    return default_demo(tmp_path_factory)


def _tool(name: str) -> ModuleType:
    path = ROOT / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _update_script() -> ModuleType:
    return _tool("update_demo_docs")


def _without_wall_time(text: str) -> list[str]:
    return [line for line in text.splitlines() if not WALL_TIME.search(line)]


# The data ------------------------------------------------------------------------


def _rows(images: torch.Tensor) -> list[tuple[float, ...]]:
    return sorted(tuple(image.flatten().tolist()) for image in images)


def test_every_image_is_used_once_upright_in_the_source_and_rotated_in_the_target():
    from sklearn.datasets import load_digits

    tasks = load_tasks(0)
    source = torch.cat([tasks.source.train.tensors[0], tasks.source.val.tensors[0]])
    target = torch.cat([tasks.target.train.tensors[0], tasks.target.val.tensors[0]])
    images, _ = load_digits(return_X_y=True)
    everything = torch.as_tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
    # Rotation is not invertible (corners leave the frame): find each target
    # image's upright original among the rotated originals.
    rotated = rotate(everything, ROTATION_DEGREES).flatten(1)
    distances = torch.cdist(target.flatten(1), rotated, compute_mode="donot_use_mm_for_euclid_dist")
    nearest = distances.min(dim=1)
    assert nearest.values.max() == 0  # the same pixels
    upright_again = everything[nearest.indices]
    assert _rows(torch.cat([source, upright_again])) == _rows(everything)
    assert not torch.allclose(target, upright_again, atol=0.1)


def test_rotation_is_counterclockwise_bilinear_and_exact_at_right_angles():
    images = load_tasks(0).source.val.tensors[0]
    assert torch.allclose(rotate(images, 0), images, atol=1e-6)
    assert torch.allclose(rotate(images, 90), torch.rot90(images, 1, dims=(2, 3)), atol=1e-6)
    assert torch.allclose(rotate(images, 180), torch.rot90(images, 2, dims=(2, 3)), atol=1e-6)
    turned = rotate(images, ROTATION_DEGREES)
    assert turned.shape == images.shape and turned.min() >= 0 and turned.max() <= 1 + 1e-6
    assert not torch.allclose(turned, images, atol=0.1)


def test_the_halves_are_stratified_and_the_target_has_ten_labels_per_digit():
    tasks = load_tasks(0)
    source = torch.cat([tasks.source.train.tensors[1], tasks.source.val.tensors[1]])
    target = torch.cat([tasks.target.train.tensors[1], tasks.target.val.tensors[1]])
    assert len(source) + len(target) == 1797 and abs(len(source) - len(target)) <= 1
    difference = torch.bincount(source, minlength=CLASSES) - torch.bincount(target)
    assert difference.abs().max() <= 1
    assert len(tasks.source.train) == round(0.8 * len(source))
    labels = tasks.target.train.tensors[1]
    assert torch.bincount(labels).tolist() == [SHOTS_PER_CLASS] * CLASSES


def test_the_seed_chooses_the_split():
    first, again, other = load_tasks(0), load_tasks(0), load_tasks(1)
    assert torch.equal(first.target.train.tensors[0], again.target.train.tensors[0])
    assert not torch.equal(first.target.train.tensors[0], other.target.train.tensors[0])


def test_two_runs_given_the_same_seed_see_the_same_batches():
    split = load_tasks(0).target
    torch.manual_seed(1)
    first = [labels for _, labels in runs._loaders(split, 5)[0]]
    torch.manual_seed(2)  # the global generator plays no part
    second = [labels for _, labels in runs._loaders(split, 5)[0]]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


# The premise rule (docs/demo-protocol.md, tools/choose_demo_angle.py) ----------------


def test_the_rule_chooses_the_largest_qualifying_angle():
    choose = _tool("choose_demo_angle").choose_angle
    assert choose({15: 0.8, 30: 0.5, 45: 0.49}) == 30  # at least 50%: 30 qualifies
    assert choose({15: 0.8, 30: 0.4, 45: 0.6, 60: 0.2}) == 45  # not only the first run of them
    assert choose({15: 0.3, 30: 0.2}) is None


def _angle_table() -> dict[int, list[str]]:
    """docs/demo-protocol.md's angle table: angle -> its cells (seeds..., mean, verdict)."""
    section = PROTOCOL.read_text().split("## The angle table\n")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if re.match(r"\| \d+ \|", line)]
    return {int(cells[0]): cells[1:] for cells in (row.strip("| ").split(" | ") for row in rows)}


def test_the_demo_angle_is_the_one_the_recorded_table_chooses(demo):
    tool = _tool("choose_demo_angle")
    table = _angle_table()
    assert tuple(table) == tool.ANGLES
    means = {angle: float(cells[-2].rstrip("%")) / 100 for angle, cells in table.items()}
    for angle, cells in table.items():
        assert cells[-1] == ("yes" if means[angle] >= tool.THRESHOLD else "no")
    assert tool.choose_angle(means) == ROTATION_DEGREES
    assert f"**Chosen angle: {ROTATION_DEGREES} degrees**" in PROTOCOL.read_text()
    # The table came from the demo's own pretraining: seed 0's cell at the chosen
    # angle is the default run's no-transfer target accuracy.
    assert table[ROTATION_DEGREES][0] == f"{demo.result.result.pretrained.target:.1%}"


# The default run -----------------------------------------------------------------


def test_the_curriculum_follows_lp_ft(demo):
    history = demo.result.result.curriculum.model.history
    probe, fine_tune = runs.PROBE_EPOCHS, runs.TRANSFER_EPOCHS - runs.PROBE_EPOCHS
    assert [record["phase"] for record in history] == ["probe"] * probe + ["fine_tune"] * fine_tune
    for index, record in enumerate(history):
        if index < probe:  # the head alone, at the global lr, decaying
            assert set(record["frozen"]) == BACKBONE
            assert record["lr"] == {"head": pytest.approx(runs.LR * runs.GAMMA**index)}
        else:  # everything, on a fresh optimizer and scheduler at a tenth of it
            lr = runs.LR * runs.LR_RATIO * runs.GAMMA ** (index - probe)
            assert record["frozen"] == []
            assert record["lr"] == {layer: pytest.approx(lr) for layer in [*BACKBONE, "head"]}


def test_the_baseline_trains_everything_at_the_global_lr(demo):
    history = demo.result.result.baseline.model.history
    assert len(history) == runs.TRANSFER_EPOCHS
    for index, record in enumerate(history):
        assert "phase" not in record and record["frozen"] == []
        lr = runs.LR * runs.GAMMA**index
        assert record["lr"] == {layer: pytest.approx(lr) for layer in [*BACKBONE, "head"]}


def test_the_measures_agree_with_what_fit_reported(demo):
    result = demo.result.result
    for run in (result.curriculum, result.baseline):
        last = run.model.history[-1]["val"]["accuracy"]
        assert run.after.target == pytest.approx(last, abs=1e-6)
        assert result.forgetting(run) == result.pretrained.source - run.after.source
    assert result.pretrained.source >= 0.8  # pretraining learned the upright digits


def test_prints_every_epoch_the_phase_tables_and_the_result_table(demo):
    text = demo.text
    epochs = runs.PRETRAIN_EPOCHS + 2 * runs.TRANSFER_EPOCHS
    assert sum(line.startswith("epoch ") for line in text.splitlines()) == epochs
    assert "-- phase 1/2: probe" in text and "-- phase 2/2: fine_tune" in text
    assert text.count("trainable params") == 2
    assert seed_table(demo.result.result) in text
    # Only the last lines carry a wall time: every other line is the same on every run.
    assert [line for line in text.splitlines() if WALL_TIME.search(line)] == [text.splitlines()[-2]]


def test_writes_a_checkpoint_that_resumes_in_the_last_phase_and_a_png(demo):
    result = demo.result
    assert result.timeline.read_bytes()[:8] == PNG_SIGNATURE
    model, _, _ = DigitsCNN.resume_training(result.checkpoint)
    assert isinstance(model, DigitsCNN) and model.epoch == runs.TRANSFER_EPOCHS
    runner = model.schedule_runner
    assert runner is not None and runner.phase is not None and runner.phase.name == "fine_tune"
    baseline = result.result.baseline.model.history
    saved = mf.load_checkpoint(result.checkpoint)["history"]
    assert [record["baseline"]["val"] for record in saved] == [r["val"] for r in baseline]
    assert {record["baseline"]["name"] for record in saved} == {"plain fine-tuning"}


def test_runs_on_one_thread_and_restores_the_count(demo):
    assert demo.threads_after == demo.threads_before


# Printing, with a measured result reused -------------------------------------------


def test_quiet_prints_only_the_result_table_and_the_files(demo, monkeypatch, tmp_path):
    monkeypatch.setattr(_demo, "run_seed", lambda seed, watch: demo.result.result)
    stream = io.StringIO()
    written = _demo.run_demo(output=tmp_path, quiet=True, stream=stream)
    lines = stream.getvalue().splitlines()
    table = seed_table(demo.result.result).splitlines()
    assert lines[: len(table)] == table
    assert lines[len(table)].startswith(f"wrote {written.checkpoint} and {written.timeline} in ")
    assert lines[len(table) + 1 :] == [f"next: python -m mentor_fn inspect {written.checkpoint}"]


def _result(seed: int, curriculum: float, baseline: float, template: SeedResult) -> SeedResult:
    model = template.curriculum.model
    return dataclasses.replace(
        template,
        seed=seed,
        pretrained=Accuracies(target=0.1, source=0.9),
        curriculum=Transfer(Accuracies(target=curriculum, source=0.6), model),
        baseline=Transfer(Accuracies(target=baseline, source=0.5), model),
    )


def test_seeds_print_the_mean_and_the_spread(demo, monkeypatch):
    measured = {3: (0.2, 0.5), 4: (0.4, 0.3), 5: (0.3, 0.4)}
    template = demo.result.result
    monkeypatch.setattr(_demo, "run_seed", lambda seed: _result(seed, *measured[seed], template))
    stream = io.StringIO()
    summary = _demo.run_demo_seeds(3, first_seed=3, quiet=True, stream=stream)
    assert summary.cells[("curriculum", "target")] == Spread(
        pytest.approx(30.0), pytest.approx(10.0)
    )
    assert summary.cells[("baseline", "forgetting")] == Spread(pytest.approx(40.0), 0.0)
    assert summary.curriculum_ahead_target == 1 and summary.curriculum_ahead_source == 3
    lines = stream.getvalue().splitlines()
    assert lines[:-1] == seeds_table(summary).splitlines()
    assert lines[0].startswith("seeds 3-5, mean ± std")
    assert "target accuracy on 1 of 3 seeds, source accuracy on 3 of 3" in lines[-3]
    assert re.fullmatch(r"3 seeds in \d+\.\d s", lines[-1])


def test_a_spread_needs_two_seeds():
    with pytest.raises(ValueError, match="count"):
        _demo.run_demo_seeds(1, quiet=True)


@pytest.mark.parametrize("module", ["sklearn.datasets", "matplotlib"])
def test_without_the_demo_extra_says_what_to_install(module, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setattr(runs, "_pretrain", lambda *_: pytest.fail("trained before failing"))
    with pytest.raises(ImportError, match=r"mentor_fn\[demo\]"):
        _demo.run_demo(output=tmp_path, quiet=True, stream=io.StringIO())


# The README's blocks ----------------------------------------------------------------


def test_the_readme_block_is_the_default_run(demo):
    if torch.__version__.split("+")[0] != PINNED_TORCH:
        pytest.skip(f"the README's numbers come from torch {PINNED_TORCH}")
    block = _update_script().read_block(README.read_text(), "demo-output")
    assert _without_wall_time(block) == _without_wall_time(demo.text.rstrip("\n"))
    assert len(block.splitlines()) - len(_without_wall_time(block)) == 1


def _parse_seeds_block(block: str) -> SeedsSummary:
    """The summary a seeds table shows, read back from its text."""
    lines = _without_wall_time(block)
    first, last = map(int, re.match(r"seeds (\d+)-(\d+), mean ± std", lines[0]).groups())
    cells = {}
    for row, label in ROWS.items():
        line = next(line for line in lines if line.startswith(label))
        values = re.findall(r"(-?\d+\.\d) ± (\d+\.\d)", line)
        columns = [c for c in COLUMNS if (row, c) != ("pretrained", "forgetting")]
        assert len(values) == len(columns), line
        for column, (mean, std) in zip(columns, values):
            cells[(row, column)] = Spread(float(mean), float(std))
    ahead = re.search(r"target accuracy on (\d+) of \d+ seeds, source accuracy on (\d+) of", block)
    assert ahead is not None
    return SeedsSummary(first, last - first + 1, cells, int(ahead[1]), int(ahead[2]))


@pytest.fixture(scope="module")
def seeds_block() -> str:
    return _update_script().read_block(README.read_text(), "demo-seeds")


def test_the_readme_seeds_block_is_what_the_command_prints(seeds_block):
    summary = _parse_seeds_block(seeds_block)
    assert (summary.first_seed, summary.count) == (0, 10)
    assert _without_wall_time(seeds_block) == seeds_table(summary).splitlines()
    assert re.fullmatch(r"10 seeds in \d+\.\d s", seeds_block.splitlines()[-1])
    readme = README.read_text()
    command = "`python -m mentor_fn demo --seeds 10 --quiet` prints:\n\n<!-- demo-seeds:"
    assert command in readme


def _demo_section() -> str:
    return " ".join(README.read_text().split("## The demo\n")[1].split("\n## ")[0].split())


def test_the_readme_says_what_the_blocks_show(seeds_block):
    """The README's reading of the results holds for the blocks it reads: the
    premise holds ("already gets 78%"), lp_ft is "about 2 points behind" and
    "ahead on only 1 of 10 seeds", a gap "smaller than the spread", "about as
    much" forgetting, and seed 0 "forgets less"."""
    summary = _parse_seeds_block(seeds_block)
    cells = summary.cells
    section = _demo_section()
    assert "the curriculum does not earn its place, though the gap is small" in section
    pretrained = cells[("pretrained", "target")]
    assert pretrained.mean >= 50
    assert f"already gets {pretrained.mean:.0f}% of the rotated digits right" in section
    curriculum, baseline = cells[("curriculum", "target")], cells[("baseline", "target")]
    gap = baseline.mean - curriculum.mean
    assert gap > 0 and f"about {gap:.0f} points behind plain fine-tuning" in section
    assert gap < min(curriculum.std, baseline.std)  # "smaller than the spread over seeds"
    ahead, count = summary.curriculum_ahead_target, summary.count
    assert ahead <= count // 5  # "only", "almost always the same way"
    assert f"ahead on only {ahead} of {count} seeds" in section
    forgets, plain = cells[("curriculum", "forgetting")], cells[("baseline", "forgetting")]
    assert abs(forgets.mean - plain.mean) < min(forgets.std, plain.std)  # "about as much"
    default_run = _update_script().read_block(README.read_text(), "demo-output")
    forgetting = {
        row: float(re.search(r"(-?\d+\.\d) pts", line)[1])
        for line in default_run.splitlines()
        for row, label in ROWS.items()
        if line.startswith(label) and row != "pretrained"
    }
    assert forgetting["curriculum"] < forgetting["baseline"]  # "seed 0 ... forgets less"
    assert "[docs/demo-protocol.md](docs/demo-protocol.md)" in section


def test_the_readme_writes_out_the_protocol_the_code_runs():
    protocol = _demo_section().split("<!-- demo-output")[0]
    parameters = sum(parameter.numel() for parameter in DigitsCNN().parameters())
    for text in (
        f"{parameters // 1000}k parameters",
        f"{SOURCE_TRAIN_FRACTION:.0%} of the source half",
        f"lr {runs.LR:.0e}".replace("e-0", "e-"),
        f"ExponentialLR(gamma={runs.GAMMA})",
        f"{runs.PRETRAIN_EPOCHS} epochs, batch {runs.BATCH_SIZE}",
        f"{SHOTS_PER_CLASS} labelled images per digit ({SHOTS_PER_CLASS * CLASSES})",
        f"rotated by {ROTATION_DEGREES} degrees",
        f"{runs.TRANSFER_EPOCHS} epochs, batch {runs.BATCH_SIZE}",
        f'mf.lp_ft("head", probe_epochs={runs.PROBE_EPOCHS})',
        f"for {runs.PROBE_EPOCHS} epochs",
        f"at {runs.LR_RATIO} x the global lr",
    ):
        assert text in protocol, text
