"""The demo's result tables: one seed's arms, one line per seed, and the mean and spread over seeds.

Text only. Every number in them comes from
:class:`~mentor_fn._app.demo.experiment.SeedResult` values; :class:`SeedsSummary`
holds exactly what the seeds table shows, so a printed table can be read back
(docs/demo.md's copy is checked that way) and printed again identically.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..render import text_table
from .arms import ArmResult
from .data import CLASSES, SHIFT_DEGREES
from .experiment import SeedResult
from .protocol import ARMS, TRANSFER_EPOCHS

__all__ = [
    "COLUMNS",
    "Outcomes",
    "SeedsSummary",
    "Spread",
    "seed_line",
    "seed_lines_header",
    "seed_table",
    "seeds_table",
    "summarize",
]

COLUMNS = {
    "id": "ID accuracy",
    "ood": "OOD accuracy",
    "change_id": "feature change, ID",
    "change_ood": "feature change, OOD",
    "backbone": "backbone weights changed",
}
"""Column key -> header, in table order."""
MEASURED = ("id", "ood", "change_id", "change_ood")
"""The columns that hold a percentage (mean ± std over seeds)."""
FOOTNOTE = (
    f"ID: the held-out images of digits 5-9, upright as trained on; OOD: the same images "
    f"rotated by {SHIFT_DEGREES} degrees; chance is {1 / CLASSES:.0%}; feature change: how far "
    "the features the head sees moved from the pretrained ones, relative to them"
)
COMPARED = ("lp_ft", "fine_tune")
"""The comparison the demo asks about: lp_ft against fine-tuning, seed by seed."""


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation over seeds, in percent."""

    mean: float
    std: float


@dataclass(frozen=True)
class Outcomes:
    """Seeds on which lp_ft's accuracy was above, equal to, below fine-tuning's."""

    ahead: int
    tied: int
    behind: int


@dataclass(frozen=True)
class SeedsSummary:
    """What the seeds table shows.

    Attributes:
        first_seed: the first seed; the seeds are consecutive.
        count: how many seeds (>= 2).
        cells: ``(arm, column)`` -> spread, for the keys of ARMS and MEASURED.
        backbone_changed: arm -> on how many seeds its backbone changed at all.
        pretrained_upright: the pretrained network on its own validation images.
        pretrained_shifted: the same under the shift.
        versus: ``"id"`` and ``"ood"`` -> lp_ft against fine-tuning, seed by seed.
    """

    first_seed: int
    count: int
    cells: Mapping[tuple[str, str], Spread]
    backbone_changed: Mapping[str, int]
    pretrained_upright: Spread
    pretrained_shifted: Spread
    versus: Mapping[str, Outcomes]


def _measures(arm: ArmResult) -> dict[str, float]:
    """One arm's percentage columns."""
    return {
        "id": 100 * arm.id_accuracy,
        "ood": 100 * arm.ood_accuracy,
        "change_id": 100 * arm.feature_change_id,
        "change_ood": 100 * arm.feature_change_ood,
    }


def _spread(values: Sequence[float]) -> Spread:
    return Spread(statistics.mean(values), statistics.stdev(values))


def _outcomes(pairs: Sequence[tuple[float, float]]) -> Outcomes:
    return Outcomes(
        ahead=sum(mine > theirs for mine, theirs in pairs),
        tied=sum(mine == theirs for mine, theirs in pairs),
        behind=sum(mine < theirs for mine, theirs in pairs),
    )


def summarize(results: Sequence[SeedResult]) -> SeedsSummary:
    """Mean and spread of each cell over ``results`` (two or more consecutive seeds)."""
    if len(results) < 2:
        raise ValueError(f"a spread needs two seeds or more, got {len(results)}")
    per_seed = [{arm: _measures(r.arms[arm]) for arm in ARMS} for r in results]
    mine, theirs = COMPARED
    return SeedsSummary(
        first_seed=results[0].seed,
        count=len(results),
        cells={
            (arm, column): _spread([m[arm][column] for m in per_seed])
            for arm in ARMS
            for column in MEASURED
        },
        backbone_changed={
            arm: sum(r.arms[arm].backbone_changed > 0 for r in results) for arm in ARMS
        },
        pretrained_upright=_spread([100 * r.pretrained.upright for r in results]),
        pretrained_shifted=_spread([100 * r.pretrained.shifted for r in results]),
        versus={
            column: _outcomes([(m[mine][column], m[theirs][column]) for m in per_seed])
            for column in ("id", "ood")
        },
    )


def _table(corner: str, cell: Callable[[str, str], str]) -> str:
    body = [[label, *(cell(arm, column) for column in COLUMNS)] for arm, label in ARMS.items()]
    return text_table([corner, *COLUMNS.values()], body, "lrrrrr")


def seed_table(result: SeedResult) -> str:
    """One seed's arms: accuracies, feature changes, and how much of each backbone moved."""

    def cell(arm: str, column: str) -> str:
        measured = result.arms[arm]
        if column == "backbone":
            return f"{measured.backbone_changed:,} of {result.backbone_weights:,}"
        return f"{_measures(measured)[column]:.1f}%"

    corner = f"seed {result.seed}, {TRANSFER_EPOCHS} transfer epochs"
    return f"{_table(corner, cell)}\n({FOOTNOTE})"


def seed_lines_header() -> str:
    """The line above :func:`seed_line`'s: which arm each value is."""
    return f"per seed, arms in this order: {', '.join(ARMS.values())}"


def seed_line(result: SeedResult) -> str:
    """One seed's accuracies, in and out of distribution, one value per arm."""
    values = {
        column: " ".join(f"{_measures(result.arms[arm])[column]:5.1f}%" for arm in ARMS)
        for column in ("id", "ood")
    }
    return f"seed {result.seed:>2}: ID {values['id']} | OOD {values['ood']}"


def seeds_table(summary: SeedsSummary) -> str:
    """The mean ± std table over seeds, the pretrained network, and lp_ft against fine-tuning."""

    def cell(arm: str, column: str) -> str:
        if column == "backbone":
            return f"on {summary.backbone_changed[arm]} of {summary.count} seeds"
        spread = summary.cells[(arm, column)]
        return f"{spread.mean:.1f} ± {spread.std:.1f}%"

    last = summary.first_seed + summary.count - 1
    corner = f"seeds {summary.first_seed}-{last}, mean ± std"
    up, shifted = summary.pretrained_upright, summary.pretrained_shifted
    pretrained = (
        f"pretrained network on its own validation images (digits 0-4): "
        f"{up.mean:.1f} ± {up.std:.1f}% upright, {shifted.mean:.1f} ± {shifted.std:.1f}% "
        f"rotated by {SHIFT_DEGREES} degrees"
    )
    versus = "; ".join(
        f"{name} accuracy ahead on {o.ahead}, tied on {o.tied}, behind on {o.behind}"
        for name, o in (("ID", summary.versus["id"]), ("OOD", summary.versus["ood"]))
    )
    comparison = (
        f"{ARMS['lp_ft']} against {ARMS['fine_tune']}, seed by seed: {versus} "
        f"(of {summary.count} seeds)"
    )
    return f"{_table(corner, cell)}\n{pretrained}\n{comparison}\n({FOOTNOTE}; std over seeds)"
