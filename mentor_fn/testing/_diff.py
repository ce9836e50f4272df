"""Bit-for-bit comparison of nested run data, naming the first difference."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["first_difference"]

_SAME_WIDTH_INTEGERS = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def first_difference(expected: Any, actual: Any, path: str = "") -> str | None:
    """Where ``actual`` first differs from ``expected``, or None if bit-for-bit equal.

    Walks mappings (keys compared as sets, then values in ``expected``'s
    order), lists and tuples; tensors must agree in dtype, shape and every
    bit, floats in every bit (``-0.0`` differs from ``0.0``; NaN equals NaN),
    other values by type and ``==``.

    Example:
        >>> first_difference({"a": [1.0, 2.0]}, {"a": [1.0, 2.5]})
        "['a'][1]: expected 2.0, got 2.5"
    """
    if isinstance(expected, torch.Tensor) or isinstance(actual, torch.Tensor):
        return _tensor_difference(expected, actual, path)
    if isinstance(expected, Mapping) and isinstance(actual, Mapping):
        missing = [key for key in expected if key not in actual]
        extra = [key for key in actual if key not in expected]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if extra:
                parts.append(f"unexpected keys {extra}")
            return f"{path or 'top level'}: " + ", ".join(parts)
        for key in expected:
            found = first_difference(expected[key], actual[key], f"{path}[{key!r}]")
            if found is not None:
                return found
        return None
    if isinstance(expected, (list, tuple)) and isinstance(actual, (list, tuple)):
        if type(expected) is not type(actual) or len(expected) != len(actual):
            return (
                f"{path or 'top level'}: expected a {type(expected).__name__} of "
                f"{len(expected)}, got a {type(actual).__name__} of {len(actual)}"
            )
        for index, (a, b) in enumerate(zip(expected, actual)):
            found = first_difference(a, b, f"{path}[{index}]")
            if found is not None:
                return found
        return None
    if type(expected) is not type(actual):
        return f"{path or 'top level'}: expected {expected!r} ({type(expected).__name__}), got {actual!r} ({type(actual).__name__})"
    if isinstance(expected, float):
        same = expected.hex() == actual.hex()
    else:
        same = bool(expected == actual)
    return None if same else f"{path or 'top level'}: expected {expected!r}, got {actual!r}"


def _tensor_difference(expected: Any, actual: Any, path: str) -> str | None:
    where = path or "top level"
    if not (isinstance(expected, torch.Tensor) and isinstance(actual, torch.Tensor)):
        return f"{where}: expected {_short(expected)}, got {_short(actual)}"
    if (
        expected.dtype != actual.dtype
        or expected.shape != actual.shape
        or expected.device != actual.device
    ):
        return f"{where}: expected {_short(expected)}, got {_short(actual)}"
    # The usual case in one comparison: the bits, seen as integers of the same width.
    bits = _SAME_WIDTH_INTEGERS.get(expected.dtype)
    if bits is None:
        if torch.equal(expected, actual):
            return None
    elif torch.equal(expected.detach().view(bits), actual.detach().view(bits)):
        return None
    a = expected.detach().cpu().contiguous().reshape(-1)
    b = actual.detach().cpu().contiguous().reshape(-1)
    if a.is_floating_point():
        differing = (
            a.view(torch.uint8).reshape(a.numel(), -1) != b.view(torch.uint8).reshape(b.numel(), -1)
        ).any(dim=1)
        index = int(differing.nonzero()[0])
        gap = (a.double() - b.double()).abs().nan_to_num(nan=float("inf")).max().item()
        return (
            f"{where}: tensors differ in {int(differing.sum())} of {a.numel()} elements "
            f"(max abs difference {gap:.3g}; first at flat index {index}: "
            f"expected {a[index].item()!r}, got {b[index].item()!r})"
        )
    return (
        f"{where}: tensors differ (expected {expected.tolist()!r}, got {actual.tolist()!r})"
        if a.numel() <= 8
        else f"{where}: tensors differ"
    )


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)} on {value.device}"
    return f"{value!r} ({type(value).__name__})"
