"""The demo: its data, arms and tables, its default run, and the docs/demo.md blocks it generates.

The default run happens once per session (tests/demo_run.py); the other tests
are cheap: the tasks, the tables, the printing paths with a run's result
reused, and the two LP-FT implementations through a short probe.

The page's numbers are checked under the cross-CPU rule docs/demo.md states:
every printed number exactly on the torch release the page records (the
demo runs in float64 and gives the same digits on every CPU kernel tried),
within a stated tolerance on another release, and the text around the
numbers everywhere.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import re
import statistics
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from demo_run import DemoRun, default_demo

import mentor_fn as mf
from mentor_fn._app.demo import experiment
from mentor_fn._app.demo import protocol as runs
from mentor_fn._app.demo import run as _demo
from mentor_fn._app.demo.arms import Start, run_arm
from mentor_fn._app.demo.data import (
    CLASSES,
    DTYPE,
    PRETRAIN_ROTATION_DEGREES,
    SHIFT_DEGREES,
    SHOTS_PER_CLASS,
    SOURCE_DIGITS,
    SOURCE_TRAIN_FRACTION,
    TARGET_DIGITS,
    RandomRotation,
    load_tasks,
    rotate,
)
from mentor_fn._app.demo.experiment import Pretrained, SeedResult
from mentor_fn._app.demo.hand_written import lp_ft_by_hand
from mentor_fn._app.demo.report import (
    COLUMNS,
    MEASURED,
    Outcomes,
    SeedsSummary,
    Spread,
    seed_line,
    seed_lines_header,
    seed_table,
    seeds_table,
)
from mentor_fn._app.demo.training import (
    epoch_batches,
    new_model,
    new_train_objects,
    reproducible,
)

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "demo.md"
PROTOCOL = ROOT / "docs" / "demo-protocol.md"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WALL_TIME = re.compile(r"\b\d+\.\d s\b")
"""A wall time, as the demo prints it ("in 7.1 s"): the only thing that differs between runs."""
NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?(?:e[-+]\d+)?")
BACKBONE = {f"backbone.block{b}.conv{c}" for b in (1, 2, 3) for c in (1, 2)}


# Tiny models: one torch thread (on a busy machine more only spin-wait), as the demo runs.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoRun:
    return default_demo(tmp_path_factory)


def _update_script() -> ModuleType:
    path = ROOT / "tools" / "update_demo_docs.py"
    spec = importlib.util.spec_from_file_location("update_demo_docs", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# The data ------------------------------------------------------------------------


def _rows(images: torch.Tensor) -> list[tuple[float, ...]]:
    return sorted(tuple(image.flatten().tolist()) for image in images)


def _all_digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    images, digits = load_digits(return_X_y=True)
    return torch.as_tensor(images, dtype=DTYPE).reshape(-1, 1, 8, 8) / 16, torch.as_tensor(digits)


def test_the_source_is_digits_0_to_4_and_the_target_digits_5_to_9_each_image_used_once():
    tasks = load_tasks(0)
    images, digits = _all_digits()
    source = torch.cat([tasks.source.train.tensors[0], tasks.source.val.tensors[0]])
    source_labels = torch.cat([tasks.source.train.tensors[1], tasks.source.val.tensors[1]])
    target = torch.cat([tasks.target.train.tensors[0], tasks.target.test.tensors[0]])
    target_labels = torch.cat([tasks.target.train.tensors[1], tasks.target.test.tensors[1]])
    in_source = torch.isin(digits, torch.tensor(SOURCE_DIGITS))
    assert _rows(source) == _rows(images[in_source])
    assert _rows(target) == _rows(images[~in_source])
    assert sorted(source_labels.tolist()) == sorted(digits[in_source].tolist())
    # New classes: digits 5-9 are labelled 0-4 for the new head.
    assert sorted((target_labels + TARGET_DIGITS[0]).tolist()) == sorted(
        digits[~in_source].tolist()
    )
    # scikit-learn rounds a fractional train size down.
    assert len(tasks.source.train) == int(SOURCE_TRAIN_FRACTION * in_source.sum().item())
    assert torch.bincount(tasks.target.train.tensors[1]).tolist() == [SHOTS_PER_CLASS] * CLASSES
    assert all(t.dtype == DTYPE for t in (source, target))


def test_the_shifted_images_are_the_held_out_ones_rotated_with_the_same_labels():
    target = load_tasks(0).target
    images, labels = target.test.tensors
    assert torch.equal(target.shifted.tensors[0], rotate(images, SHIFT_DEGREES))
    assert torch.equal(target.shifted.tensors[1], labels)
    assert not torch.allclose(target.shifted.tensors[0], images, atol=0.1)


def test_rotation_is_counterclockwise_bilinear_and_exact_at_right_angles():
    images = load_tasks(0).source.val.tensors[0]
    # float64 rounding of cos/sin near 0 and 1: far below a pixel's 1/16 step.
    assert torch.allclose(rotate(images, 0), images, atol=1e-12)
    assert torch.allclose(rotate(images, 90), torch.rot90(images, 1, dims=(2, 3)), atol=1e-12)
    assert torch.allclose(rotate(images, 180), torch.rot90(images, 2, dims=(2, 3)), atol=1e-12)
    turned = rotate(images, SHIFT_DEGREES)
    assert turned.shape == images.shape and turned.min() >= 0 and turned.max() <= 1 + 1e-12
    # One angle per image: the same as each image on its own (cos and sin from
    # torch instead of math: the same to float64 rounding).
    angles = torch.linspace(-45, 45, len(images), dtype=DTYPE)
    one_by_one = torch.cat([rotate(image[None], float(a)) for image, a in zip(images, angles)])
    assert torch.allclose(rotate(images, angles), one_by_one, atol=1e-12)


def test_rotation_wants_one_angle_per_image():
    with pytest.raises(ValueError, match=r"one angle per image \(3\)"):
        rotate(torch.zeros(3, 1, 8, 8, dtype=DTYPE), torch.zeros(2, dtype=DTYPE))


def test_pretraining_rotates_each_image_by_its_own_seeded_angle_within_the_range():
    images = load_tasks(0).source.train.tensors[0][:10]
    labels = torch.arange(10)
    batch = [(image, label) for image, label in zip(images, labels)]
    rotated, kept = RandomRotation(PRETRAIN_ROTATION_DEGREES, seed=4)(batch)
    unit = torch.rand(10, generator=torch.Generator().manual_seed(4), dtype=DTYPE)
    angles = (2 * unit - 1) * PRETRAIN_ROTATION_DEGREES
    assert torch.equal(rotated, rotate(images, angles)) and torch.equal(kept, labels)
    assert angles.abs().max() <= PRETRAIN_ROTATION_DEGREES and angles.std() > 10
    again, _ = RandomRotation(PRETRAIN_ROTATION_DEGREES, seed=4)(batch)
    other, _ = RandomRotation(PRETRAIN_ROTATION_DEGREES, seed=5)(batch)
    assert torch.equal(rotated, again) and not torch.equal(rotated, other)


def test_the_seed_chooses_the_split():
    first, again, other = load_tasks(0), load_tasks(0), load_tasks(1)
    assert torch.equal(first.target.train.tensors[0], again.target.train.tensors[0])
    assert not torch.equal(first.target.train.tensors[0], other.target.train.tensors[0])


def test_epochs_of_batches_depend_on_their_seed_alone():
    split = load_tasks(0).target.train
    torch.manual_seed(1)
    first = epoch_batches(split, 5, 3)
    torch.manual_seed(2)  # the global generator plays no part
    second = epoch_batches(split, 5, 3)
    assert len(first) == 3 and all(len(epoch) == 10 for epoch in first)
    for one, other in zip(first, second, strict=True):
        assert all(torch.equal(a[1], b[1]) for a, b in zip(one, other, strict=True))
    # Each epoch a new shuffle of every image.
    assert not torch.equal(first[0][0][1], first[1][0][1])
    every = sorted(torch.cat([labels for _, labels in first[1]]).tolist())
    assert every == sorted(split.tensors[1].tolist())


# The arms --------------------------------------------------------------------------


def test_by_hand_is_lp_ft_through_the_probe_then_trains_no_backbone():
    """The two LP-FTs are the same computation through the probe (compared
    exactly: one process, the same kernels); at the "unfreeze" mentor_fn's
    trains the backbone, the hand-written one's optimizer never got it."""
    data = load_tasks(0).target.train
    torch.manual_seed(0)
    start = new_model()  # no pretraining needed: the training paths are under test
    ours, theirs = new_model(), new_model()
    ours.load_state_dict(start.state_dict())
    theirs.load_state_dict(start.state_dict())
    probe = runs.PROBE_EPOCHS
    batches = epoch_batches(data, 3, probe + 1)
    new_train_objects(ours)
    ours.fit(batches[0], epochs=0, schedule=runs.curriculum_schedule(), progress=False)
    for epoch in batches[:probe]:
        ours.fit(epoch, epochs=1, progress=False)
    notes: list[str] = []
    lp_ft_by_hand(theirs, batches[:probe], probe_epochs=probe)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(ours.head.weight, start.head.weight)

    again = new_model()
    again.load_state_dict(start.state_dict())
    lp_ft_by_hand(again, batches, probe_epochs=probe, note=notes.append)
    ours.fit(batches[probe], epochs=1, progress=False)
    assert all(p.requires_grad for p in again.parameters())  # "unfrozen"...
    for name, value in start.backbone.state_dict().items():
        assert torch.equal(again.backbone.state_dict()[name], value), name  # ...and never moved
        assert not torch.equal(ours.backbone.state_dict()[name], value), name
    assert notes == [
        f"phase 2: backbone.requires_grad_(True), lr set to {runs.LR * runs.LR_RATIO:g}; "
        "14 of 14 parameter tensors now require grad, the optimizer holds 2: head.weight, head.bias"
    ]


def test_an_unknown_arm_is_named():
    tasks = load_tasks(0)
    model = new_model()
    start = Start(model, torch.zeros(1), torch.zeros(1))
    with pytest.raises(ValueError, match=r"arm must be one of 'probe', .* got 'lp'"):
        run_arm("lp", start, tasks, [], experiment.NO_WATCH)


def test_bad_seeds_are_named():
    with pytest.raises(TypeError, match="seed must be an int, got '0'"):
        _demo.run_demo(seed="0", quiet=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="count must be an int >= 2, got 1"):
        _demo.run_demo_seeds(1, quiet=True)


# The default run -----------------------------------------------------------------


def test_lp_ft_follows_the_recipe(demo):
    history = demo.result.result.arms["lp_ft"].model.history
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


def test_plain_fine_tuning_trains_everything_at_the_global_lr(demo):
    history = demo.result.result.arms["fine_tune"].model.history
    assert len(history) == runs.TRANSFER_EPOCHS
    for index, record in enumerate(history):
        assert "phase" not in record and record["frozen"] == []
        lr = runs.LR * runs.GAMMA**index
        assert record["lr"] == {layer: pytest.approx(lr) for layer in [*BACKBONE, "head"]}


def test_what_each_arm_trained(demo):
    result = demo.result.result
    arms = result.arms
    assert result.backbone_weights == sum(
        p.numel() for p in arms["probe"].model.backbone.parameters()
    )
    # The probe and the hand-written LP-FT never moved the backbone (compared exactly).
    for arm in ("probe", "by_hand"):
        assert arms[arm].backbone_changed == 0
        assert arms[arm].feature_change_id == arms[arm].feature_change_ood == 0
    for arm in ("fine_tune", "lp_ft"):
        assert 0 < arms[arm].backbone_changed <= result.backbone_weights
        assert arms[arm].feature_change_id > 0 and arms[arm].feature_change_ood > 0
    # Every arm started from the same backbone: the two that kept it agree.
    for a, b in zip(
        arms["probe"].model.backbone.parameters(), arms["by_hand"].model.backbone.parameters()
    ):
        assert torch.equal(a, b)
    assert result.pretrained.upright >= 0.8  # pretraining learnt digits 0-4


def test_the_measures_agree_with_what_fit_reported(demo):
    result = demo.result.result
    for arm in ("fine_tune", "lp_ft"):
        last = result.arms[arm].model.history[-1]["val"]["accuracy"]
        # fit's Classifier takes each batch's mean of hits in float32 (about 1e-8
        # off) and weights the batches by size; the measure counts in float64.
        # One image of 796 is 1.3e-3.
        assert result.arms[arm].id_accuracy == pytest.approx(last, abs=1e-6)


def test_prints_every_shown_epoch_the_phase_tables_the_note_and_the_table(demo):
    text = demo.text
    epochs = runs.PRETRAIN_EPOCHS + runs.TRANSFER_EPOCHS
    assert sum(line.startswith("epoch ") for line in text.splitlines()) == epochs
    assert "phase 1/2: probe" in text and "phase 2/2: fine_tune" in text
    assert text.count("trainable params") == 2
    assert "the optimizer holds 2: head.weight, head.bias" in text
    for number, label in enumerate(runs.ARMS.values(), start=1):
        assert f"-- arm {number}/{len(runs.ARMS)}, {label}: " in text
    assert seed_table(demo.result.result) in text
    # Only the "wrote" line carries a wall time: every other line is the same on every run.
    assert [line for line in text.splitlines() if WALL_TIME.search(line)] == [text.splitlines()[-2]]


def test_writes_a_checkpoint_that_resumes_in_the_last_phase_and_a_png(demo):
    result = demo.result
    assert result.timeline.read_bytes()[:8] == PNG_SIGNATURE
    model, _, _ = mf.Mentee.resume_training(result.checkpoint)
    assert model.epoch == runs.TRANSFER_EPOCHS
    runner = model.schedule_runner
    assert runner is not None and runner.phase is not None and runner.phase.name == "fine_tune"
    baseline = result.result.arms["fine_tune"].model.history
    saved = mf.load_checkpoint(result.checkpoint)["history"]
    assert [record["baseline"]["val"] for record in saved] == [r["val"] for r in baseline]
    assert {record["baseline"]["name"] for record in saved} == {"plain fine-tuning"}


def test_restores_the_thread_count_and_the_deterministic_flag(demo):
    assert demo.threads_after == demo.threads_before
    assert demo.deterministic_after == demo.deterministic_before
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        torch.use_deterministic_algorithms(False)
        with reproducible():
            assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
        assert torch.get_num_threads() == 2 and not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)


# Printing, with a measured result reused -------------------------------------------


def test_quiet_prints_only_the_result_table_and_the_files(demo, monkeypatch, tmp_path):
    monkeypatch.setattr(_demo, "run_seed", lambda seed, watch, tasks: demo.result.result)
    stream = io.StringIO()
    written = _demo.run_demo(output=tmp_path, quiet=True, stream=stream)
    lines = stream.getvalue().splitlines()
    table = seed_table(demo.result.result).splitlines()
    assert lines[: len(table)] == table
    assert lines[len(table)].startswith(f"wrote {written.checkpoint} and {written.timeline} in ")
    assert lines[len(table) + 1 :] == [f"next: python -m mentor_fn inspect {written.checkpoint}"]


def _result(
    seed: int, accuracies: dict[str, tuple[float, float]], template: SeedResult
) -> SeedResult:
    arms = {
        arm: dataclasses.replace(template.arms[arm], id_accuracy=id_, ood_accuracy=ood)
        for arm, (id_, ood) in accuracies.items()
    }
    return dataclasses.replace(template, seed=seed, pretrained=Pretrained(0.9, 0.8), arms=arms)


def test_seeds_print_one_line_per_seed_the_mean_the_spread_and_the_outcomes(demo, monkeypatch):
    measured = {  # lp_ft against plain fine-tuning: ID behind, behind, tied; OOD ahead, ahead, behind
        3: {
            "probe": (0.5, 0.4),
            "fine_tune": (0.9, 0.5),
            "lp_ft": (0.8, 0.6),
            "by_hand": (0.5, 0.4),
        },
        4: {
            "probe": (0.6, 0.5),
            "fine_tune": (0.8, 0.5),
            "lp_ft": (0.7, 0.7),
            "by_hand": (0.6, 0.5),
        },
        5: {
            "probe": (0.7, 0.6),
            "fine_tune": (0.7, 0.6),
            "lp_ft": (0.7, 0.5),
            "by_hand": (0.7, 0.6),
        },
    }
    template = demo.result.result
    monkeypatch.setattr(_demo, "run_seed", lambda seed: _result(seed, measured[seed], template))
    stream = io.StringIO()
    summary = _demo.run_demo_seeds(3, first_seed=3, stream=stream)
    assert summary.cells[("lp_ft", "id")] == Spread(
        pytest.approx(220 / 3), pytest.approx(5.7735, abs=1e-4)
    )
    assert summary.cells[("fine_tune", "ood")] == Spread(
        pytest.approx(160 / 3), pytest.approx(5.7735, abs=1e-4)
    )
    assert summary.versus == {"id": Outcomes(0, 1, 2), "ood": Outcomes(2, 0, 1)}
    assert summary.pretrained_upright == Spread(pytest.approx(90.0), pytest.approx(0.0, abs=1e-12))
    lines = stream.getvalue().splitlines()
    assert lines[0] == seed_lines_header()
    assert lines[1] == "seed  3: ID  50.0%  90.0%  80.0%  50.0% | OOD  40.0%  50.0%  60.0%  40.0%"
    assert lines[5:-1] == seeds_table(summary).splitlines()
    assert (
        "ID accuracy ahead on 0, tied on 1, behind on 2; OOD accuracy ahead on 2, tied on 0"
        in lines[-3]
    )
    assert re.fullmatch(r"3 seeds in \d+\.\d s", lines[-1])


@pytest.mark.parametrize("module", ["sklearn.datasets", "matplotlib"])
def test_without_the_demo_extra_says_what_to_install(module, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setattr(experiment, "pretrain", lambda *_: pytest.fail("trained before failing"))
    with pytest.raises(ImportError, match=r"pip install scikit-learn matplotlib \(the 'demo'"):
        _demo.run_demo(output=tmp_path, quiet=True, stream=io.StringIO())


# docs/demo.md: its blocks, under the cross-CPU rule ----------------------------------


def _block(name: str):  # -> update_demo_docs.Block
    return _update_script().read_block(PAGE.read_text(), name)


def _recorded_torch(environment: str) -> str:
    found = re.fullmatch(r"torch (\S+), CPU capability (\S+)", environment)
    assert found is not None, environment
    return found[1]


def _template(line: str) -> str:
    return NUMBER.sub("#", WALL_TIME.sub("<wall time>", line))


def _numbers(line: str) -> list[tuple[str, bool]]:
    """The line's numbers (wall times left out), each with whether a % follows it."""
    line = WALL_TIME.sub("", line)
    return [(m[0], line[m.end() : m.end() + 1] == "%") for m in NUMBER.finditer(line)]


def _within_tolerance(recorded: str, printed: str, *, percent: bool) -> bool:
    """Another torch release: the same run up to one near-tie or one rounding boundary.

    A percentage may differ by one point (one image of the 100 a transfer
    trains on; more than one image of any set it is measured on); any other
    number by two units of its last printed digit. Counts (no decimals) as
    printed.
    """
    if "." not in recorded and not percent:
        return recorded == printed
    unit = 10.0 ** -len(recorded.split(".")[1].split("e")[0]) if "." in recorded else 1.0
    if "e" in recorded:
        unit *= 10.0 ** int(recorded.split("e")[1])
    a, b = (float(x.replace(",", "")) for x in (recorded, printed))
    return abs(a - b) <= (1.0 if percent else 2 * unit) + 1e-9


def assert_printed_as_recorded(recorded: list[str], printed: list[str], environment: str) -> None:
    """``printed`` says what ``recorded`` says: the same text around the numbers everywhere;
    the same numbers on the recorded torch release, numbers within tolerance on another."""
    assert [_template(line) for line in printed] == [_template(line) for line in recorded]
    exact = torch.__version__ == _recorded_torch(environment)
    for have, want in zip(printed, recorded):
        pairs = list(zip(_numbers(have), _numbers(want)))
        if exact:
            assert [h for (h, _), _ in pairs] == [w for _, (w, _) in pairs], (have, want)
        else:
            for (h, _), (w, percent) in pairs:
                assert _within_tolerance(w, h, percent=percent), (have, want)


def test_the_page_records_the_environment_of_its_numbers():
    for name in ("demo-output", "demo-seeds"):
        environment = _block(name).environment
        assert re.fullmatch(r"torch \S+, CPU capability \S+", environment), environment
    assert _block("demo-output").environment == _block("demo-seeds").environment


def test_the_page_s_default_run_is_the_default_run(demo):
    block = _block("demo-output")
    assert_printed_as_recorded(
        block.text.splitlines(), demo.text.rstrip("\n").splitlines(), block.environment
    )


def _percent_spread(cell: str) -> Spread:
    found = re.fullmatch(r"(-?\d+\.\d) ± (\d+\.\d)%", cell)
    assert found is not None, cell
    return Spread(float(found[1]), float(found[2]))


def _parse_seeds_block(text: str) -> tuple[SeedsSummary, dict[int, str]]:
    """The summary the seeds table shows, and the per-seed lines, read back from the text."""
    lines = text.splitlines()
    per_seed = {int(m[1]): line for line in lines if (m := re.match(r"seed +(\d+): ", line))}
    first, last = map(int, re.search(r"seeds (\d+)-(\d+), mean ± std", text).groups())
    count = last - first + 1
    cells, changed = {}, {}
    for arm, label in runs.ARMS.items():
        line = next(line for line in lines if line.startswith(label + "  "))
        values = re.split(r"\s{2,}", line.strip())[1:]
        assert len(values) == len(COLUMNS), line
        for column, value in zip(MEASURED, values):
            cells[(arm, column)] = _percent_spread(value)
        found = re.fullmatch(rf"on (\d+) of {count} seeds", values[-1])
        assert found is not None, line
        changed[arm] = int(found[1])
    pretrained = re.search(
        r"(\d+\.\d ± \d+\.\d%) upright, (\d+\.\d ± \d+\.\d%) rotated", text
    ).groups()
    versus = {}
    for key, name in (("id", "ID"), ("ood", "OOD")):
        found = re.search(rf"{name} accuracy ahead on (\d+), tied on (\d+), behind on (\d+)", text)
        versus[key] = Outcomes(*map(int, found.groups()))
    summary = SeedsSummary(
        first_seed=first,
        count=count,
        cells=cells,
        backbone_changed=changed,
        pretrained_upright=_percent_spread(pretrained[0]),
        pretrained_shifted=_percent_spread(pretrained[1]),
        versus=versus,
    )
    return summary, per_seed


def _per_seed_values(line: str) -> dict[str, dict[str, float]]:
    """``{"id": {arm: %}, "ood": {arm: %}}`` from one seed line."""
    parts = re.fullmatch(r"seed +\d+: ID (.*) \| OOD (.*)", line)
    assert parts is not None, line
    return {
        column: dict(zip(runs.ARMS, map(float, re.findall(r"(\d+\.\d)%", part)), strict=True))
        for column, part in (("id", parts[1]), ("ood", parts[2]))
    }


@pytest.fixture(scope="module")
def seeds():
    block = _block("demo-seeds")
    summary, per_seed = _parse_seeds_block(block.text)
    return block, summary, per_seed


def test_the_page_s_seeds_block_is_what_the_command_prints(seeds):
    block, summary, per_seed = seeds
    lines = block.text.splitlines()
    assert (summary.first_seed, summary.count) == (0, 10)
    assert lines[0] == seed_lines_header()
    assert list(per_seed) == list(range(10)) and lines[1:11] == list(per_seed.values())
    assert lines[11] == ""
    # The table, printed again from what it shows, is the table.
    assert lines[12:-1] == seeds_table(summary).splitlines()
    assert re.fullmatch(r"10 seeds in \d+\.\d s", lines[-1])
    page = PAGE.read_text()
    assert "`python -m mentor_fn demo --seeds 10` prints:\n\n<!-- demo-seeds:" in page


def test_the_page_s_table_is_the_mean_and_spread_of_its_per_seed_lines(seeds):
    _, summary, per_seed = seeds
    values = [_per_seed_values(line) for line in per_seed.values()]
    for column in ("id", "ood"):
        for arm in runs.ARMS:
            printed = [v[column][arm] for v in values]
            cell = summary.cells[(arm, column)]
            # Each printed value is within 0.05 of its measure, and so is each
            # cell: means agree within 0.1, stds within 0.05 * sqrt(10/9) + 0.05.
            assert abs(statistics.mean(printed) - cell.mean) <= 0.1 + 1e-9, (arm, column)
            assert abs(statistics.stdev(printed) - cell.std) <= 0.11, (arm, column)
        # Distinct accuracies on the 796 held-out images (steps of 0.126%) print
        # distinct, so the printed values decide the outcomes exactly.
        outcomes = Outcomes(
            ahead=sum(v[column]["lp_ft"] > v[column]["fine_tune"] for v in values),
            tied=sum(v[column]["lp_ft"] == v[column]["fine_tune"] for v in values),
            behind=sum(v[column]["lp_ft"] < v[column]["fine_tune"] for v in values),
        )
        assert summary.versus[column] == outcomes


def test_the_page_s_seed_0_is_the_default_run(seeds, demo):
    block, _, per_seed = seeds
    assert_printed_as_recorded([per_seed[0]], [seed_line(demo.result.result)], block.environment)


def test_the_cross_cpu_rule_compares_what_it_should():
    environment = f"torch {torch.__version__}, CPU capability AVX2"
    recorded = ["epoch   1 | val loss 0.6831 accuracy 74.6% | lr 3.00e-03", "0 of 71,792"]
    assert_printed_as_recorded(recorded, list(recorded), environment)
    for changed in (
        ["epoch   1 | val loss 0.6832 accuracy 74.6% | lr 3.00e-03", "0 of 71,792"],
        ["epoch   1 | val loss 0.6831 accuracy 74.6% | lr 3.00e-03", "1 of 71,792"],
        ["epoch   1 | val loss 0.6831 accuracy 74.6%", "0 of 71,792"],
    ):
        with pytest.raises(AssertionError):
            assert_printed_as_recorded(recorded, changed, environment)
    elsewhere = "torch 0.0.0, CPU capability DEFAULT"
    near = ["epoch   1 | val loss 0.6833 accuracy 75.6% | lr 3.01e-03", "0 of 71,792"]
    assert_printed_as_recorded(recorded, near, elsewhere)
    for far in (
        ["epoch   1 | val loss 0.6834 accuracy 74.6% | lr 3.00e-03", "0 of 71,792"],
        ["epoch   1 | val loss 0.6831 accuracy 75.7% | lr 3.00e-03", "0 of 71,792"],
        ["epoch   1 | val loss 0.6831 accuracy 74.6% | lr 3.00e-03", "1 of 71,792"],
    ):
        with pytest.raises(AssertionError):
            assert_printed_as_recorded(recorded, far, elsewhere)


def test_a_page_without_exactly_one_block_is_refused():
    update = _update_script()
    with pytest.raises(ValueError, match="exactly one 'demo-output' block, found 0"):
        update.read_block("no blocks here", "demo-output")
    text = PAGE.read_text()
    block = update.read_block(text, "demo-output")
    replaced = update.replace_block(
        text, "demo-output", update.Block("new", "torch x, CPU capability Y")
    )
    assert update.read_block(replaced, "demo-output") == update.Block(
        "new", "torch x, CPU capability Y"
    )
    assert update.read_block(replaced, "demo-seeds") == update.read_block(text, "demo-seeds")
    assert update.replace_block(replaced, "demo-output", block) == text


# docs/demo.md's reading and docs/demo-protocol.md's constants ------------------------


def _page_text() -> str:
    return " ".join(PAGE.read_text().split())


def test_the_page_s_reading_says_what_the_seeds_block_shows(seeds):
    """Each number the reading quotes is the block's, and each verdict follows
    the protocol's rule (ahead or behind on at least 8 of 10 seeds)."""
    _, summary, _ = seeds
    cells, count = summary.cells, summary.count
    page = _page_text()

    def quoted(arm: str, column: str) -> str:
        cell = cells[(arm, column)]
        return f"{cell.mean:.1f} ± {cell.std:.1f}%"

    def gap(column: str) -> float:
        return cells[("fine_tune", column)].mean - cells[("lp_ft", column)].mean

    assert "**LP-FT is behind plain fine-tuning, in and out of distribution**" in page
    for column, where in (("id", "In distribution"), ("ood", "Out of distribution")):
        outcomes = summary.versus[column]
        assert outcomes.behind >= 8  # "behind", by the protocol's rule
        assert (
            f"**{where}**, LP-FT is behind on {outcomes.behind} of {count} seeds: "
            f"{quoted('lp_ft', column)} against {quoted('fine_tune', column)}, "
            f"{gap(column):.1f} points lower"
        ) in page

    def drop(arm: str) -> str:
        return f"{cells[(arm, 'id')].mean - cells[(arm, 'ood')].mean:.1f}"

    assert f"Plain fine-tuning loses {drop('fine_tune')} points out of distribution" in page
    assert f"LP-FT loses {drop('lp_ft')}, the linear probe {drop('probe')}." in page
    up, shifted = summary.pretrained_upright, summary.pretrained_shifted
    assert f"{up.mean:.1f}% of its own validation digits upright and {shifted.mean:.1f}%" in page
    assert f"reaches only {cells[('probe', 'id')].mean:.1f}% in distribution" in page
    assert f"fine-tuning reaches {cells[('fine_tune', 'id')].mean:.1f}%" in page
    assert f"But it starts {gap('id'):.1f} points lower" in page
    changes = [
        f"{cells[(arm, column)].mean:.0f}%"
        for arm in ("fine_tune", "lp_ft")
        for column in ("change_id", "change_ood")
    ]
    assert (
        "features by {} (ID) and {} (OOD) of their pretrained size, LP-FT by {} and {}".format(
            *changes
        )
        in page
    )

    assert summary.backbone_changed == {
        "probe": 0,
        "fine_tune": count,
        "lp_ft": count,
        "by_hand": 0,
    }
    assert f"changed on 0 of {count} seeds" in page
    assert (
        f"{quoted('by_hand', 'id')} in distribution and {quoted('by_hand', 'ood')} out of it"
        in page
    )
    assert f"the linear probe's {quoted('probe', 'id')} and {quoted('probe', 'ood')}" in page
    for column in ("id", "ood"):  # "within half a point"
        assert abs(cells[("by_hand", column)].mean - cells[("probe", column)].mean) <= 0.5
    assert "within half a point" in page
    assert "[the protocol](demo-protocol.md)" in page


def test_the_readme_quotes_the_seeds_block(seeds):
    """The README's one-line result is the seeds block's (its text, reflowed)."""
    _, summary, _ = seeds
    versus, count = summary.versus, summary.count
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert versus["id"].behind == versus["ood"].behind  # one number quoted for both
    assert f"behind on {versus['id'].behind} of {count} seeds in and out of distribution" in readme
    assert summary.backbone_changed["by_hand"] == 0
    assert "LP-FT written by hand never moved its backbone" in readme


def test_the_page_quotes_the_first_run_as_the_protocol_records_it():
    page = _page_text()
    fix = " ".join(
        PROTOCOL.read_text().split("### Implementation fix")[1].split("\n## ")[0].split()
    )
    assert "lp_ft behind plain fine-tuning in distribution on 10 of 10 seeds" in fix
    assert "out of distribution ahead on 5 and behind on 5" in fix
    assert "also had LP-FT behind on 10 of 10 seeds, by 17.2 points" in page
    assert "plain fine-tuning 88.7 ± 3.4% / 63.0 ± 8.0%, lp_ft 71.5 ± 5.5% / 63.3 ± 9.2%" in fix
    assert f"{88.7 - 71.5:.1f}" == "17.2"
    assert "(63.3% against 63.0%, ahead on 5 seeds and behind on 5)" in page


def _protocol_3() -> str:
    section = PROTOCOL.read_text().split("## Protocol 3 ")[1].split("\n## ")[0]
    return " ".join(section.split())


def test_the_protocol_page_writes_out_the_protocol_the_code_runs():
    protocol = _protocol_3()
    tasks = load_tasks(0)
    backbone = sum(p.numel() for p in new_model().backbone.parameters())
    for text in (
        f"Source task: digits {SOURCE_DIGITS[0]}-{SOURCE_DIGITS[-1]}.",
        f"{SOURCE_TRAIN_FRACTION:.0%} to pretrain on",
        f"Target task: digits {TARGET_DIGITS[0]}-{TARGET_DIGITS[-1]}, new classes",
        f"{SHOTS_PER_CLASS} labelled images per digit ({SHOTS_PER_CLASS * CLASSES} in all",
        f"held out ({len(tasks.target.test)} images)",
        f"rotated counterclockwise by **{SHIFT_DEGREES} degrees**",
        f"[-{PRETRAIN_ROTATION_DEGREES}, {PRETRAIN_ROTATION_DEGREES}] degrees",
        f"`DigitsCNN(num_classes={CLASSES})`",
        f"its backbone has {backbone:,} weights",
        f"Adam at lr {runs.LR:.0e}".replace("e-0", "e-"),
        f"`ExponentialLR(gamma={runs.GAMMA})`",
        f"batch {runs.BATCH_SIZE}, {runs.PRETRAIN_EPOCHS} epochs",
        f"trains {runs.TRANSFER_EPOCHS} epochs on the same batches",
        f'`mf.lp_ft("head", probe_epochs={runs.PROBE_EPOCHS})`',
        f"at {runs.LR_RATIO} x the global lr ({runs.LR * runs.LR_RATIO:.0e}".replace("e-0", "e-"),
        "`filter(lambda p: p.requires_grad, model.parameters())`",
    ):
        assert text in protocol, text
