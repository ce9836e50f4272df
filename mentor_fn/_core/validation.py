"""Checks of plain argument values, one home for all layers: numbers, counts, flags.

Each returns the value in its canonical type or raises before anything
changes: ``TypeError`` for a wrong kind (a ``bool`` is never a number here),
``ValueError`` for a bad value. Messages name the argument (``what``), what was
expected, and what came.
"""

from __future__ import annotations

import math
import numbers

__all__ = [
    "as_float",
    "validate_coefficient",
    "validate_count",
    "validate_flag",
    "validate_fraction",
    "validate_lr",
    "validate_non_negative_int",
    "validate_positive",
    "validate_real",
]


def as_float(value: numbers.Real) -> float:
    """``float(value)``, infinite for an int or Fraction beyond the float range.

    Example:
        >>> as_float(10**400)
        inf
    """
    try:
        return float(value)
    except OverflowError:
        return -math.inf if value < 0 else math.inf


def validate_real(value: object, *, what: str) -> float:
    """``value`` as a float; TypeError for bools and non-numbers (any float passes).

    Example:
        >>> validate_real(True, what="lr_mult")
        Traceback (most recent call last):
        ...
        TypeError: lr_mult must be a real number, got bool: True
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {type(value).__name__}: {value!r}")
    return as_float(value)


def validate_coefficient(coefficient: object, *, what: str = "coefficient") -> float:
    """Return ``coefficient`` as a float; it must be a real, finite number >= 0.

    Raises:
        TypeError: a bool or a non-number.
        ValueError: NaN, infinite or negative.

    Example:
        >>> validate_coefficient(1)
        1.0
        >>> validate_coefficient(-0.0)
        0.0
    """
    value = validate_real(coefficient, what=what)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be finite and >= 0, got {coefficient!r}")
    return value + 0.0  # -0.0 -> 0.0


def validate_lr(lr: object) -> float:
    """Return ``lr`` as a float; it must be real, finite and >= 0 (like a coefficient)."""
    return validate_coefficient(lr, what="lr")


def validate_positive(value: object, *, what: str, why: str = "") -> float:
    """``value`` as a finite float > 0; ``why`` is appended to the ValueError's message."""
    number = validate_real(value, what=what)
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{what} must be finite and > 0, got {value!r}{why}")
    return number


def validate_fraction(value: object, *, what: str) -> float:
    """``value`` as a float in (0, 1].

    Example:
        >>> validate_fraction(0.8, what="decay")
        0.8
    """
    number = validate_real(value, what=what)
    if not (math.isfinite(number) and 0 < number <= 1):
        raise ValueError(f"{what} must be in (0, 1], got {value!r}")
    return number


def validate_count(value: object, *, what: str) -> int:
    """``value`` as an int >= 1; TypeError for bools and non-integers."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an int >= 1, got {type(value).__name__}: {value!r}")
    if value < 1:
        raise ValueError(f"{what} must be an int >= 1, got {value!r}")
    return int(value)


def validate_non_negative_int(value: object, *, what: str) -> int:
    """``value`` as an int >= 0; TypeError for bools and non-integers.

    Example:
        >>> validate_non_negative_int(-1, what="steps")
        Traceback (most recent call last):
        ...
        ValueError: steps must be an int >= 0, got -1
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an int >= 0, got {type(value).__name__}: {value!r}")
    if value < 0:
        raise ValueError(f"{what} must be an int >= 0, got {value!r}")
    return int(value)


def validate_flag(value: object, *, what: str) -> bool:
    """``value`` itself if it is a bool; TypeError otherwise (no truthiness)."""
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be a bool, got {type(value).__name__}: {value!r}")
    return value
