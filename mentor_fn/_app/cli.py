"""``python -m mentor_fn``: the demo, and inspecting and plotting checkpoints.

Commands::

    python -m mentor_fn demo [--output DIR] [--seed S] [--seeds N] [--quiet]
    python -m mentor_fn inspect CHECKPOINT
    python -m mentor_fn plot CHECKPOINT [-o timeline.png|.svg|.pdf|...]
    python -m mentor_fn convert TORCH_MENTOR_CHECKPOINT MENTEE_FILE [--trust]

This module parses and dispatches; the text comes from ``mentor_fn._app.render``,
the image from ``mentor_fn._app.plot``. A usage error, or a checkpoint that is
missing, unreadable, foreign or malformed, prints one line on stderr and
exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from .._files.checkpoint import CheckpointError
from .._files.torch_mentor_conversion import convert_torch_mentor_checkpoint
from .demo.data import SHIFT_DEGREES, SHOTS_PER_CLASS
from .demo.run import DEFAULT_OUTPUT, DEFAULT_SEED, run_demo, run_demo_seeds
from .plot import ImageFormatError, default_plot_path, plot_checkpoint
from .render import inspect_text
from .version import VERSION

__all__ = ["main"]

PROG = "python -m mentor_fn"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{self.prog}: error: {message} (see {self.prog} --help)")


def _fail(message: str) -> NoReturn:
    print(message, file=sys.stderr)
    raise SystemExit(2)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _parser() -> _Parser:
    parser = _Parser(
        prog=PROG,
        description="mentor_fn: curriculum learning for PyTorch. Run the demo, inspect any "
        "file mentor_fn writes, plot a checkpoint's history, or convert a torch_mentor "
        "checkpoint.",
    )
    # The installed distribution's version (see mentor_fn._app.version).
    parser.add_argument("--version", action="version", version=f"mentor_fn {VERSION}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="does LP-FT beat fine-tuning with a new head? four arms on 8x8 digits",
        description="Pretrain a small CNN on scikit-learn's 8x8 digits 0-4, put a new, "
        "randomly initialised head on it for digits 5-9, and train that start four ways on "
        f"{SHOTS_PER_CLASS} labelled images per digit: a linear probe, plain fine-tuning, "
        "mentor_fn's lp_ft, and LP-FT written by hand in plain torch. Print each arm's "
        "accuracy on held-out images as trained on (ID) and rotated by "
        f"{SHIFT_DEGREES:g} degrees (OOD). One seed writes a checkpoint and a timeline PNG; "
        "--seeds N prints the mean and spread over N seeds. "
        "Needs scikit-learn and matplotlib (the 'demo' extra).",
    )
    demo.add_argument(
        "--output",
        "-o",
        default=DEFAULT_OUTPUT,
        metavar="DIR",
        help=f"folder for demo.ckpt and timeline.png (default ./{DEFAULT_OUTPUT}; "
        "not used with --seeds N > 1)",
    )
    demo.add_argument(
        "--seed", type=_int, default=DEFAULT_SEED, help="random seed, or the first one (default 0)"
    )
    demo.add_argument(
        "--seeds",
        type=_positive_int,
        default=1,
        metavar="N",
        help="run N seeds (--seed, --seed + 1, ...) and print the mean and std of the "
        "results; writes no files (default 1: one run, with files)",
    )
    demo.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="print only the result table, no epochs, no per-seed lines, no progress bars",
    )

    inspect = commands.add_parser(
        "inspect",
        help="what a file mentor_fn wrote holds: per-layer table, optimizer, schedule, history",
        description="Say what kind of file it is, then print what it holds: for a Mentee "
        "checkpoint the per-layer curriculum state (frozen, coefficient, effective lr, "
        "parameters), the schedule run and the per-epoch history; for a save_checkpoint or "
        "torch.save file, each Curriculum, ScheduleRunner or CurriculumState state dict in it.",
    )
    inspect.add_argument("checkpoint", metavar="CHECKPOINT")

    plot = commands.add_parser(
        "plot",
        help="an image of the curriculum timeline of a checkpoint",
        description="Draw the curriculum timeline of a checkpoint: effective lr per layer "
        "over epochs (frozen spans shown) above the training and validation metrics. "
        "Needs matplotlib.",
    )
    plot.add_argument("checkpoint", metavar="CHECKPOINT")
    plot.add_argument(
        "-o",
        "--output",
        metavar="IMAGE",
        default=None,
        help="output file; its suffix picks the format (.png, .svg, .pdf, .jpg, ...) "
        "(default: CHECKPOINT's name with _timeline.png, beside it)",
    )

    convert = commands.add_parser(
        "convert",
        help="turn a torch_mentor checkpoint into a mentor_fn Mentee file",
        description="Convert a checkpoint written by torch_mentor (0.2.2, 0.2.3, 0.3.0) into a "
        "Mentee file that Mentee.resume_training continues: weights, constructor arguments, "
        "frozen layers and lr coefficients, Adam's moments by parameter name, StepLR, "
        "history, best epoch, epoch. Prints what was carried, changed and not carried. "
        "The source is only read; without --trust nothing in it is run.",
    )
    convert.add_argument("source", metavar="TORCH_MENTOR_CHECKPOINT")
    convert.add_argument("destination", metavar="MENTEE_FILE")
    convert.add_argument(
        "--trust",
        action="store_true",
        help="if the file cannot be read by torch's weights-only unpickler (which runs nothing), "
        "read it by full unpickling, which RUNS CODE NAMED IN THE FILE: only for files whose "
        "origin you trust as you trust your own code",
    )
    return parser


def _converted(source: str, destination: str, *, trust: bool) -> str:
    try:
        report = convert_torch_mentor_checkpoint(source, destination, trust=trust)
    except CheckpointError:
        raise
    except ValueError as error:  # the destination is the source
        _fail(f"{PROG} convert: error: {error}")
    return str(report)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (errors raise SystemExit(2))."""
    parser = _parser()
    arguments = parser.parse_args(argv)
    if arguments.command is None:
        parser.error("choose a command: demo, inspect, plot or convert")
    try:
        if arguments.command == "demo" and arguments.seeds > 1:
            run_demo_seeds(arguments.seeds, first_seed=arguments.seed, quiet=arguments.quiet)
        elif arguments.command == "demo":
            run_demo(output=arguments.output, seed=arguments.seed, quiet=arguments.quiet)
        elif arguments.command == "inspect":
            print(inspect_text(arguments.checkpoint))
        elif arguments.command == "convert":
            print(_converted(arguments.source, arguments.destination, trust=arguments.trust))
        else:
            output = arguments.output or default_plot_path(arguments.checkpoint)
            written = plot_checkpoint(arguments.checkpoint, output)
            print(f"wrote {written}")
    except (CheckpointError, ImageFormatError, ImportError) as error:
        _fail(f"{PROG} {arguments.command}: error: {error}")
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        _fail(f"{PROG} {arguments.command}: error: {where}{error.strerror or error}")
    except KeyboardInterrupt:
        print(f"{PROG} {arguments.command}: interrupted", file=sys.stderr)
        return 130
    return 0
