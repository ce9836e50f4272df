"""Pieces of error messages shared by the layers: short lists of names, layer mismatches."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["check_same_layers", "short_list"]


def check_same_layers(expected: tuple[str, ...], actual: tuple[str, ...], what: str) -> None:
    """Raise ValueError naming the missing and extra layers when they differ."""
    if expected is actual or expected == actual:
        return
    expected_set, actual_set = set(expected), set(actual)
    missing = [name for name in expected if name not in actual_set]
    extra = [name for name in actual if name not in expected_set]
    details = []
    if missing:
        details.append(f"missing from the model: {short_list(missing, quote=True)}")
    if extra:
        details.append(f"not in the state: {short_list(extra, quote=True)}")
    if not details:
        details.append("same layers in a different order")
    raise ValueError(f"{what} has different layers than the state ({'; '.join(details)})")


def short_list(names: Sequence[str], *, limit: int = 8, quote: bool = False) -> str:
    """``names`` joined by commas, the first ``limit`` only, then how many more."""
    shown = ", ".join(map(repr, names[:limit]) if quote else names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
