"""Selecting layers by pattern: each pattern fully matches layer names (``re.fullmatch``)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from .patterns import compiled, no_match_error

__all__ = ["Patterns", "normalize_patterns", "select_layers"]

Patterns = str | Iterable[str]


def normalize_patterns(patterns: object) -> tuple[str, ...]:
    """``patterns`` as a tuple of str; a bare str is one pattern.

    Raises:
        TypeError: if ``patterns`` is neither a str nor an iterable of str.
    """
    if isinstance(patterns, str):
        return (patterns,)
    if isinstance(patterns, (bytes, bytearray)) or not isinstance(patterns, Iterable):
        raise TypeError(
            f"patterns must be a str or an iterable of str, got {type(patterns).__name__}: "
            f"{patterns!r}"
        )
    result = tuple(patterns)
    for pattern in result:
        if not isinstance(pattern, str):
            raise TypeError(
                f"each pattern must be a str, got {type(pattern).__name__}: {pattern!r}"
            )
    return result


_DEFAULT_FLAGS = re.compile("").flags


def select_layers(layers: Iterable[str], patterns: Patterns) -> tuple[str, ...]:
    """Layers whose name fully matches at least one pattern, in layer order.

    Each pattern is matched with ``re.fullmatch``, so a plain name selects that
    layer exactly and a regex selects several. The result has no duplicates.

    Args:
        layers: layer names, e.g. ``layer_names(model)`` or ``state.layers``.
        patterns: a str (one pattern) or an iterable of str.

    Raises:
        TypeError: a pattern is not a str.
        ValueError: a pattern is not a valid regex, or matches no layer (the
            message suggests the closest layer names).

    Example:
        >>> select_layers(("backbone", "backbone.layer4", "head"), [r"head", r"backbone\\..*"])
        ('backbone.layer4', 'head')
    """
    names = tuple(layers)
    pattern_texts = normalize_patterns(patterns)
    if not pattern_texts:
        return ()
    patterns_compiled = [compiled(text) for text in pattern_texts]

    # One alternation of all patterns is as fast as a single pattern; it is
    # only valid when no pattern has groups or flags that would interfere.
    # Inline flags are checked here, not left to re.error: Python 3.10 only
    # warns about "(?i)" inside the alternation and applies it to every pattern.
    combined: re.Pattern[str] | None = None
    if len(patterns_compiled) > 1 and not any(
        pattern.groups or pattern.flags != _DEFAULT_FLAGS for pattern in patterns_compiled
    ):
        try:
            combined = compiled("|".join(f"(?:{text})" for text in pattern_texts))
        except ValueError:
            combined = None
    if len(patterns_compiled) == 1:
        combined = patterns_compiled[0]

    if combined is not None:
        fullmatch = combined.fullmatch
        selected = tuple(name for name in names if fullmatch(name))
    else:
        matchers = [pattern.fullmatch for pattern in patterns_compiled]
        selected = tuple(name for name in names if any(match(name) for match in matchers))

    # A pattern's matches are a subset of the selection: only that is searched.
    for text, pattern in zip(pattern_texts, patterns_compiled):
        if not any(pattern.fullmatch(name) for name in selected):
            raise no_match_error(text, names)
    return selected
