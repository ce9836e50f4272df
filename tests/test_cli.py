"""python -m mentor_fn inspect / plot on a checkpoint the demo wrote, and one-line errors."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from demo_run import default_demo
from torch import nn

import mentor_fn as mf
from mentor_fn._app import cli as cli_module
from mentor_fn._app.cli import main
from mentor_fn._app.demo.model import DigitsCNN
from mentor_fn._app.demo.protocol import PROBE_EPOCHS, TRANSFER_EPOCHS
from mentor_fn._app.plot import default_plot_path, image_format, plot_timeline
from mentor_fn._app.render import inspect_text as inspect_checkpoint

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LAYERS = [f"backbone.block{b}.conv{c}" for b in (1, 2, 3) for c in (1, 2)] + ["head"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The checkpoint of the session's default demo run (tests/demo_run.py)."""
    return default_demo(tmp_path_factory).result.checkpoint


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mentor_fn", *args], capture_output=True, text=True, timeout=60
    )


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# inspect ------------------------------------------------------------------------


def test_inspect_prints_the_layer_table_and_the_history(checkpoint, capsys):
    assert main(["inspect", str(checkpoint)]) == 0
    out = capsys.readouterr().out
    for column in ("layer", "frozen", "coefficient", "effective lr", "parameters"):
        assert column in out
    table = out.split("history:")[0]
    for layer in LAYERS:
        assert f"\n{layer} " in table
    assert "mentor_fn._app.demo.model.DigitsCNN" in out
    saved = mf.Mentee.resume(checkpoint)  # the demo transfers to a head of its own size
    total = sum(parameter.numel() for parameter in saved.parameters())
    assert f"{total:,}" in table
    history = out.split("history:")[1].strip().splitlines()
    assert len(history) == 2 + TRANSFER_EPOCHS  # header, rule, one line per epoch
    phases = ["probe"] * PROBE_EPOCHS + ["fine_tune"] * (TRANSFER_EPOCHS - PROBE_EPOCHS)
    assert [line.split()[1] for line in history[2:]] == phases
    assert "val accuracy" in history[0]


def test_inspect_shows_the_saved_lr_and_the_schedule(checkpoint, capsys):
    main(["inspect", str(checkpoint)])
    out = capsys.readouterr().out
    contents = mf.load_checkpoint(checkpoint)
    groups = contents["curriculum"]["optimizer"]["param_groups"]
    table = out.split("history:")[0]
    for group in groups:
        for layer in group["layers"]:
            row = next(line for line in table.splitlines() if line.startswith(f"{layer} "))
            assert row.split()[1:4] == ["no", "1", f"{group['lr']:.2e}"]
    assert "now: phase 'fine_tune' (2 of 2)" in out


def test_inspect_in_a_fresh_process(checkpoint):
    completed = _cli("inspect", str(checkpoint))
    assert completed.returncode == 0, completed.stderr
    assert "effective lr" in completed.stdout


def test_inspect_a_checkpoint_saved_before_training(tmp_path):
    model = DigitsCNN().freeze("backbone")
    path = tmp_path / "fresh.ckpt"
    model.save(path)
    text = inspect_checkpoint(path)
    assert "no optimizer built" in text
    assert "no epochs trained yet" in text
    assert "\nhead " in text


def test_inspect_counts_the_parameters_of_layers_frozen_before_the_build(tmp_path):
    model = DigitsCNN().freeze(r"backbone\.block[12]")
    model.create_train_objects(lr=1e-3)
    path = tmp_path / "frozen.ckpt"
    model.save(path)
    text = inspect_checkpoint(path)
    total = sum(parameter.numel() for parameter in model.parameters())
    assert f"{total:,}" in text
    assert "counted from the saved weights" in text


# plot ---------------------------------------------------------------------------


def test_plot_writes_a_png(checkpoint, tmp_path, capsys):
    output = tmp_path / "timeline.png"
    assert main(["plot", str(checkpoint), "-o", str(output)]) == 0
    assert str(output) in capsys.readouterr().out
    width, height = _png_size(output)
    assert width >= 800 and height >= 600


def test_plot_png_decodes(checkpoint, tmp_path):
    image = pytest.importorskip("matplotlib.image")
    output = tmp_path / "timeline.png"
    main(["plot", str(checkpoint), "-o", str(output)])
    pixels = image.imread(output)
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
    assert pixels.std() > 0.05  # not a blank canvas


def test_plot_format_follows_the_suffix(checkpoint, tmp_path):
    output = tmp_path / "timeline.svg"
    assert main(["plot", str(checkpoint), "-o", str(output)]) == 0
    assert output.read_bytes().startswith(b"<?xml") and b"<svg" in output.read_bytes()[:500]
    # Every suffix matplotlib writes, in any case; PNG without one.
    assert [image_format(name) for name in ("a.jpg", "a.JPEG", "a.pdf", "a.PNG", "a")] == [
        "jpg",
        "jpeg",
        "pdf",
        "png",
        "png",
    ]


def test_plot_default_output_is_beside_the_checkpoint(checkpoint, capsys):
    expected = default_plot_path(checkpoint)
    assert expected == checkpoint.with_name("demo_timeline.png")
    completed = _cli("plot", str(checkpoint))
    assert completed.returncode == 0, completed.stderr
    _png_size(expected)


def test_plot_of_the_demo_names_the_phases_and_draws_the_baseline(checkpoint, tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    output = tmp_path / "timeline.svg"
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text stays text in the SVG
        assert main(["plot", str(checkpoint), "-o", str(output)]) == 0
    svg = output.read_text()
    for text in ("probe", "fine_tune", "validation, plain fine-tuning"):
        assert f">{text}<" in svg, text


def test_plot_timeline_of_a_regressor_without_phases(tmp_path):
    class Tiny(mf.Mentee):
        trainer = mf.Regressor()

        def __init__(self):
            super().__init__()
            self.body = nn.Linear(3, 4)
            self.out = nn.Linear(4, 1)

        def forward(self, x):
            return self.out(self.body(x).relu())

    data = [(torch.rand(8, 3), torch.rand(8, 1)) for _ in range(2)]
    model = Tiny().freeze("body")
    model.create_train_objects(lr=1e-2)
    model.fit(data, data, epochs=2, progress=False)
    model.unfreeze("body", reset_optimizer_if_needed=True)
    model.fit(data, data, epochs=2, progress=False)
    output = plot_timeline(model.history, tmp_path / "regressor.png")
    _png_size(output)


# a run that follows a schedule ----------------------------------------------------


class Scheduled(mf.Mentee):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4))
        self.head = nn.Linear(4, 2)
        self.trainer = mf.Classifier()

    def forward(self, x):
        return self.head(self.body(x).relu())


SCHEDULE = mf.Schedule(
    [
        mf.Phase("head", mf.freeze("body"), until=mf.after_epochs(2)),
        mf.Phase(
            "top",
            mf.unfreeze(r"body\.2"),
            until=mf.any_of(mf.plateau("val_loss", patience=2), mf.after_epochs(4)),
            warmup_steps=5,
        ),
        mf.Phase("all", mf.unfreeze("body"), lr=1e-3, optimizer="fresh"),
    ]
)


def scheduled_checkpoint(folder: Path, epochs: int, schedule: mf.Schedule = SCHEDULE) -> Path:
    torch.manual_seed(0)
    data = [(torch.rand(4, 3), torch.tensor([0, 1, 0, 1])) for _ in range(2)]
    path = folder / "scheduled.ckpt"
    Scheduled().fit(data, data, epochs, path, schedule=schedule, lr=1e-2, progress=False)
    return path


def test_inspect_shows_the_schedule_and_where_the_run_stands(tmp_path, capsys):
    path = scheduled_checkpoint(tmp_path, 3)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    schedule = out.split("schedule: ")[1].split("history:")[0]
    assert schedule.startswith(f"3 phase(s), fingerprint {SCHEDULE.fingerprint()[:16]}")
    assert "  1. head: freeze('body'); until after_epochs(2)" in schedule
    assert (
        "> 2. top: unfreeze('body\\\\.2'), warmup 5 steps; until any_of(plateau('val_loss', "
        "mode='min', patience=2, min_delta=0), after_epochs(4))" in schedule
    )
    assert "  3. all: unfreeze('body'), lr 0.001, fresh optimizer; to the end" in schedule
    assert "now: phase 'top' (2 of 3), 1 epoch and 2 optimizer steps in the phase" in schedule
    assert "warmup: step 2 of 5 done" in schedule
    assert re.search(
        r"until: any_of: plateau\('val_loss'\): best [\d.]+, 0 of 2 epoch\(s\) without "
        r"improvement; after_epochs\(4\): 1 of 4 epochs done",
        schedule,
    )
    assert "planned end of the phase: after epoch 6 at the latest" in schedule
    history = out.split("history:")[1]
    assert history.split()[:2] == ["epoch", "phase"]
    assert [line.split()[1] for line in history.strip().splitlines()[2:]] == ["head", "head", "top"]


def test_inspect_a_finished_schedule(tmp_path):
    finished = mf.Schedule([mf.Phase("only", mf.freeze("body"), until=mf.after_steps(2))])
    text = inspect_checkpoint(scheduled_checkpoint(tmp_path, 2, finished))
    assert "now: finished; the last phase 'only' ended at its until" in text
    assert "planned end" not in text


def test_plot_marks_the_planned_end_of_the_current_phase(tmp_path, monkeypatch):
    import mentor_fn._app.plot as plot_module

    path = scheduled_checkpoint(tmp_path, 3)
    drawn: dict = {}
    real = plot_module.plot_timeline

    def recording(history, output, **options):
        drawn.update(options, phases=[record["phase"] for record in history])
        return real(history, output, **options)

    monkeypatch.setattr(plot_module, "plot_timeline", recording)
    assert main(["plot", str(path), "-o", str(tmp_path / "t.png")]) == 0
    assert drawn["planned_end"] == (6, "top") and drawn["phases"] == ["head", "head", "top"]
    _png_size(tmp_path / "t.png")


# errors: one line on stderr, exit status 2, no traceback --------------------------


@pytest.fixture
def bad_files(tmp_path) -> dict[str, Path]:
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    untrained = tmp_path / "untrained.ckpt"
    DigitsCNN().save(untrained)
    return {
        "text": text,
        "foreign": foreign,
        "untrained": untrained,
        "missing": tmp_path / "nope.ckpt",
    }


ERRORS = {
    "missing file": (["inspect", "{missing}"], "not found"),
    "text file": (["inspect", "{text}"], "{text}"),
    "foreign torch file": (["inspect", "{foreign}"], "not a mentor_fn checkpoint"),
    "plot missing file": (["plot", "{missing}"], "not found"),
    "plot foreign file": (["plot", "{foreign}", "-o", "{tmp}/x.png"], "not a mentor_fn checkpoint"),
    "plot no history": (["plot", "{untrained}", "-o", "{tmp}/x.png"], "no epochs"),
    "plot unknown format": (["plot", "{untrained}", "-o", "{tmp}/x.xyz"], "'.xyz' is not an image"),
    "inspect a directory": (["inspect", "{tmp}"], "is a directory"),
    "no command": ([], "choose a command"),
    "unknown command": (["train"], "invalid choice"),
    "unknown option": (["demo", "--fast"], "unrecognized arguments: --fast"),
    "epochs are the protocol's": (["demo", "--epochs", "3"], "unrecognized arguments: --epochs"),
    "seeds zero": (["demo", "--seeds", "0"], "positive integer"),
    "seeds not a number": (["demo", "--seeds", "many"], "positive integer"),
    "seed not a number": (["demo", "--seed", "x"], "integer"),
    "inspect without a file": (["inspect"], "required: CHECKPOINT"),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_errors_print_one_line_and_exit_2(name, bad_files, tmp_path, capsys):
    argv, expected = ERRORS[name]
    names = {key: str(value) for key, value in bad_files.items()} | {"tmp": str(tmp_path)}
    argv = [argument.format(**names) for argument in argv]
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "error" in lines[0]
    assert expected.format(**names) in lines[0]
    assert "Traceback" not in captured.err


def test_plot_into_a_missing_folder_is_one_line(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        main(["plot", str(checkpoint), "-o", str(tmp_path / "no" / "such" / "x.png")])
    assert raised.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "No such file or directory" in lines[0]


@pytest.mark.parametrize("argv", [["inspect", "/no/such/file.ckpt"], ["demo", "--bogus"]])
def test_errors_in_a_fresh_process(argv):
    completed = _cli(*argv)
    assert completed.returncode == 2
    assert len(completed.stderr.strip().splitlines()) == 1, completed.stderr
    assert "Traceback" not in completed.stderr


@pytest.mark.parametrize(
    ("argv", "called"),
    [
        (["demo"], ("run_demo", {"output": "mentor_fn_demo", "seed": 0, "quiet": False})),
        (
            ["demo", "--seeds", "1", "-q", "-o", "x"],
            ("run_demo", {"output": "x", "seed": 0, "quiet": True}),
        ),
        (
            ["demo", "--seeds", "3", "--seed", "5"],
            ("run_demo_seeds", {"count": 3, "first_seed": 5, "quiet": False}),
        ),
        (
            ["demo", "--seeds", "10", "--quiet"],
            ("run_demo_seeds", {"count": 10, "first_seed": 0, "quiet": True}),
        ),
    ],
)
def test_demo_options_choose_the_run(argv, called, monkeypatch):
    calls = []
    monkeypatch.setattr(
        cli_module, "run_demo", lambda **options: calls.append(("run_demo", options))
    )

    def seeds(count, **options):
        calls.append(("run_demo_seeds", {"count": count, **options}))

    monkeypatch.setattr(cli_module, "run_demo_seeds", seeds)
    assert main(argv) == 0
    assert calls == [called]


def test_the_readme_plots_into_a_folder_git_ignores():
    """The plot commands the README and the docs show write where git looks away."""
    root = Path(__file__).resolve().parent.parent
    pages = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    text = "\n".join(page.read_text() for page in pages)
    commands = re.findall(r"python -m mentor_fn plot \S+ -o ([^\s`]+)", text)
    assert commands
    ignored = [line.strip("/") for line in (root / ".gitignore").read_text().splitlines()]
    for output in commands:
        assert Path(output).parts[0] in ignored, output


def test_help_and_version_exit_0(capsys):
    for argv in (["--help"], ["demo", "--help"], ["--version"]):
        with pytest.raises(SystemExit) as raised:
            main(argv)
        assert raised.value.code == 0
    out = capsys.readouterr().out
    # The version is the installed distribution's (pyproject.toml's), not a copy of it.
    assert f"mentor_fn {importlib.metadata.version('mentor_fn')}" in out


BLOCK_DEMO_DEPENDENCIES = (
    "import sys\n"
    "sys.modules['sklearn'] = sys.modules['matplotlib'] = None  # importing them now fails\n"
    "import mentor_fn\n"
    "from mentor_fn._app.cli import main\n"
    "raise SystemExit(main(sys.argv[1:]))\n"
)


def test_the_library_and_inspect_need_neither_scikit_learn_nor_matplotlib(checkpoint, tmp_path):
    run = [sys.executable, "-c", BLOCK_DEMO_DEPENDENCIES]
    completed = subprocess.run([*run, "inspect", str(checkpoint)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert "effective lr" in completed.stdout
    plot = [*run, "plot", str(checkpoint), "-o", str(tmp_path / "x.png")]
    completed = subprocess.run(plot, capture_output=True, text=True)
    assert completed.returncode == 2
    assert len(completed.stderr.strip().splitlines()) == 1
    assert "pip install matplotlib" in completed.stderr
