"""Run every benchmark of the project and print all their tables.

Every module ``benchmarks/bench_*.py`` is found (so a new one is included
without touching this file) and its ``main(argv)`` is run in turn, in name
order. Run from the repository root::

    python -m benchmarks                    # the full runs (minutes)
    python -m benchmarks --quick            # small sizes: a smoke test (seconds)
    python -m benchmarks --only curriculum  # the modules whose name contains a word
    python -m benchmarks --save docs/benchmarks   # also write each one's output there

``--save DIR`` writes what each benchmark printed to ``DIR/<name>.txt``: the
README quotes its tables from those files, and a test keeps the two equal.

Exit status: 0 when every benchmark ran and met its targets; 1 when one
crashed or (without ``--quick``) missed a target. With ``--quick`` the
timings are too small to judge, so only crashes count.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import pkgutil
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

PREFIX = "bench_"


def discover() -> list[str]:
    """The names of the benchmark modules (``bench_*``), sorted."""
    folder = Path(__file__).resolve().parent
    return sorted(
        module.name
        for module in pkgutil.iter_modules([str(folder)])
        if module.name.startswith(PREFIX) and not module.ispkg
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run every benchmarks/bench_*.py and print their tables.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and few repeats: checks that everything runs, not the timings",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="WORD",
        help="run only the benchmarks whose module name contains WORD (repeatable)",
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument(
        "--save",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write each benchmark's output to DIR/<name>.txt (the README quotes them)",
    )
    args = parser.parse_args(argv)

    names = discover()
    if not names:
        print(f"no {PREFIX}*.py module found in benchmarks/", file=sys.stderr)
        return 1
    if args.only:
        names = [name for name in names if any(word in name for word in args.only)]
        if not names:
            parser.error(f"no benchmark matches {args.only}; there are: {', '.join(discover())}")
    if args.list:
        print("\n".join(names))
        return 0

    results: list[tuple[str, str, float]] = []
    for name in names:
        print(f"\n{'=' * 78}\n{name}{' (quick)' if args.quick else ''}\n{'=' * 78}", flush=True)
        started = time.perf_counter()
        printed = _Tee(sys.stdout)
        try:
            with contextlib.redirect_stdout(printed):
                module = importlib.import_module(f"{__package__ or 'benchmarks'}.{name}")
                status = module.main(["--quick"] if args.quick else [])
        except Exception:
            traceback.print_exc()
            outcome = "crashed"
        else:
            outcome = "targets met" if status in (0, None) else "target missed"
        sys.stdout.flush()
        results.append((name, outcome, time.perf_counter() - started))
        if args.save is not None and outcome != "crashed":
            args.save.mkdir(parents=True, exist_ok=True)
            (args.save / f"{name}.txt").write_text(printed.text())

    print(f"\n{'=' * 78}\nsummary{' (quick: timings not judged)' if args.quick else ''}")
    for name, outcome, seconds in results:
        print(f"  {name:<28} {outcome:<14} {seconds:7.1f} s")
    crashed = any(outcome == "crashed" for _, outcome, _ in results)
    missed = any(outcome == "target missed" for _, outcome, _ in results)
    return 1 if crashed or (missed and not args.quick) else 0


class _Tee(io.TextIOBase):
    """Writes through to ``stream`` and keeps a copy of the text."""

    def __init__(self, stream: io.TextIOBase | object) -> None:
        self._stream = stream
        self._copy = io.StringIO()

    def write(self, text: str) -> int:
        self._copy.write(text)
        return self._stream.write(text)  # type: ignore[attr-defined,no-any-return]

    def flush(self) -> None:
        self._stream.flush()  # type: ignore[attr-defined]

    def text(self) -> str:
        return self._copy.getvalue()


if __name__ == "__main__":
    raise SystemExit(main())
