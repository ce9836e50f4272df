"""Layer-name patterns: compiled once, and read as literal names where they are names.

A pattern selects the layers whose name it fully matches (``re.fullmatch``).
Most patterns a user writes are layer names (``"blocks.11"``), whose dots are
regex wildcards matching one character each; ``re.escape(name)`` is a name
too. Such a pattern is read here as a literal text with wildcard positions,
so that a layer index can look its matches up instead of matching the
pattern against every layer name (see ``LayerTree.select``).
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Sequence

__all__ = ["LiteralForm", "closest_names_hint", "compiled", "literal_form", "no_match_error"]

# Characters with a meaning in a regex outside a character class; "." is
# handled apart (a one-character wildcard), "\\" starts an escape.
_OPERATORS = frozenset("^$*+?{}[]|()")

LiteralForm = tuple[str, tuple[int, ...]]
"""``(text, wildcards)``: a pattern that matches exactly the names of ``len(text)``
characters equal to ``text`` everywhere but at the ``wildcards`` positions,
where any character but a newline matches (an unescaped ``.``)."""


@functools.lru_cache(maxsize=4096)
def compiled(pattern: str) -> re.Pattern[str]:
    """``re.compile(pattern)``, once per pattern.

    Raises:
        ValueError: naming the pattern, when it is not a valid regex.
    """
    try:
        return re.compile(pattern)
    except re.error as error:
        raise ValueError(f"invalid regular expression {pattern!r}: {error}") from None


@functools.lru_cache(maxsize=4096)
def literal_form(pattern: str) -> LiteralForm | None:
    """The pattern as a literal text with one-character wildcards, or None.

    None for any pattern that uses a regex operator (``*``, ``|``, ``[``, an
    anchor, a group...) or an escape of a letter or digit (``\\d``, ``\\1``,
    ``\\n``): those are matched as regexes. An escaped punctuation character
    (what ``re.escape`` writes) is that character; an unescaped ``.`` is a
    wildcard.

    Example:
        >>> literal_form("blocks.11")
        ('blocks.11', (6,))
        >>> literal_form(r"blocks\\.11")
        ('blocks.11', ())
        >>> literal_form(r"blocks\\.\\d+") is None
        True
    """
    text: list[str] = []
    wildcards: list[int] = []
    characters = iter(pattern)
    for character in characters:
        if character == "\\":
            escaped = next(characters, None)
            if escaped is None or (escaped.isascii() and escaped.isalnum()):
                return None
            text.append(escaped)
        elif character == ".":
            wildcards.append(len(text))
            text.append(".")
        elif character in _OPERATORS:
            return None
        else:
            text.append(character)
    return "".join(text), tuple(wildcards)


def closest_names_hint(text: str, names: Sequence[str]) -> str:
    """``"; closest layer names: ..."`` for the names most like ``text``, or ``""``."""
    close = difflib.get_close_matches(text, names, n=3, cutoff=0.5)
    return f"; closest layer names: {', '.join(map(repr, close))}" if close else ""


def no_match_error(pattern: str, names: Sequence[str]) -> ValueError:
    """The error for a pattern that matches no layer, with the closest names as a hint."""
    return ValueError(f"pattern {pattern!r} matches no layer{closest_names_hint(pattern, names)}")
