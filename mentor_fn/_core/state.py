"""CurriculumState: the immutable source of truth of a curriculum.

Per layer, two orthogonal controls: whether it is frozen and its learning-rate
coefficient. Both are stored as sparse rules (layer -> value) resolved on the
nearest ancestor-or-self, always in canonical form so that equality of states
is equality of what they resolve to.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import optree
from torch import nn

from .layer_tree import MISSING, LayerTree, layer_tree
from .model_walk import ModelLayers, walk_model
from .selection import Patterns
from .validation import validate_coefficient, validate_flag

__all__ = [
    "FORMAT_VERSION",
    "NORM_POLICIES",
    "CurriculumState",
    "validate_norm_policy",
]

FORMAT_VERSION = 2
"""Version 2 added ``norm_layers`` and ``norm_policy``; version 1 dicts still load."""
NORM_POLICIES = ("stats", "eval", "train")
"""What happens to normalization layers inside frozen layers (see ``set_norm_policy``)."""
_FORMAT_NAME = "mentor_fn.CurriculumState"
PYTREE_NAMESPACE = "mentor_fn"


@dataclass(frozen=True, init=False, eq=False, repr=False)
class CurriculumState:
    """Which layers are frozen and how fast each learns: an immutable value.

    ``frozen`` and ``coefficients`` are sparse rules (layer -> value); a layer
    resolves to the rule on its nearest ancestor-or-self (dotted-path ancestry
    among ``layers``), by default not frozen and coefficient 1.0. A write on a
    layer applies to its whole subtree (rules below it are removed), so the
    last write on a subtree wins. Rules equal to what their layer would
    inherit are dropped, so two states are equal iff they resolve identically.

    Args:
        layers: layer names, ancestors before descendants (``layer_names(model)``).
        frozen: initial frozen rules.
        coefficients: initial coefficient rules (real, finite, >= 0).
        parameter_owners: layers that own parameters directly; ``None`` means
            all of them. :meth:`from_model` fills it from the model.
        norm_layers: layers that are normalization modules (by type:
            BatchNorm, InstanceNorm, LayerNorm, GroupNorm, RMSNorm, ...).
            :meth:`from_model` fills it; ``None`` means none.
        norm_policy: ``"stats"`` (default), ``"eval"`` or ``"train"``: see
            :meth:`set_norm_policy`.

    Example:
        >>> state = CurriculumState(("backbone", "backbone.layer4", "head"))
        >>> state = state.freeze("backbone").unfreeze("backbone.layer4")
        >>> [state.is_frozen(layer) for layer in state.layers]
        [True, False, False]
        >>> state.set_lr_coefficient(0.1, "backbone").coefficient("backbone.layer4")
        0.1
    """

    layers: tuple[str, ...]
    parameter_owners: frozenset[str]
    norm_layers: frozenset[str]
    norm_policy: str
    _frozen_rules: dict[str, bool] = field(repr=False)
    _coefficient_rules: dict[str, float] = field(repr=False)
    _tree: LayerTree = field(repr=False)
    _cache: dict[str, Any] = field(repr=False)

    def __init__(
        self,
        layers: Iterable[str],
        *,
        frozen: Mapping[str, bool] | None = None,
        coefficients: Mapping[str, float] | None = None,
        parameter_owners: Iterable[str] | None = None,
        norm_layers: Iterable[str] | None = None,
        norm_policy: str = "stats",
    ) -> None:
        if isinstance(layers, str) or not isinstance(layers, Iterable):
            raise TypeError(f"layers must be an iterable of str, got {layers!r}")
        layer_tuple = tuple(layers)
        for name in layer_tuple:
            if not isinstance(name, str):
                raise TypeError(f"layer names must be str, got {type(name).__name__}: {name!r}")
        tree = layer_tree(layer_tuple)
        frozen_rules = _checked_rules(frozen, tree, "frozen", validate_flag)
        coefficient_rules = _checked_rules(coefficients, tree, "coefficients", validate_coefficient)
        owners = (
            frozenset(layer_tuple)
            if parameter_owners is None
            else _checked_layer_set(parameter_owners, tree, "parameter_owners")
        )
        norms = (
            frozenset()
            if norm_layers is None
            else _checked_layer_set(norm_layers, tree, "norm_layers")
        )
        self._set(
            tree,
            owners,
            norms,
            validate_norm_policy(norm_policy),
            tree.canonical(frozen_rules, False),
            tree.canonical(coefficient_rules, 1.0),
        )

    def _set(
        self,
        tree: LayerTree,
        owners: frozenset[str],
        norm_layers: frozenset[str],
        norm_policy: str,
        frozen_rules: dict[str, bool],
        coefficient_rules: dict[str, float],
    ) -> None:
        object.__setattr__(self, "layers", tree.layers)
        object.__setattr__(self, "parameter_owners", owners)
        object.__setattr__(self, "norm_layers", norm_layers)
        object.__setattr__(self, "norm_policy", norm_policy)
        object.__setattr__(self, "_frozen_rules", frozen_rules)
        object.__setattr__(self, "_coefficient_rules", coefficient_rules)
        object.__setattr__(self, "_tree", tree)
        object.__setattr__(self, "_cache", {})

    def _replace(
        self,
        *,
        frozen_rules: dict[str, bool] | None = None,
        coefficient_rules: dict[str, float] | None = None,
        norm_policy: str | None = None,
        parameter_owners: frozenset[str] | None = None,
        norm_layers: frozenset[str] | None = None,
    ) -> CurriculumState:
        """This state with the given parts replaced, already checked and canonical."""
        new = object.__new__(CurriculumState)
        new._set(
            self._tree,
            self.parameter_owners if parameter_owners is None else parameter_owners,
            self.norm_layers if norm_layers is None else norm_layers,
            self.norm_policy if norm_policy is None else norm_policy,
            self._frozen_rules if frozen_rules is None else frozen_rules,
            self._coefficient_rules if coefficient_rules is None else coefficient_rules,
        )
        return new

    @classmethod
    def from_model(cls, model: nn.Module) -> CurriculumState:
        """A state with every layer of ``model`` trainable at coefficient 1.0.

        It records the model's layer kinds: which layers own parameters and
        which are normalization modules (for the ``"train"`` norm policy).
        """
        walked = walk_model(model)
        return cls(
            walked.layers,
            parameter_owners=walked.parameter_owners,
            norm_layers=walked.norm_layers,
        )

    def with_layer_kinds(
        self, *, parameter_owners: Iterable[str], norm_layers: Iterable[str] = ()
    ) -> CurriculumState:
        """The same rules and norm policy on a model whose layer kinds are these.

        ``parameter_owners`` and ``norm_layers`` are facts about a model (which
        layers own parameters, which are normalization modules), recorded so
        that planning stays pure; a wrapper that walked the model sets them.
        Returns ``self`` when nothing differs.
        """
        if parameter_owners is self.parameter_owners and norm_layers is self.norm_layers:
            return self  # a state's own kinds, passed on: nothing to check
        owners = _checked_layer_set(parameter_owners, self._tree, "parameter_owners")
        norms = _checked_layer_set(norm_layers, self._tree, "norm_layers")
        return self._with_checked_kinds(owners, norms)

    def with_kinds_of(self, walked: ModelLayers) -> CurriculumState:
        """:meth:`with_layer_kinds` with the layer kinds of a model walked with these layers.

        The walk's layer names are the state's (checked as a whole), so its
        sets of owners and norm layers are not checked name by name.

        Raises:
            ValueError: the walked model's layers are not the state's.
        """
        if walked.layers is not self.layers and walked.layers != self.layers:
            raise ValueError("the walked model's layers are not the state's")
        owners, norms = walked.parameter_owners, walked.norm_layers
        return self._with_checked_kinds(owners, norms)

    def _with_checked_kinds(self, owners: frozenset[str], norms: frozenset[str]) -> CurriculumState:
        """This state with checked layer kinds (``self`` when they are its own)."""
        if owners == self.parameter_owners and norms == self.norm_layers:
            return self
        return self._replace(parameter_owners=owners, norm_layers=norms)

    # Reading -----------------------------------------------------------------

    @property
    def frozen(self) -> Mapping[str, bool]:
        """The frozen rules (read-only, layer order)."""
        return MappingProxyType(self._frozen_rules)

    @property
    def coefficients(self) -> Mapping[str, float]:
        """The coefficient rules (read-only, layer order)."""
        return MappingProxyType(self._coefficient_rules)

    def is_frozen(self, layer: str) -> bool:
        """Whether ``layer`` is frozen (its nearest ancestor-or-self rule)."""
        return bool(self._tree.lookup(self._frozen_rules, self._tree.position(layer), False))

    def coefficient(self, layer: str) -> float:
        """The lr coefficient of ``layer`` (its nearest ancestor-or-self rule)."""
        return float(self._tree.lookup(self._coefficient_rules, self._tree.position(layer), 1.0))

    def resolved_frozen(self) -> tuple[bool, ...]:
        """The frozen flag of every layer, aligned with ``layers``."""
        cached = self._cache.get("frozen")
        if cached is None:
            cached = tuple(self._tree.resolve_all(self._frozen_rules, False))
            self._cache["frozen"] = cached
        return cached

    def resolved_trainable(self) -> tuple[bool, ...]:
        """Whether each layer's parameters train, aligned with ``layers``.

        A layer trains when it is not frozen, or, under the ``"train"`` norm
        policy, when it is a normalization layer (its affine parameters
        train inside a frozen subtree, with the layer's coefficient).
        """
        cached = self._cache.get("trainable")
        if cached is None:
            frozen = self.resolved_frozen()
            if not self._frozen_rules:
                cached = (True,) * len(frozen)
            else:
                cached = tuple(self._trains(self.layers, frozen))
            self._cache["trainable"] = cached
        return cached

    def resolved_coefficients(self) -> tuple[float, ...]:
        """The coefficient of every layer, aligned with ``layers``."""
        cached = self._cache.get("coefficients")
        if cached is None:
            cached = tuple(self._tree.resolve_all(self._coefficient_rules, 1.0))
            self._cache["coefficients"] = cached
        return cached

    def changed_positions(self, old: CurriculumState) -> list[int] | None:
        """Positions (ascending) of the layers that may resolve differently than in ``old``.

        The subtrees of the rules that differ between the two states: every
        layer whose frozen flag or coefficient differs is among them (a few
        may resolve alike). O(rules + the size of those subtrees). None when
        the states differ in more than their rules (layers, layer kinds or
        norm policy): then any layer may.
        """
        if not isinstance(old, CurriculumState):
            raise TypeError(f"expected a CurriculumState, got {type(old).__name__}")
        if (
            (self._tree is not old._tree and self.layers != old.layers)
            or self.norm_policy != old.norm_policy
            or not _same_set(self.parameter_owners, old.parameter_owners)
            or not _same_set(self.norm_layers, old.norm_layers)
        ):
            return None
        roots = _differing(old._frozen_rules, self._frozen_rules)
        roots += _differing(old._coefficient_rules, self._coefficient_rules)
        if not roots:
            return []
        index = self._tree.index
        return self._tree.subtrees(index[name] for name in roots)

    def resolve_at(self, positions: list[int]) -> tuple[list[bool], list[bool], list[float]]:
        """Frozen flags, whether each trains, and coefficients at ``positions`` (ascending).

        Each list is aligned with ``positions``; "trains" is
        :meth:`resolved_trainable`'s. Costs one lookup per subtree root among
        them, then a dict read per layer.
        """
        frozen = self._tree.resolve_at(self._frozen_rules, positions, False)
        coefficients = self._tree.resolve_at(self._coefficient_rules, positions, 1.0)
        layers = self.layers
        trainable = list(self._trains((layers[position] for position in positions), frozen))
        return frozen, trainable, coefficients

    def _trains(self, layers: Iterable[str], frozen: Iterable[bool]) -> Iterable[bool]:
        """Whether each of ``layers`` trains, given whether each is frozen."""
        if self.norm_policy == "train" and self.norm_layers:
            norms = self.norm_layers
            return (not is_frozen or layer in norms for layer, is_frozen in zip(layers, frozen))
        return map(operator.not_, frozen)  # in C

    @property
    def layer_positions(self) -> Mapping[str, int]:
        """Layer name -> its position in ``layers`` (read-only)."""
        return MappingProxyType(self._tree.index)

    def frozen_roots(self) -> tuple[str, ...]:
        """The roots of the fully frozen subtrees, in layer order.

        A layer is in a fully frozen subtree when it and every layer below it
        are frozen; a root is such a layer whose parent layer is not (or that
        has none). After ``freeze("net")`` and ``unfreeze("net.conv1")`` the
        roots are ``net``'s other children, not ``net``.

        Example:
            >>> state = CurriculumState(("net", "net.conv1", "net.conv2", "head"))
            >>> state.freeze("net").unfreeze("net.conv1").frozen_roots()
            ('net.conv2',)
        """
        cached = self._cache.get("frozen_roots")
        if cached is None:
            parent = self._tree.parent
            fully = list(self.resolved_frozen())
            # Descendants come after their ancestors: one backward pass
            # clears every ancestor of a trainable layer.
            for position in range(len(fully) - 1, -1, -1):
                if not fully[position] and parent[position] >= 0:
                    fully[parent[position]] = False
            cached = tuple(
                layer
                for position, layer in enumerate(self.layers)
                if fully[position] and (parent[position] < 0 or not fully[parent[position]])
            )
            self._cache["frozen_roots"] = cached
        return cached

    def select(self, patterns: Patterns) -> tuple[str, ...]:
        """``select_layers(self.layers, patterns)``; a layer name is looked up, not matched."""
        layers = self.layers
        return tuple(layers[position] for position in self._tree.select(patterns))

    # Transitions ---------------------------------------------------------------

    def freeze(self, patterns: Patterns) -> CurriculumState:
        """Freeze the subtrees of the selected layers."""
        return self._write_frozen(patterns, True)

    def unfreeze(self, patterns: Patterns) -> CurriculumState:
        """Make the subtrees of the selected layers trainable."""
        return self._write_frozen(patterns, False)

    def set_lr_coefficient(self, coefficient: float, patterns: Patterns) -> CurriculumState:
        """Set the lr coefficient of the subtrees of the selected layers.

        Setting 1.0 restores 1.0 even under an ancestor with another coefficient.
        """
        value = validate_coefficient(coefficient)
        return self.set_coefficients(dict.fromkeys(self._tree.select(patterns), value))

    def set_norm_policy(self, policy: str) -> CurriculumState:
        """What normalization layers inside frozen layers do.

        * ``"stats"`` (the default): their parameters are frozen with their
          layer; running statistics (BatchNorm, InstanceNorm with
          ``track_running_stats``) still update in ``train()`` mode.
        * ``"eval"``: parameters and running statistics are frozen: a
          :class:`~mentor_fn.Curriculum` makes such modules compute as in eval
          mode whatever ``model.train()`` says (with hooks; modules,
          ``track_running_stats`` and ``state_dict`` keys are untouched).
        * ``"train"``: their affine parameters keep training inside frozen
          layers, with their layer's coefficient (fastai's ``train_bn``).

        Raises:
            ValueError: another policy. TypeError: not a str.
        """
        return self._replace(norm_policy=validate_norm_policy(policy))

    def set_coefficients(
        self, values: Mapping[int, float] | Mapping[str, float]
    ) -> CurriculumState:
        """Write several coefficients at once, each on its layer's subtree.

        Equivalent to one ``set_lr_coefficient`` per entry in layer order.
        Keys are layer names or positions in ``layers``.
        """
        checked = {
            self._key_position(key): validate_coefficient(value) for key, value in values.items()
        }
        rules = self._tree.write(self._coefficient_rules, checked, 1.0)
        return self._replace(coefficient_rules=rules)

    def _key_position(self, key: object) -> int:
        # A negative or out-of-range position would index the wrong layer
        # without removing the rules below it, leaving a non-canonical state.
        if isinstance(key, str):
            return self._tree.position(key)
        if isinstance(key, bool) or not isinstance(key, int):
            raise TypeError(f"keys must be layer names or positions, got {key!r}")
        if not 0 <= key < len(self.layers):
            raise ValueError(f"layer position {key!r} out of range for {len(self.layers)} layers")
        return key

    def _write_frozen(self, patterns: Patterns, value: bool) -> CurriculumState:
        positions = self._tree.select(patterns)
        rules = self._tree.write(self._frozen_rules, dict.fromkeys(positions, value), False)
        return self._replace(frozen_rules=rules)

    # Plain data ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain data (str, bool, float, list, dict) with a format version.

        Loadable with ``torch.load(weights_only=True)``.
        """
        return {
            "format": _FORMAT_NAME,
            "version": FORMAT_VERSION,
            "layers": list(self.layers),
            "parameter_owners": [name for name in self.layers if name in self.parameter_owners],
            "norm_layers": [name for name in self.layers if name in self.norm_layers],
            "norm_policy": self.norm_policy,
            "frozen": dict(self._frozen_rules),
            "coefficients": dict(self._coefficient_rules),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CurriculumState:
        """Rebuild a state from :meth:`to_dict` output, validating everything.

        Raises:
            ValueError: unknown format or version, or malformed content.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a CurriculumState dict must be a mapping, got {type(data).__name__}")
        if data.get("format") != _FORMAT_NAME:
            raise ValueError(
                f"not a CurriculumState dict: format is {data.get('format')!r}, "
                f"expected {_FORMAT_NAME!r}"
            )
        version = data.get("version")
        # By type too: True and 1.0 compare equal to 1 but are not a version.
        if type(version) is not int or version not in (1, FORMAT_VERSION):
            raise ValueError(
                f"unsupported CurriculumState format version {version!r}; "
                f"this mentor_fn reads versions 1 and {FORMAT_VERSION}"
            )
        expected = {"format", "version", "layers", "parameter_owners", "frozen", "coefficients"}
        if version >= 2:
            expected |= {"norm_layers", "norm_policy"}
        if set(data) != expected:
            raise ValueError(
                f"malformed CurriculumState dict: keys {sorted(data)}, expected {sorted(expected)}"
            )
        layers, owners = data["layers"], data["parameter_owners"]
        frozen, coefficients = data["frozen"], data["coefficients"]
        if not isinstance(layers, list) or not isinstance(owners, list):
            raise ValueError(
                "malformed CurriculumState dict: layers and parameter_owners must be lists"
            )
        if not isinstance(frozen, Mapping) or not isinstance(coefficients, Mapping):
            raise ValueError(
                "malformed CurriculumState dict: frozen and coefficients must be dicts"
            )
        norm_layers = data.get("norm_layers", [])
        if not isinstance(norm_layers, list):
            raise ValueError("malformed CurriculumState dict: norm_layers must be a list")
        try:
            return cls(
                layers,
                frozen=frozen,
                coefficients=coefficients,
                parameter_owners=owners,
                norm_layers=norm_layers,
                norm_policy=data.get("norm_policy", "stats"),
            )
        except TypeError as error:
            raise ValueError(f"malformed CurriculumState dict: {error}") from None

    def __reduce__(self) -> tuple[Any, ...]:
        return (CurriculumState.from_dict, (self.to_dict(),))

    # Value semantics -------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CurriculumState):
            return NotImplemented
        return (
            (self._tree is other._tree or self.layers == other.layers)
            and self.parameter_owners == other.parameter_owners
            and self.norm_layers == other.norm_layers
            and self.norm_policy == other.norm_policy
            and self._frozen_rules == other._frozen_rules
            and self._coefficient_rules == other._coefficient_rules
        )

    def __hash__(self) -> int:
        cached = self._cache.get("hash")
        if cached is None:
            cached = hash(
                (
                    self.layers,
                    self.parameter_owners,
                    self.norm_layers,
                    self.norm_policy,
                    frozenset(self._frozen_rules.items()),
                    frozenset(self._coefficient_rules.items()),
                )
            )
            self._cache["hash"] = cached
        return cached

    def __repr__(self) -> str:
        policy = "" if self.norm_policy == "stats" else f", norm_policy={self.norm_policy!r}"
        return (
            f"CurriculumState({len(self.layers)} layers, frozen={self._frozen_rules!r}, "
            f"coefficients={self._coefficient_rules!r}{policy})"
        )


def _same_set(first: frozenset[str], second: frozenset[str]) -> bool:
    return first is second or first == second


def _differing(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The layers whose rule differs between two rule dicts (added, removed or changed)."""
    if old is new or old == new:
        return []
    return [
        name for name in old.keys() | new.keys() if old.get(name, MISSING) != new.get(name, MISSING)
    ]


def validate_norm_policy(policy: object) -> str:
    """Return ``policy``, one of :data:`NORM_POLICIES`.

    Raises:
        TypeError: not a str. ValueError: another str.
    """
    if not isinstance(policy, str):
        raise TypeError(f"norm_policy must be a str, got {type(policy).__name__}: {policy!r}")
    if policy not in NORM_POLICIES:
        raise ValueError(
            f"norm_policy must be one of {', '.join(map(repr, NORM_POLICIES))}, got {policy!r}"
        )
    return policy


def _checked_layer_set(names: object, tree: LayerTree, what: str) -> frozenset[str]:
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise TypeError(f"{what} must be an iterable of layer names, got {names!r}")
    checked = frozenset(names)
    for name in checked:
        if not isinstance(name, str):
            raise TypeError(f"{what} must hold layer names (str), got {name!r}")
        tree.position(name)
    return checked


def _checked_rules(
    rules: Mapping[str, Any] | None, tree: LayerTree, what: str, validate: Any
) -> dict[str, Any]:
    if rules is None:
        return {}
    if not isinstance(rules, Mapping):
        raise TypeError(f"{what} must be a mapping of layer name to value, got {rules!r}")
    checked = {}
    for name, value in rules.items():
        if not isinstance(name, str):
            raise TypeError(f"{what} keys must be layer names (str), got {name!r}")
        tree.position(name)
        checked[name] = validate(value, what=f"{what}[{name!r}]")
    return checked


def _flatten(state: CurriculumState) -> tuple[tuple[float, ...], Any, tuple[str, ...]]:
    names = tuple(state._coefficient_rules)
    metadata = (
        state.layers,
        state.parameter_owners,
        state.norm_layers,
        state.norm_policy,
        tuple(state._frozen_rules.items()),
        names,
    )
    return tuple(state._coefficient_rules.values()), metadata, names


def _unflatten(metadata: Any, children: Iterable[Any]) -> CurriculumState:
    layers, owners, norm_layers, norm_policy, frozen_items, names = metadata
    return CurriculumState(
        layers,
        frozen=dict(frozen_items),
        coefficients=dict(zip(names, children, strict=True)),
        parameter_owners=owners,
        norm_layers=norm_layers,
        norm_policy=norm_policy,
    )


# The coefficient rules are the leaves: optree.tree_map(f, state,
# namespace="mentor_fn") maps every rule and re-validates the result.
optree.register_pytree_node(
    CurriculumState,  # type: ignore[arg-type]
    _flatten,  # type: ignore[arg-type]
    _unflatten,  # type: ignore[arg-type]  # optree's stub wants a Collection back
    namespace=PYTREE_NAMESPACE,
)
