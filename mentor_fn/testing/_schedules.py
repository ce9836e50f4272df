"""``schedules(model)``: random schedules of phases over one model, and their conditions."""

from __future__ import annotations

from collections.abc import Sequence

import hypothesis.strategies as st
from torch import nn

from .._schedules.conditions import Condition, after_epochs, after_steps, all_of, any_of, plateau
from .._schedules.schedule import Phase, Schedule
from ._strategies import transitions

__all__ = ["conditions", "schedules"]


def conditions(*, metrics: Sequence[str] = ("val_loss",)) -> st.SearchStrategy[Condition]:
    """Conditions ending a phase: ``after_epochs``, ``after_steps``, ``plateau`` on
    one of ``metrics`` (none when empty), and ``any_of`` / ``all_of`` of two or
    three of them.

    Example:
        >>> from hypothesis import given
        >>> from mentor_fn._schedules.conditions import condition_from_dict
        >>> @given(conditions())
        ... def test_plain_data(condition):
        ...     assert condition_from_dict(condition.to_dict()) == condition
        >>> test_plain_data()
    """
    leaves: list[st.SearchStrategy[Condition]] = [
        st.builds(after_epochs, st.integers(1, 3)),
        st.builds(after_steps, st.integers(1, 20)),
    ]
    if metrics:
        leaves.append(
            st.builds(
                plateau,
                st.sampled_from(tuple(metrics)),
                mode=st.sampled_from(("min", "max")),
                patience=st.integers(1, 2),
                min_delta=st.sampled_from((0.0, 0.01)),
            )
        )
    leaf = st.one_of(leaves)
    several = st.lists(leaf, min_size=2, max_size=3)
    return st.one_of(
        leaf,
        several.map(lambda parts: any_of(*parts)),
        several.map(lambda parts: all_of(*parts)),
    )


@st.composite
def schedules(
    draw: st.DrawFn,
    model: nn.Module,
    *,
    max_phases: int = 4,
    metrics: Sequence[str] = ("val_loss",),
) -> Schedule:
    """Random valid schedules for ``model``: 1 to ``max_phases`` phases.

    Each phase applies a transition from :func:`transitions` (its patterns
    match the model, so ``schedule.check(model)`` passes), ends on a
    condition from :func:`conditions` (the last one may run to the end of
    training), and draws the phase options: a new global ``lr`` or an
    ``lr_scale``, ``optimizer="keep"`` or ``"fresh"``, ``warmup_steps``.

    Args:
        model: the model whose layers the transitions' patterns match.
        max_phases: the most phases drawn.
        metrics: the metrics ``plateau`` conditions watch (the run must report them).

    Example:
        >>> from hypothesis import given
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
        >>> @given(schedules(model))
        ... def test_round_trips(schedule):
        ...     schedule.check(model)
        ...     assert Schedule.from_dict(schedule.to_dict()) == schedule
        >>> test_round_trips()
    """
    ending = conditions(metrics=metrics)
    changes = transitions(model)
    count = draw(st.integers(1, max_phases))
    phases = []
    for index in range(count):
        last = index == count - 1
        until = draw(st.none() | ending) if last else draw(ending)
        lr_option = draw(st.sampled_from(("none", "none", "lr", "lr_scale")))
        phases.append(
            Phase(
                f"phase{index}",
                draw(changes),
                until=until,
                lr=draw(st.sampled_from((1e-3, 0.01, 0.1))) if lr_option == "lr" else None,
                lr_scale=draw(st.sampled_from((0.5, 2.0))) if lr_option == "lr_scale" else None,
                optimizer=draw(st.sampled_from(("keep", "keep", "fresh"))),
                warmup_steps=draw(st.sampled_from((0, 0, 1, 3))),
            )
        )
    return Schedule(phases)
