"""The index of a layers tuple: positions, ancestry, subtrees, and pattern lookup.

Shared by every state derived from the same layers (one per layers tuple, cached),
so that a transition costs O(rules + written layers), a layer-name pattern is
looked up rather than matched against every name, and the layers a change of
rules can affect are found by walking only their subtrees.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

from .patterns import LiteralForm, closest_names_hint, compiled, literal_form, no_match_error
from .selection import Patterns, normalize_patterns

__all__ = ["MISSING", "LayerTree", "layer_tree"]

MISSING = object()
"""A rule lookup's default: no rule on that layer."""

_SHAPES_KEPT = 16
"""Wildcard shapes (length and wildcard positions) indexed per tree, newest kept."""


class LayerTree:
    """Index of a layers tuple: position and nearest ancestor layer of each name.

    Layers must come after their ancestors (dotted-path ancestry among the
    layers); names must be unique and non-empty.
    """

    __slots__ = ("_children", "_shapes", "index", "layers", "parent")

    def __init__(self, layers: tuple[str, ...]) -> None:
        index: dict[str, int] = {}
        for position, name in enumerate(layers):
            if not isinstance(name, str) or not name:
                raise ValueError(f"layer names must be non-empty str, got {name!r}")
            if name in index:
                raise ValueError(f"duplicate layer name {name!r}")
            index[name] = position
        parent = [-1] * len(layers)
        for position, name in enumerate(layers):
            head, dot, _ = name.rpartition(".")
            while dot:
                found = index.get(head)
                if found is not None:
                    if found > position:
                        raise ValueError(f"layer {head!r} must come before its descendant {name!r}")
                    parent[position] = found
                    break
                head, dot, _ = head.rpartition(".")
        self.layers = layers
        self.index = index
        self.parent = parent
        self._children: list[list[int]] | None = None
        self._shapes: dict[tuple[int, tuple[int, ...]], dict[str, list[int]]] = {}

    def position(self, layer: str) -> int:
        found = self.index.get(layer)
        if found is None:
            raise ValueError(f"unknown layer {layer!r}{closest_names_hint(layer, self.layers)}")
        return found

    # Resolution ------------------------------------------------------------------------

    def lookup(self, rules: Mapping[str, Any], position: int, default: Any) -> Any:
        """Value of the nearest ancestor-or-self rule of the layer at ``position``."""
        layers, parent = self.layers, self.parent
        while position >= 0:
            value = rules.get(layers[position], MISSING)
            if value is not MISSING:
                return value
            position = parent[position]
        return default

    def resolve_all(self, rules: Mapping[str, Any], default: Any) -> list[Any]:
        """Resolved value of every layer, in one pass (ancestors precede descendants)."""
        if not rules:
            return [default] * len(self.layers)
        resolved: list[Any] = []
        parent = self.parent
        for position, name in enumerate(self.layers):
            value = rules.get(name, MISSING)
            if value is MISSING:
                above = parent[position]
                value = resolved[above] if above >= 0 else default
            resolved.append(value)
        return resolved

    def resolve_at(
        self, rules: Mapping[str, Any], positions: Iterable[int], default: Any
    ) -> list[Any]:
        """Resolved values of the layers at ``positions`` (ascending), in that order.

        A layer whose parent was resolved just before inherits from it; any
        other walks up to its nearest rule. For whole subtrees that is one
        lookup per subtree root, then one dict read per layer.
        """
        layers, parent = self.layers, self.parent
        known: dict[int, Any] = {}
        resolved = []
        for position in positions:
            value = rules.get(layers[position], MISSING)
            if value is MISSING:
                above = parent[position]
                value = known[above] if above in known else self.lookup(rules, above, default)
            known[position] = value
            resolved.append(value)
        return resolved

    def has_ancestor_in(self, position: int, positions: set[int]) -> bool:
        position = self.parent[position]
        while position >= 0:
            if position in positions:
                return True
            position = self.parent[position]
        return False

    # Writing rules ---------------------------------------------------------------------

    def write(
        self, rules: Mapping[str, Any], values: Mapping[int, Any], default: Any
    ) -> dict[str, Any]:
        """Rules after writing ``values`` (position -> value) on whole subtrees.

        Every rule strictly below a written layer is removed; then each written
        rule equal to what its layer inherits is dropped (canonical form).
        Rules elsewhere keep their inherited value, so they stay canonical.
        """
        written = set(values)
        result = {
            name: value
            for name, value in rules.items()
            if not self.has_ancestor_in(self.index[name], written)
        }
        in_order = sorted(written)
        for position in in_order:
            result[self.layers[position]] = values[position]
        for position in in_order:
            name = self.layers[position]
            inherited = self.lookup(result, self.parent[position], default)
            if inherited == result[name]:
                del result[name]
        return self.ordered(result)

    def canonical(self, rules: Mapping[str, Any], default: Any) -> dict[str, Any]:
        """Rules in canonical form and layer order (drop rules equal to inherited)."""
        result: dict[str, Any] = {}
        for position in sorted(self.position(name) for name in rules):
            name = self.layers[position]
            inherited = self.lookup(result, self.parent[position], default)
            if rules[name] != inherited:
                result[name] = rules[name]
        return result

    def ordered(self, rules: Mapping[str, Any]) -> dict[str, Any]:
        return {name: rules[name] for name in sorted(rules, key=self.index.__getitem__)}

    # Subtrees --------------------------------------------------------------------------

    @property
    def children(self) -> list[list[int]]:
        """The positions of each layer's child layers (computed once per tree)."""
        if self._children is None:
            children: list[list[int]] = [[] for _ in self.layers]
            for position, above in enumerate(self.parent):
                if above >= 0:
                    children[above].append(position)
            self._children = children
        return self._children

    def subtrees(self, roots: Iterable[int]) -> list[int]:
        """Every layer at or below one of ``roots``, ascending, each once."""
        children = self.children
        found: set[int] = set()
        stack = list(roots)
        while stack:
            position = stack.pop()
            if position not in found:
                found.add(position)
                stack.extend(children[position])
        return sorted(found)

    # Selection -------------------------------------------------------------------------

    def select(self, patterns: Patterns) -> list[int]:
        """Positions of the layers ``select_layers(self.layers, patterns)`` selects, ascending.

        Same result and errors; a pattern that reads as a layer name
        (:func:`~mentor_fn._core.patterns.literal_form`) is looked up, any other
        regex is matched against every name.

        Raises:
            TypeError: a pattern is not a str.
            ValueError: an invalid regex, or a pattern that matches no layer.
        """
        texts = normalize_patterns(patterns)
        # Every regex is compiled before any is matched: the first invalid one
        # is the error, as in select_layers.
        forms = [(text, literal_form(text)) for text in texts]
        for text, form in forms:
            if form is None:
                compiled(text)
        selected: set[int] = set()
        for text, form in forms:
            found = self._literal_matches(text, form) if form is not None else self._scan(text)
            if not found:
                raise no_match_error(text, self.layers)
            selected.update(found)
        return sorted(selected)

    def _scan(self, pattern: str) -> list[int]:
        fullmatch = compiled(pattern).fullmatch
        return [position for position, name in enumerate(self.layers) if fullmatch(name)]

    def _literal_matches(self, pattern: str, form: LiteralForm) -> list[int]:
        text, wildcards = form
        if not wildcards:
            found = self.index.get(text)
            return [] if found is None else [found]
        shape = self._shape(len(text), wildcards)
        candidates = shape.get(_masked(text, wildcards), ())
        # Equal but at the wildcards: only a newline there would not match.
        fullmatch = compiled(pattern).fullmatch
        return [position for position in candidates if fullmatch(self.layers[position])]

    def _shape(self, length: int, wildcards: tuple[int, ...]) -> dict[str, list[int]]:
        """Names of ``length`` characters by their text outside ``wildcards`` (built once)."""
        key = (length, wildcards)
        shape = self._shapes.get(key)
        if shape is None:
            shape = {}
            for position, name in enumerate(self.layers):
                if len(name) == length:
                    shape.setdefault(_masked(name, wildcards), []).append(position)
            if len(self._shapes) >= _SHAPES_KEPT:
                del self._shapes[next(iter(self._shapes))]
            self._shapes[key] = shape
        return shape


def _masked(name: str, wildcards: tuple[int, ...]) -> str:
    """``name`` without the characters at ``wildcards`` (ascending positions)."""
    pieces = []
    start = 0
    for position in wildcards:
        pieces.append(name[start:position])
        start = position + 1
    pieces.append(name[start:])
    return "".join(pieces)


@functools.lru_cache(maxsize=16)
def layer_tree(layers: tuple[str, ...]) -> LayerTree:
    """The (cached) tree of ``layers``."""
    return LayerTree(layers)
