"""Recipes: the usual fine-tuning curricula, as plain functions returning a Schedule.

- :func:`gradual_unfreeze`: ULMFiT's gradual unfreezing with discriminative
  learning rates (Howard & Ruder, 2018).
- :func:`fine_tune`: fastai's ``fine_tune``: head first, then everything with
  coefficients spread geometrically, on a fresh optimizer.
- :func:`lp_ft`: linear probing, then full fine-tuning at a lower lr (Kumar et
  al., 2022).

Every transition in them is a mentor_fn value, so the schedules serialize;
every argument is validated when the recipe is called.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .._core.selection import Patterns, normalize_patterns
from .._core.transitions import (
    Transition,
    chain,
    freeze,
    layerwise_lr_spread,
    set_lr_coefficient,
    unfreeze,
)
from .._core.validation import validate_count, validate_fraction, validate_real
from .conditions import after_epochs
from .schedule import Phase, Schedule

__all__ = ["fine_tune", "gradual_unfreeze", "lp_ft"]

_EVERY_LAYER = ".*"


def gradual_unfreeze(
    groups: Sequence[Patterns], *, epochs_per_stage: int, decay: float | None = None
) -> Schedule:
    """ULMFiT's gradual unfreezing: the head first, then one more group per stage.

    Phase ``"head"`` freezes every layer and unfreezes the last group; each
    following phase, ``"unfreeze <group>"``, unfreezes the next group from the
    top. Every phase but the last lasts ``epochs_per_stage`` epochs; the last
    (everything unfrozen) runs to the end of training.

    Args:
        groups: patterns (a str or a list of str each), listed from the input
            side to the output side; the last is the head.
        epochs_per_stage: epochs per phase (>= 1).
        decay: discriminative coefficients: ``decay ** depth`` for the group
            at ``depth`` (0 for the head, 1 for the group below, ...), set in
            the first phase so that each group learns at its own rate once
            unfrozen. In (0, 1]; None leaves coefficients alone.

    Example:
        >>> schedule = gradual_unfreeze(["embed", "body", "head"], epochs_per_stage=1)
        >>> [phase.name for phase in schedule.phases]
        ['head', 'unfreeze body', 'unfreeze embed']
    """
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence):
        raise TypeError(
            f"groups must be a sequence of patterns (a str or a list of str each), got {groups!r}"
        )
    if not groups:
        raise ValueError("groups must hold at least one group (the head)")
    checked = [_patterns(group, f"groups[{position}]") for position, group in enumerate(groups)]
    for position, group in enumerate(checked):
        if group in checked[:position]:
            raise ValueError(f"groups[{position}] repeats an earlier group: {list(group)}")
    stage_epochs = validate_count(epochs_per_stage, what="epochs_per_stage")
    head = checked[-1]
    first: list[Transition] = [freeze(_EVERY_LAYER), unfreeze(head)]
    if decay is not None:
        decay = validate_fraction(decay, what="decay")
        depths = len(checked) - 1
        first += [
            set_lr_coefficient(decay ** (depths - position), group)
            for position, group in enumerate(checked)
        ]
    transitions = [chain(*first)] + [unfreeze(group) for group in reversed(checked[:-1])]
    names = ["head"] + [f"unfreeze {', '.join(group)}" for group in reversed(checked[:-1])]
    last = len(transitions) - 1
    return Schedule(
        Phase(
            name,
            transition,
            until=None if position == last else after_epochs(stage_epochs),
        )
        for position, (name, transition) in enumerate(zip(names, transitions))
    )


def fine_tune(head: Patterns, *, freeze_epochs: int, epochs: int, lr_mult: float = 100) -> Schedule:
    """fastai's ``fine_tune``: the head alone, then everything with spread coefficients.

    Phase ``"frozen"``: every layer frozen but the head, for ``freeze_epochs``
    epochs. Phase ``"unfrozen"``: every layer trainable, coefficients spread
    geometrically over the layers owning parameters from ``1 / lr_mult`` (the
    first, input side) to 1.0 (the last), on a fresh optimizer and scheduler,
    for ``epochs`` epochs; then the schedule is finished.

    Args:
        head: the head's patterns.
        freeze_epochs: epochs of the frozen phase (>= 1).
        epochs: epochs of the unfrozen phase (>= 1).
        lr_mult: how many times slower the first layer learns than the last (>= 1).
    """
    head_patterns = _patterns(head, "head")
    frozen_epochs = validate_count(freeze_epochs, what="freeze_epochs")
    unfrozen_epochs = validate_count(epochs, what="epochs")
    mult = validate_real(lr_mult, what="lr_mult")
    if not (math.isfinite(mult) and mult >= 1):
        raise ValueError(f"lr_mult must be finite and >= 1, got {lr_mult!r}")
    return Schedule(
        [
            _head_only("frozen", head_patterns, frozen_epochs),
            Phase(
                "unfrozen",
                chain(unfreeze(_EVERY_LAYER), layerwise_lr_spread(1 / mult)),
                until=after_epochs(unfrozen_epochs),
                optimizer="fresh",
            ),
        ]
    )


def lp_ft(head: Patterns, *, probe_epochs: int, lr_ratio: float = 0.1) -> Schedule:
    """Linear probing, then full fine-tuning (LP-FT).

    Phase ``"probe"``: every layer frozen but the head, for ``probe_epochs``
    epochs. Phase ``"fine_tune"``: every layer trainable, on a fresh optimizer
    and scheduler at ``lr_ratio`` times the global lr in effect when it
    starts; it runs to the end of training.

    Args:
        head: the head's patterns.
        probe_epochs: epochs of the probe phase (>= 1).
        lr_ratio: the fine-tuning lr relative to the probe's (finite, > 0).
    """
    head_patterns = _patterns(head, "head")
    epochs = validate_count(probe_epochs, what="probe_epochs")
    ratio = validate_real(lr_ratio, what="lr_ratio")
    if not (math.isfinite(ratio) and ratio > 0):
        raise ValueError(f"lr_ratio must be finite and > 0, got {lr_ratio!r}")
    return Schedule(
        [
            _head_only("probe", head_patterns, epochs),
            Phase(
                "fine_tune",
                unfreeze(_EVERY_LAYER),
                optimizer="fresh",
                lr_scale=ratio,
            ),
        ]
    )


def _head_only(name: str, head: tuple[str, ...], epochs: int) -> Phase:
    """A phase training only the head, for ``epochs`` epochs."""
    return Phase(name, chain(freeze(_EVERY_LAYER), unfreeze(head)), until=after_epochs(epochs))


def _patterns(patterns: object, what: str) -> tuple[str, ...]:
    try:
        checked = normalize_patterns(patterns)
    except TypeError as error:
        raise TypeError(f"{what}: {error}") from None
    if not checked:
        raise ValueError(f"{what} must hold at least one pattern, got {patterns!r}")
    return checked
