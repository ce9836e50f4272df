"""Transition values: ``t(state) -> state``, composable with :func:`chain`.

``freeze(p)(state) == state.freeze(p)``; the values are small frozen
dataclasses, so they compare, hash and print, and can be stored in a schedule
of phases. Patterns and coefficients are validated when the value is made,
layers when it is applied.

Every transition value is plain data too: ``t.to_dict()`` (a dict with a
``"kind"`` key) and :func:`transition_from_dict` round-trip it, so schedules
can be saved. A user's own callable is a valid transition but has no plain
form: :func:`transition_to_dict` refuses it with a TypeError naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from .selection import Patterns, normalize_patterns
from .state import CurriculumState, validate_norm_policy
from .validation import validate_coefficient, validate_fraction

__all__ = [
    "TRANSITION_KINDS",
    "Transition",
    "chain",
    "depth_ranks",
    "freeze",
    "layerwise_lr_decay",
    "layerwise_lr_spread",
    "register_transition_kind",
    "set_lr_coefficient",
    "set_norm_policy",
    "transition_from_dict",
    "transition_to_dict",
    "unfreeze",
]

Transition = Callable[[CurriculumState], CurriculumState]

TRANSITION_KINDS: dict[str, type] = {}
"""Serializable transition classes by their ``kind``; see :func:`register_transition_kind`."""

_Class = TypeVar("_Class", bound=type)


def _reduce_through_plain_data(transition: Any) -> tuple[Any, tuple[dict[str, Any]]]:
    return transition_from_dict, (transition.to_dict(),)


def register_transition_kind(kind: str) -> Callable[[_Class], _Class]:
    """Class decorator: make a transition class serializable under ``kind``.

    The class needs ``to_dict(self)`` (plain data with ``"kind": kind``) and a
    classmethod ``from_dict(cls, data)`` that validates ``data`` and raises
    ValueError naming a malformed field. Adding a transition is one class:

        @register_transition_kind("set_norm_policy")
        @dataclass(frozen=True)
        class SetNormPolicy: ...
    """

    def register(cls: _Class) -> _Class:
        if kind in TRANSITION_KINDS:
            raise ValueError(f"transition kind {kind!r} is already registered")
        cls.kind = kind  # type: ignore[attr-defined]
        # Pickled as its plain data, read back by the public transition_from_dict:
        # a pickle names no private module, so it survives moves of this one.
        cls.__reduce__ = _reduce_through_plain_data  # type: ignore[method-assign,assignment]
        TRANSITION_KINDS[kind] = cls
        return cls

    return register


@register_transition_kind("freeze")
@dataclass(frozen=True)
class Freeze:
    """Freeze the subtrees of the layers matching ``patterns``."""

    kind: ClassVar[str]
    patterns: tuple[str, ...]

    def __call__(self, state: CurriculumState) -> CurriculumState:
        return state.freeze(self.patterns)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "patterns": list(self.patterns)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Freeze:
        _check_keys(data, cls.kind, ("patterns",))
        return cls(_patterns_field(data, cls.kind))


@register_transition_kind("unfreeze")
@dataclass(frozen=True)
class Unfreeze:
    """Make the subtrees of the layers matching ``patterns`` trainable."""

    kind: ClassVar[str]
    patterns: tuple[str, ...]

    def __call__(self, state: CurriculumState) -> CurriculumState:
        return state.unfreeze(self.patterns)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "patterns": list(self.patterns)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Unfreeze:
        _check_keys(data, cls.kind, ("patterns",))
        return cls(_patterns_field(data, cls.kind))


@register_transition_kind("set_lr_coefficient")
@dataclass(frozen=True)
class SetLrCoefficient:
    """Set the lr coefficient of the subtrees of the layers matching ``patterns``."""

    kind: ClassVar[str]
    coefficient: float
    patterns: tuple[str, ...]

    def __call__(self, state: CurriculumState) -> CurriculumState:
        return state.set_lr_coefficient(self.coefficient, self.patterns)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "coefficient": self.coefficient, "patterns": list(self.patterns)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SetLrCoefficient:
        _check_keys(data, cls.kind, ("coefficient", "patterns"))
        return cls(
            _field(data, cls.kind, "coefficient", validate_coefficient),
            _patterns_field(data, cls.kind),
        )


@register_transition_kind("layerwise_lr_decay")
@dataclass(frozen=True)
class LayerwiseLrDecay:
    """Coefficient ``decay ** (n - 1 - i)`` for the i-th of n ranks.

    A rank is a layer that owns parameters, by depth (see :func:`depth_ranks`),
    among the selected layers (``patterns``, or every layer); or, with
    ``groups``, every layer the i-th group's patterns select.
    """

    kind: ClassVar[str]
    decay: float
    patterns: tuple[str, ...] | None
    groups: tuple[tuple[str, ...], ...] | None = None

    def __call__(self, state: CurriculumState) -> CurriculumState:
        if self.groups is not None:
            return state.set_coefficients(self._coefficients_by_group(state))
        selected = state.layers if self.patterns is None else state.select(self.patterns)
        ranks = depth_ranks(state, selected)
        count = len(ranks)
        return state.set_coefficients(
            {
                layer: self.decay ** (count - 1 - rank)
                for rank, layers in enumerate(ranks)
                for layer in layers
            }
        )

    def _coefficients_by_group(self, state: CurriculumState) -> dict[str, float]:
        assert self.groups is not None
        count = len(self.groups)
        rank_of: dict[str, int] = {}
        for rank, patterns in enumerate(self.groups):
            for layer in state.select(patterns):
                if rank_of.setdefault(layer, rank) != rank:
                    raise ValueError(
                        f"layerwise_lr_decay: layer {layer!r} is selected by group "
                        f"{rank_of[layer]} ({list(self.groups[rank_of[layer]])}) and group "
                        f"{rank} ({list(patterns)}); each layer may have one rank"
                    )
        return {layer: self.decay ** (count - 1 - rank) for layer, rank in rank_of.items()}

    def to_dict(self) -> dict[str, Any]:
        patterns = None if self.patterns is None else list(self.patterns)
        data: dict[str, Any] = {"kind": self.kind, "decay": self.decay, "patterns": patterns}
        if self.groups is not None:  # absent otherwise: older plain data stays the same
            data["groups"] = [list(group) for group in self.groups]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerwiseLrDecay:
        _check_keys(data, cls.kind, ("decay", "patterns"), optional=("groups",))
        patterns = None if data["patterns"] is None else _patterns_field(data, cls.kind)
        groups = None
        if "groups" in data:
            items = data["groups"]
            if not isinstance(items, (list, tuple)) or not items:
                raise ValueError(
                    f"malformed {cls.kind!r} transition dict: 'groups' must be a non-empty list "
                    f"of pattern lists, got {items!r}"
                )
            groups = tuple(_patterns_field({"patterns": item}, cls.kind) for item in items)
            if patterns is not None:
                raise ValueError(
                    f"malformed {cls.kind!r} transition dict: 'patterns' and 'groups' are exclusive"
                )
        return cls(_field(data, cls.kind, "decay", validate_fraction), patterns, groups)


@register_transition_kind("set_norm_policy")
@dataclass(frozen=True)
class SetNormPolicy:
    """Set what normalization layers inside frozen layers do (``"stats"``, ``"eval"``, ``"train"``)."""

    kind: ClassVar[str]
    policy: str

    def __call__(self, state: CurriculumState) -> CurriculumState:
        return state.set_norm_policy(self.policy)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "policy": self.policy}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SetNormPolicy:
        _check_keys(data, cls.kind, ("policy",))
        return cls(_field(data, cls.kind, "policy", _validate_policy))


@register_transition_kind("layerwise_lr_spread")
@dataclass(frozen=True)
class LayerwiseLrSpread:
    """Coefficients ``lowest ** (1 - i / (n - 1))`` over the n ranks of the selected layers
    (see :func:`depth_ranks`)."""

    kind: ClassVar[str]
    lowest: float
    patterns: tuple[str, ...] | None

    def __call__(self, state: CurriculumState) -> CurriculumState:
        selected = state.layers if self.patterns is None else state.select(self.patterns)
        ranks = depth_ranks(state, selected)
        last = len(ranks) - 1
        if last <= 0:
            return state.set_coefficients({layer: 1.0 for layers in ranks for layer in layers})
        # The exponents are exactly 1.0 and 0.0 at the ends, so the first
        # rank gets exactly ``lowest`` and the last exactly 1.0.
        return state.set_coefficients(
            {
                layer: self.lowest ** ((last - rank) / last)
                for rank, layers in enumerate(ranks)
                for layer in layers
            }
        )

    def to_dict(self) -> dict[str, Any]:
        patterns = None if self.patterns is None else list(self.patterns)
        return {"kind": self.kind, "lowest": self.lowest, "patterns": patterns}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerwiseLrSpread:
        _check_keys(data, cls.kind, ("lowest", "patterns"))
        patterns = None if data["patterns"] is None else _patterns_field(data, cls.kind)
        return cls(_field(data, cls.kind, "lowest", validate_fraction), patterns)


@register_transition_kind("chain")
@dataclass(frozen=True)
class Chain:
    """Apply ``transitions`` left to right."""

    kind: ClassVar[str]
    transitions: tuple[Transition, ...]

    def __call__(self, state: CurriculumState) -> CurriculumState:
        for transition in self.transitions:
            state = transition(state)
        return state

    def to_dict(self) -> dict[str, Any]:
        """Plain data; TypeError naming the first user callable among the transitions."""
        return {
            "kind": self.kind,
            "transitions": [transition_to_dict(transition) for transition in self.transitions],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Chain:
        _check_keys(data, cls.kind, ("transitions",))
        items = data["transitions"]
        if not isinstance(items, (list, tuple)):
            raise ValueError(
                f"malformed 'chain' transition dict: 'transitions' must be a list, got {items!r}"
            )
        return cls(tuple(transition_from_dict(item) for item in items))


def freeze(patterns: Patterns) -> Freeze:
    """Transition freezing the matched layers: ``freeze(p)(s) == s.freeze(p)``."""
    return Freeze(normalize_patterns(patterns))


def unfreeze(patterns: Patterns) -> Unfreeze:
    """Transition unfreezing the matched layers: ``unfreeze(p)(s) == s.unfreeze(p)``."""
    return Unfreeze(normalize_patterns(patterns))


def set_lr_coefficient(coefficient: float, patterns: Patterns) -> SetLrCoefficient:
    """Transition setting a coefficient: ``set_lr_coefficient(c, p)(s) == s.set_lr_coefficient(c, p)``."""
    return SetLrCoefficient(validate_coefficient(coefficient), normalize_patterns(patterns))


def depth_ranks(state: CurriculumState, selected: Sequence[str]) -> list[list[str]]:
    """The ranks of ``selected`` by depth, input side first: what LLRD and spreads count.

    A rank is a selected layer that owns parameters, or a selected layer with
    no selected layer below it, which then stands for its whole subtree. So
    every layer selected (the default) ranks the layers that own parameters,
    by depth, and containers are no ranks of their own; while a selection of
    blocks (``r"encoder\\.layer\\.\\d+"``) ranks each block as one. A
    normalization layer is no rank of its own: it joins the rank of the
    layer before it (the one it normalizes; the first rank when it comes
    first), so a CNN of conv + BatchNorm blocks has one rank per conv, and a
    ViT's final norm shares the last block's rank, as in timm. With no layer
    but normalization layers selected, each is a rank. ``selected`` is in
    layer order (as :meth:`CurriculumState.select` returns it).

    Example:
        >>> state = CurriculumState(
        ...     ("net", "net.conv", "net.bn", "head"),
        ...     parameter_owners=("net.conv", "net.bn", "head"),
        ...     norm_layers=("net.bn",),
        ... )
        >>> depth_ranks(state, state.layers)
        [['net.conv', 'net.bn'], ['head']]
        >>> depth_ranks(state, ("net", "head"))  # nothing selected below "net"
        [['net'], ['head']]
    """
    owners = state.parameter_owners
    # Layers are in pre-order, so a selected layer's selected descendants, if
    # any, begin with the very next selected name.
    ranked = [
        layer
        for position, layer in enumerate(selected)
        if layer in owners
        or not (position + 1 < len(selected) and selected[position + 1].startswith(layer + "."))
    ]
    norms = state.norm_layers
    if all(layer in norms for layer in ranked):
        return [[layer] for layer in ranked]
    ranks: list[list[str]] = []
    leading: list[str] = []
    for layer in ranked:
        if layer not in norms:
            ranks.append([*leading, layer])
            leading = []
        elif ranks:
            ranks[-1].append(layer)
        else:
            leading.append(layer)
    return ranks


def layerwise_lr_decay(
    decay: float,
    *,
    patterns: Patterns | None = None,
    groups: Sequence[Patterns] | None = None,
) -> LayerwiseLrDecay:
    """Layer-wise lr decay (LLRD) as one transition.

    The i-th of the n ranks gets coefficient ``decay ** (n - 1 - i)``: the
    last rank (the output) learns at the global lr, each earlier one
    ``decay`` times slower. A rank is a selected layer that owns parameters,
    by depth, or a selected layer with nothing selected below it, standing
    for its subtree (:func:`depth_ranks`): on every layer, containers are no
    ranks, and a normalization layer shares the rank of the layer it
    follows. So a CNN of four conv + BatchNorm blocks and a head has five
    ranks, and its first conv gets ``decay ** 4``; ``patterns=r"blocks\\.\\d+"``
    makes each block one rank. This is what :func:`layerwise_lr_spread`
    counts too.
    torch_mentor's LLRD loop (``set_lr_coefficient`` over every name of
    ``layer_names``) counts containers and norms as ranks as well (the same
    CNN's first conv gets ``decay ** 11`` there); write that loop to get its
    numbers. Frozen flags are unchanged.

    With ``groups``, ranks are given explicitly: group i of the n groups (each
    a pattern or a list of patterns) gets ``decay ** (n - 1 - i)`` on every
    layer it selects (and, as every write, their subtrees). Several layers
    then share a rank, as in timm's ViT recipe, where the embeddings share
    the first rank, the final norm shares the last block's, and the head has
    the last one alone (``timm_layer_groups(model)`` reads them from a timm
    model's own ``group_matcher()``)::

        layerwise_lr_decay(0.65, groups=[
            "cls_token|pos_embed|patch_embed",
            *(f"blocks.{i}" for i in range(11)),
            "blocks.11|norm",
            "head",
        ])

    Args:
        decay: in (0, 1].
        patterns: restrict the decay to these layers (others keep their rules).
        groups: the ranks, lowest first; exclusive with ``patterns``. A layer
            selected by two groups is a ValueError when applied.

    Raises:
        TypeError: a pattern that is not a str.
        ValueError: ``decay`` outside (0, 1], both ``patterns`` and
            ``groups``, or no group.

    Example:
        >>> state = CurriculumState(("embed", "block", "head"))
        >>> layerwise_lr_decay(0.5)(state).resolved_coefficients()
        (0.25, 0.5, 1.0)
        >>> layerwise_lr_decay(0.5, groups=["embed|block", "head"])(state).resolved_coefficients()
        (0.5, 0.5, 1.0)
        >>> cnn = CurriculumState(
        ...     ("features", "features.conv", "features.bn", "head"),
        ...     parameter_owners=("features.conv", "features.bn", "head"),
        ...     norm_layers=("features.bn",),
        ... )
        >>> layerwise_lr_decay(0.5)(cnn).resolved_coefficients()  # the container keeps 1.0
        (1.0, 0.5, 0.5, 1.0)
        >>> blocks = CurriculumState(
        ...     ("blocks.0", "blocks.0.fc", "blocks.1", "blocks.1.fc", "head"),
        ...     parameter_owners=("blocks.0.fc", "blocks.1.fc", "head"),
        ... )
        >>> layerwise_lr_decay(0.5, patterns=r"blocks\\.\\d")(blocks).resolved_coefficients()
        (0.5, 0.5, 1.0, 1.0, 1.0)
    """
    checked_decay = validate_fraction(decay, what="decay")
    if groups is None:
        return LayerwiseLrDecay(
            checked_decay, None if patterns is None else normalize_patterns(patterns)
        )
    if patterns is not None:
        raise ValueError("layerwise_lr_decay takes patterns or groups, not both")
    if isinstance(groups, str) or not isinstance(groups, Sequence):
        raise TypeError(
            f"groups must be a sequence of patterns (each a str or a list of str), got {groups!r}"
        )
    if not groups:
        raise ValueError("layerwise_lr_decay: groups must hold at least one group")
    return LayerwiseLrDecay(
        checked_decay, None, tuple(normalize_patterns(group) for group in groups)
    )


def layerwise_lr_spread(lowest: float, *, patterns: Patterns | None = None) -> LayerwiseLrSpread:
    """Coefficients spread geometrically from ``lowest`` up to 1.0 (fastai's ``slice``).

    Over the n ranks of all layers (or those matching ``patterns``), input
    side first, the i-th gets ``lowest ** (1 - i / (n - 1))``: exactly
    ``lowest`` on the first, exactly 1.0 on the last (the head), evenly
    spaced on a log scale between. A single rank gets 1.0. Ranks are
    :func:`layerwise_lr_decay`'s (:func:`depth_ranks`): layers that own
    parameters, a normalization layer sharing the rank of the layer it
    follows; containers are not written. Frozen flags are unchanged.

    Args:
        lowest: the first layer's coefficient, in (0, 1].
        patterns: restrict the spread to these layers (others keep their rules).

    Example:
        >>> state = CurriculumState(("embed", "block", "head"))
        >>> layerwise_lr_spread(0.01)(state).resolved_coefficients()
        (0.01, 0.1, 1.0)
    """
    return LayerwiseLrSpread(
        validate_fraction(lowest, what="lowest"),
        None if patterns is None else normalize_patterns(patterns),
    )


def set_norm_policy(policy: str) -> SetNormPolicy:
    """Transition setting the norm policy: ``set_norm_policy(p)(s) == s.set_norm_policy(p)``.

    See :meth:`CurriculumState.set_norm_policy` (``"stats"``, ``"eval"``,
    ``"train"``).

    Raises:
        ValueError: another policy. TypeError: not a str.

    Example:
        >>> state = CurriculumState(("backbone", "head"))
        >>> set_norm_policy("eval")(state).norm_policy
        'eval'
    """
    return SetNormPolicy(validate_norm_policy(policy))


def chain(*transitions: Transition) -> Chain:
    """Compose transitions, applied left to right.

    Example:
        >>> phase = chain(freeze("backbone"), unfreeze("backbone.layer4"))
        >>> phase(CurriculumState(("backbone", "backbone.layer4", "head"))).frozen
        mappingproxy({'backbone': True, 'backbone.layer4': False})
    """
    for transition in transitions:
        if not callable(transition):
            raise TypeError(
                f"chain takes transitions (callables state -> state), got "
                f"{type(transition).__name__}: {transition!r}"
            )
    return Chain(tuple(transitions))


# Plain data ---------------------------------------------------------------------------------


def transition_to_dict(transition: Transition) -> dict[str, Any]:
    """``transition.to_dict()`` for a mentor_fn transition value.

    Raises:
        TypeError: ``transition`` is a user's own callable (a function, a
            lambda, an object with ``__call__``): it works in a schedule but
            has no plain form, so a schedule holding it cannot be saved.
    """
    cls = type(transition)
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or TRANSITION_KINDS.get(kind) is not cls:
        kinds = ", ".join(sorted(TRANSITION_KINDS))
        raise TypeError(
            f"transition {transition!r} ({cls.__qualname__}) is not serializable: only "
            f"mentor_fn's transition values ({kinds}) have a plain-data form. Build the phase "
            "from them (chain() composes them) to save or fingerprint the schedule."
        )
    return transition.to_dict()  # type: ignore[attr-defined]


def transition_from_dict(data: Mapping[str, Any]) -> Transition:
    """The transition value ``data`` describes (output of ``to_dict``), validated.

    Raises:
        ValueError: ``data`` is not a mapping, has an unknown ``kind``, or a
            missing, extra or malformed field (named in the message).
    """
    if not isinstance(data, Mapping):
        raise ValueError(
            f"a transition dict must be a mapping, got {type(data).__name__}: {data!r}"
        )
    kind = data.get("kind")
    cls = TRANSITION_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(
            f"malformed transition dict: 'kind' is {kind!r}, expected one of "
            f"{sorted(TRANSITION_KINDS)}"
        )
    return cls.from_dict(data)  # type: ignore[attr-defined]


def _check_keys(
    data: Mapping[str, Any], kind: str, fields: tuple[str, ...], optional: tuple[str, ...] = ()
) -> None:
    expected = {"kind", *fields}
    if not expected <= set(data) <= expected | set(optional):
        missing = sorted(expected - set(data))
        extra = sorted(set(data) - expected - set(optional), key=repr)
        raise ValueError(
            f"malformed {kind!r} transition dict: missing fields {missing}, unknown fields "
            f"{extra}; expected {sorted(expected)}"
        )


def _patterns_field(data: Mapping[str, Any], kind: str) -> tuple[str, ...]:
    patterns = data["patterns"]
    if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) for p in patterns):
        raise ValueError(
            f"malformed {kind!r} transition dict: 'patterns' must be a list of str, "
            f"got {patterns!r}"
        )
    return tuple(patterns)


def _field(data: Mapping[str, Any], kind: str, name: str, validate: Any) -> Any:
    try:
        return validate(data[name], what=name)
    except (TypeError, ValueError) as error:
        raise ValueError(f"malformed {kind!r} transition dict: field {name!r}: {error}") from None


def _validate_policy(value: object, *, what: str) -> str:
    return validate_norm_policy(value)
