"""The demo's result tables: one seed's accuracies, and their mean and spread over seeds.

Text only. Every number in them comes from :class:`~mentor_fn._app.demo.protocol.SeedResult`
values; :class:`SeedsSummary` holds exactly what the seeds table shows, so a
table can be read back (the README's copy is checked that way) and printed
again identically.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..render import text_table
from .data import CLASSES
from .protocol import TRANSFER_EPOCHS, SeedResult, Transfer

__all__ = [
    "COLUMNS",
    "ROWS",
    "SeedsSummary",
    "Spread",
    "seed_table",
    "seeds_table",
    "summarize",
]

ROWS = {
    "pretrained": "pretrained, no transfer",
    "curriculum": "lp_ft (the curriculum)",
    "baseline": "plain fine-tuning",
}
"""Row key -> label, in table order."""
COLUMNS = {
    "target": "target val accuracy",
    "source": "source val accuracy",
    "forgetting": "forgetting",
}
"""Column key -> header, in table order."""
FOOTNOTE = (
    f"chance is {1 / CLASSES:.0%}; forgetting = source val accuracy after pretraining "
    "minus after the transfer, in points"
)


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation over seeds, in percent (points for forgetting)."""

    mean: float
    std: float


@dataclass(frozen=True)
class SeedsSummary:
    """What the seeds table shows.

    Attributes:
        first_seed: the first seed; the seeds are consecutive.
        count: how many seeds (>= 2).
        cells: ``(row, column)`` -> spread, for the keys of ROWS and COLUMNS
            (no forgetting for the pretrained row).
        curriculum_ahead_target: seeds where the curriculum's target accuracy
            is higher than the baseline's.
        curriculum_ahead_source: the same for the source accuracy.
    """

    first_seed: int
    count: int
    cells: Mapping[tuple[str, str], Spread]
    curriculum_ahead_target: int
    curriculum_ahead_source: int


def _measures(result: SeedResult) -> dict[tuple[str, str], float]:
    """Every cell of one seed's table, in percent (points for forgetting)."""
    cells = {
        ("pretrained", "target"): result.pretrained.target,
        ("pretrained", "source"): result.pretrained.source,
    }
    runs: dict[str, Transfer] = {"curriculum": result.curriculum, "baseline": result.baseline}
    for row, run in runs.items():
        cells[(row, "target")] = run.after.target
        cells[(row, "source")] = run.after.source
        cells[(row, "forgetting")] = result.forgetting(run)
    return {key: 100 * value for key, value in cells.items()}


def summarize(results: Sequence[SeedResult]) -> SeedsSummary:
    """Mean and spread of each cell over ``results`` (two or more consecutive seeds)."""
    if len(results) < 2:
        raise ValueError(f"a spread needs two seeds or more, got {len(results)}")
    per_seed = [_measures(result) for result in results]
    cells = {
        key: Spread(
            statistics.mean(m[key] for m in per_seed), statistics.stdev(m[key] for m in per_seed)
        )
        for key in per_seed[0]
    }
    return SeedsSummary(
        first_seed=results[0].seed,
        count=len(results),
        cells=cells,
        curriculum_ahead_target=sum(
            r.curriculum.after.target > r.baseline.after.target for r in results
        ),
        curriculum_ahead_source=sum(
            r.curriculum.after.source > r.baseline.after.source for r in results
        ),
    )


def _table(corner: str, cell: Callable[[str, str], str]) -> str:
    body = [[label, *(cell(row, column) for column in COLUMNS)] for row, label in ROWS.items()]
    return text_table([corner, *COLUMNS.values()], body, "lrrr")


def seed_table(result: SeedResult) -> str:
    """One seed's accuracies after the transfer, and what each run forgot."""
    measures = _measures(result)

    def cell(row: str, column: str) -> str:
        if (row, column) not in measures:
            return "-"
        value = measures[(row, column)]
        return f"{value:.1f} pts" if column == "forgetting" else f"{value:.1f}%"

    corner = f"seed {result.seed}, {TRANSFER_EPOCHS} transfer epochs"
    return f"{_table(corner, cell)}\n({FOOTNOTE})"


def seeds_table(summary: SeedsSummary) -> str:
    """The mean ± std table over seeds, and how often the curriculum came out ahead."""

    def cell(row: str, column: str) -> str:
        spread = summary.cells.get((row, column))
        if spread is None:
            return "-"
        unit = " pts" if column == "forgetting" else "%"
        return f"{spread.mean:.1f} ± {spread.std:.1f}{unit}"

    last = summary.first_seed + summary.count - 1
    corner = f"seeds {summary.first_seed}-{last}, mean ± std"
    ahead = (
        f"lp_ft ahead of plain fine-tuning, seed by seed: target accuracy on "
        f"{summary.curriculum_ahead_target} of {summary.count} seeds, source accuracy on "
        f"{summary.curriculum_ahead_source} of {summary.count}"
    )
    return f"{_table(corner, cell)}\n{ahead}\n({FOOTNOTE}; std over seeds)"
