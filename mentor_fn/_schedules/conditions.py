"""Conditions that end a phase: ``after_epochs``, ``after_steps``, ``plateau``, ``any_of``, ``all_of``.

A condition is an immutable value; what it has seen so far (plateau's best
value, how many epoch ends brought no improvement) is its *progress*, plain
data (None, numbers, tuples) that the schedule's cursor carries. A condition
is pure: ``advance(progress, ...) -> (progress, holds)``; equal progress and
equal inputs give equal results, so a saved cursor resumes exactly.

Everything a condition reads is counted from its phase's start: the epochs and
optimizer steps done in the phase, and the metrics reported at each epoch end.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, SupportsIndex

from .._core.validation import validate_count, validate_real

__all__ = [
    "CONDITION_KINDS",
    "Condition",
    "Progress",
    "after_epochs",
    "after_steps",
    "all_of",
    "any_of",
    "condition_from_dict",
    "plateau",
]

Progress = Any
"""A condition's progress: plain data made of None, bool, int, float and tuples."""
Metrics = Mapping[str, Any] | None

CONDITION_KINDS: dict[str, type[Condition]] = {}


class Condition(abc.ABC):
    """Base of condition values (frozen dataclasses, so they compare and hash).

    A subclass defines :meth:`start` and :meth:`advance`."""

    __slots__ = ()
    kind: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # mentor_fn's own kinds only: a private base is no kind of its own, and
        # a user's subclass has no plain-data form to be read back from.
        if cls.__module__ == __name__ and not cls.__name__.startswith("_"):
            CONDITION_KINDS[cls.kind] = cls

    @abc.abstractmethod
    def start(self) -> Progress:
        """The progress at the start of a phase."""

    @abc.abstractmethod
    def advance(
        self,
        progress: Any,
        *,
        phase_epochs: int,
        phase_steps: int,
        epoch_end: bool,
        metrics: Metrics,
    ) -> tuple[Progress, bool]:
        """The new progress and whether the condition holds, after a step or an epoch end.

        Args:
            progress: the progress so far (from :meth:`start` or an earlier call).
            phase_epochs: epochs done in the phase, this one included.
            phase_steps: optimizer steps done in the phase, these included.
            epoch_end: whether an epoch has just ended (metrics are read only then).
            metrics: the metrics reported at this epoch end.
        """

    def validate_progress(self, progress: Progress) -> None:  # noqa: B027 (a default, not abstract)
        """Raise ValueError unless ``progress`` has the shape this condition's progress has.

        mentor_fn's conditions check it (a resumed cursor must fit its
        schedule); by default any progress passes.
        """

    @property
    def max_epochs(self) -> int | None:
        """The most epochs a phase can last under this condition, when that is knowable."""
        return None

    @property
    def metrics(self) -> tuple[str, ...]:
        """The names of the metrics this condition reads at epoch ends (none by default)."""
        return ()

    def describe(self, progress: Progress, *, phase_epochs: int, phase_steps: int) -> str:
        """Where this condition stands, in words (what ``inspect`` prints).

        Args:
            progress: the condition's progress (from the cursor).
            phase_epochs: epochs done in the phase.
            phase_steps: optimizer steps done in the phase.
        """
        return f"{self!r}: progress {progress!r}"

    def __reduce_ex__(self, protocol: SupportsIndex) -> str | tuple[Any, ...]:
        # mentor_fn's kinds pickle as their plain data, read back by the public
        # condition_from_dict: a pickle names no private module. A user's own
        # condition pickles as Python pickles any object.
        if CONDITION_KINDS.get(getattr(type(self), "kind", "")) is type(self):
            return condition_from_dict, (self.to_dict(),)
        return super().__reduce_ex__(protocol)

    def to_dict(self) -> dict[str, Any]:
        """Plain data with a ``"kind"`` key; TypeError for a user's own condition."""
        raise TypeError(
            f"condition {self!r} ({type(self).__qualname__}) is not serializable: only "
            f"mentor_fn's conditions ({', '.join(sorted(CONDITION_KINDS))}) have a plain-data form"
        )


@dataclass(frozen=True)
class _Count(Condition):
    """Holds once ``n`` epochs (or steps) are done in the phase."""

    kind: ClassVar[str] = "_count"
    n: int

    def start(self) -> Progress:
        return None

    def advance(
        self,
        progress: Any,
        *,
        phase_epochs: int,
        phase_steps: int,
        epoch_end: bool,
        metrics: Metrics,
    ) -> tuple[Progress, bool]:
        return None, (phase_epochs if self.kind == "after_epochs" else phase_steps) >= self.n

    def validate_progress(self, progress: Progress) -> None:
        _expect(progress is None, self, progress)

    def describe(self, progress: Progress, *, phase_epochs: int, phase_steps: int) -> str:
        done, unit = (
            (phase_epochs, "epoch") if self.kind == "after_epochs" else (phase_steps, "step")
        )
        return f"{self.kind}({self.n}): {done} of {self.n} {unit}s done"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "n": self.n}


@dataclass(frozen=True)
class AfterEpochs(_Count):
    """Holds once ``n`` epochs are done in the phase."""

    kind: ClassVar[str] = "after_epochs"

    @property
    def max_epochs(self) -> int | None:
        return self.n


@dataclass(frozen=True)
class AfterSteps(_Count):
    """Holds once ``n`` optimizer steps are done in the phase."""

    kind: ClassVar[str] = "after_steps"


@dataclass(frozen=True)
class Plateau(Condition):
    """Holds once ``patience`` consecutive epoch ends brought no improvement of ``metric``.

    Progress: ``(best value so far or None, epoch ends without improvement)``.
    """

    kind: ClassVar[str] = "plateau"
    metric: str
    mode: str
    patience: int
    min_delta: float

    def start(self) -> Progress:
        return (None, 0)

    def advance(
        self,
        progress: Any,
        *,
        phase_epochs: int,
        phase_steps: int,
        epoch_end: bool,
        metrics: Metrics,
    ) -> tuple[Progress, bool]:
        best, bad_epochs = progress
        if epoch_end:
            value = self._read(metrics)
            if best is None or (
                value < best - self.min_delta
                if self.mode == "min"
                else value > best + self.min_delta
            ):
                best, bad_epochs = value, 0
            else:
                bad_epochs += 1
            progress = (best, bad_epochs)
        return progress, bad_epochs >= self.patience

    def _read(self, metrics: Mapping[str, Any] | None) -> float:
        if metrics is None or self.metric not in metrics:
            reported = ", ".join(map(repr, sorted(metrics or ()))) or "none"
            raise ValueError(
                f"plateau({self.metric!r}) needs the metric {self.metric!r} at every epoch end "
                f"of its phase; the metrics reported are: {reported}"
            )
        raw = metrics[self.metric]
        # A one-element tensor or a numpy scalar converts with float(); a str does not.
        if isinstance(raw, bool) or not hasattr(type(raw), "__float__"):
            raise TypeError(
                f"metric {self.metric!r} must be a number, got {type(raw).__name__}: {raw!r}"
            )
        value = float(raw)
        if math.isnan(value):
            raise ValueError(f"metric {self.metric!r} is NaN: plateau cannot compare it")
        return value

    @property
    def metrics(self) -> tuple[str, ...]:
        return (self.metric,)

    def describe(self, progress: Progress, *, phase_epochs: int, phase_steps: int) -> str:
        best, bad_epochs = progress
        name = f"plateau({self.metric!r})"
        if best is None:
            return f"{name}: no value yet"
        return (
            f"{name}: best {best:.6g}, {bad_epochs} of {self.patience} epoch(s) without improvement"
        )

    def validate_progress(self, progress: Progress) -> None:
        _expect(
            isinstance(progress, tuple)
            and len(progress) == 2
            and (progress[0] is None or (_is_real(progress[0]) and not math.isnan(progress[0])))
            and _is_count(progress[1]),
            self,
            progress,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "metric": self.metric,
            "mode": self.mode,
            "patience": self.patience,
            "min_delta": self.min_delta,
        }


@dataclass(frozen=True)
class _Composite(Condition):
    """Children's progress plus, per child, whether it has held during the phase."""

    kind: ClassVar[str] = "_composite"
    conditions: tuple[Condition, ...]

    def start(self) -> Progress:
        return (tuple(child.start() for child in self.conditions), (False,) * len(self.conditions))

    def advance(
        self,
        progress: Any,
        *,
        phase_epochs: int,
        phase_steps: int,
        epoch_end: bool,
        metrics: Metrics,
    ) -> tuple[Progress, bool]:
        children, held = progress
        new_children, new_held = [], []
        # Every child advances, even one that has held: its progress stays
        # true to the phase, and a plateau child still reads its metric.
        for child, child_progress, child_held in zip(self.conditions, children, held):
            child_progress, holds = child.advance(
                child_progress,
                phase_epochs=phase_epochs,
                phase_steps=phase_steps,
                epoch_end=epoch_end,
                metrics=metrics,
            )
            new_children.append(child_progress)
            new_held.append(child_held or holds)
        return (tuple(new_children), tuple(new_held)), self._combine(new_held)

    @abc.abstractmethod
    def _combine(self, held: list[bool]) -> bool:
        """Whether the composite holds, given which children hold."""

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for child in self.conditions for name in child.metrics))

    def describe(self, progress: Progress, *, phase_epochs: int, phase_steps: int) -> str:
        children, held = progress
        parts = [
            child.describe(child_progress, phase_epochs=phase_epochs, phase_steps=phase_steps)
            + (" (held)" if child_held else "")
            for child, child_progress, child_held in zip(self.conditions, children, held)
        ]
        return f"{self.kind}: " + "; ".join(parts)

    def validate_progress(self, progress: Progress) -> None:
        count = len(self.conditions)
        _expect(
            isinstance(progress, tuple)
            and len(progress) == 2
            and isinstance(progress[0], tuple)
            and isinstance(progress[1], tuple)
            and len(progress[0]) == len(progress[1]) == count
            and all(isinstance(flag, bool) for flag in progress[1]),
            self,
            progress,
        )
        for child, child_progress in zip(self.conditions, progress[0]):
            child.validate_progress(child_progress)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "conditions": [child.to_dict() for child in self.conditions]}


@dataclass(frozen=True)
class AnyOf(_Composite):
    """Holds once any child has held during the phase."""

    kind: ClassVar[str] = "any_of"

    def _combine(self, held: list[bool]) -> bool:
        return any(held)

    @property
    def max_epochs(self) -> int | None:
        known = [c.max_epochs for c in self.conditions if c.max_epochs is not None]
        return min(known) if known else None


@dataclass(frozen=True)
class AllOf(_Composite):
    """Holds once every child has held at some point during the phase."""

    kind: ClassVar[str] = "all_of"

    def _combine(self, held: list[bool]) -> bool:
        return all(held)

    @property
    def max_epochs(self) -> int | None:
        known = [c.max_epochs for c in self.conditions]
        return None if None in known else max(known)  # type: ignore[type-var]


# Constructors ---------------------------------------------------------------------------


def after_epochs(n: int) -> AfterEpochs:
    """Holds once ``n`` (>= 1) epochs are done in the phase, counted from its start.

    Example:
        >>> condition = after_epochs(2)
        >>> condition.advance(condition.start(), phase_epochs=2, phase_steps=40,
        ...                   epoch_end=True, metrics=None)
        (None, True)
    """
    return AfterEpochs(validate_count(n, what="after_epochs: n"))


def after_steps(n: int) -> AfterSteps:
    """Holds once ``n`` (>= 1) optimizer steps are done in the phase, counted from its start."""
    return AfterSteps(validate_count(n, what="after_steps: n"))


def plateau(
    metric: str, *, mode: str = "min", patience: int = 1, min_delta: float = 0.0
) -> Plateau:
    """Holds once ``metric`` has not improved for ``patience`` consecutive epoch ends.

    At each epoch end of the phase the metric is read from the reported
    metrics. It improves when it is better than the best value so far by more
    than ``min_delta`` (lower for ``mode="min"``, higher for ``"max"``); the
    first value of the phase always counts as an improvement.

    Args:
        metric: the name of a reported metric (e.g. ``"val_loss"``).
        mode: ``"min"`` or ``"max"``.
        patience: epoch ends without improvement that end the phase (>= 1).
        min_delta: how much better counts as better (finite, >= 0).

    Raises (at an epoch end):
        ValueError: the metric was not reported (the message lists those that
            were), or it is NaN.

    Example:
        >>> condition, progress = plateau("val_loss"), (None, 0)
        >>> for loss in (0.9, 0.8, 0.85):
        ...     progress, holds = condition.advance(progress, phase_epochs=0, phase_steps=0,
        ...                                         epoch_end=True, metrics={"val_loss": loss})
        >>> progress, holds
        ((0.8, 1), True)
    """
    if not isinstance(metric, str):
        raise TypeError(f"plateau: metric must be a str, got {type(metric).__name__}: {metric!r}")
    if not metric:
        raise ValueError("plateau: metric must be a non-empty str, got ''")
    if not isinstance(mode, str):
        raise TypeError(
            f"plateau: mode must be 'min' or 'max', got {type(mode).__name__}: {mode!r}"
        )
    if mode not in ("min", "max"):
        raise ValueError(f"plateau: mode must be 'min' or 'max', got {mode!r}")
    delta = validate_real(min_delta, what="plateau: min_delta")
    if not (math.isfinite(delta) and delta >= 0):
        raise ValueError(f"plateau: min_delta must be finite and >= 0, got {min_delta!r}")
    return Plateau(metric, mode, validate_count(patience, what="plateau: patience"), delta + 0.0)


def any_of(*conditions: Condition) -> AnyOf:
    """Holds once any of ``conditions`` has held during the phase (at least one)."""
    return AnyOf(_children(conditions, "any_of"))


def all_of(*conditions: Condition) -> AllOf:
    """Holds once every one of ``conditions`` has held at some point during the phase.

    Each child latches: ``all_of(after_steps(100), plateau("val_loss"))`` ends
    the phase at the first point where both have held, even if the metric
    improved again in between.
    """
    return AllOf(_children(conditions, "all_of"))


def condition_from_dict(data: Mapping[str, Any]) -> Condition:
    """The condition ``data`` describes (``condition.to_dict()`` output), validated.

    Raises:
        ValueError: not a mapping, an unknown ``kind``, or a missing, extra or
            malformed field (named in the message).
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"a condition dict must be a mapping, got {type(data).__name__}: {data!r}")
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in CONDITION_KINDS:
        raise ValueError(
            f"malformed condition dict: 'kind' is {kind!r}, expected one of {sorted(CONDITION_KINDS)}"
        )
    cls: Any = CONDITION_KINDS[kind]
    expected = {"kind", *(field.name for field in dataclasses.fields(cls))}
    if set(data) != expected:
        raise ValueError(
            f"malformed {kind!r} condition dict: fields {sorted(data, key=repr)}, "
            f"expected {sorted(expected)}"
        )
    try:
        if issubclass(cls, _Composite):
            children = data["conditions"]
            if not isinstance(children, (list, tuple)):
                raise ValueError(f"'conditions' must be a list, got {children!r}")
            return _FACTORIES[kind](*map(condition_from_dict, children))
        return _FACTORIES[kind](**{name: data[name] for name in expected - {"kind"}})
    except (TypeError, ValueError) as error:
        raise ValueError(f"malformed {kind!r} condition dict: {error}") from None


_FACTORIES: dict[str, Any] = {
    "after_epochs": after_epochs,
    "after_steps": after_steps,
    "plateau": plateau,
    "any_of": any_of,
    "all_of": all_of,
}


# Helpers ----------------------------------------------------------------------------------


def _children(conditions: tuple[object, ...], name: str) -> tuple[Condition, ...]:
    if not conditions:
        raise ValueError(f"{name} needs at least one condition")
    for condition in conditions:
        if not isinstance(condition, Condition):
            raise TypeError(
                f"{name} takes conditions (after_epochs, after_steps, plateau, any_of, all_of), "
                f"got {type(condition).__name__}: {condition!r}"
            )
    return tuple(conditions)  # type: ignore[arg-type]


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _expect(ok: bool, condition: Condition, progress: Progress) -> None:
    if not ok:
        raise ValueError(f"progress {progress!r} does not belong to the condition {condition!r}")
