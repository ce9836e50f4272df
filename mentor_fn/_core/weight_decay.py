"""Weight decay by parameter kind: which parameters get none (pure).

Biases, normalization parameters and often embeddings get no weight decay in
fine-tuning recipes (BEiT, MAE, ViT; HF's ``get_decay_parameter_names``;
timm's ``param_groups_weight_decay``). Normalization layers are recognised by
module type, never by name, so an ``RMSNorm`` or a ``GroupNorm`` named
``"ln_f"`` or ``"scale"`` is found as surely as a ``LayerNorm`` named
``"norm"``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn

__all__ = [
    "NORMALIZATION_TYPES",
    "NO_WEIGHT_DECAY_KINDS",
    "NoWeightDecayRule",
    "WeightDecayRules",
    "is_normalization",
    "weight_decay_rules",
]

NORMALIZATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*, lazy variants
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.LocalResponseNorm,
    nn.CrossMapLRN2d,
)
"""torch's normalization module types (subclasses count too)."""

NO_WEIGHT_DECAY_KINDS = ("bias", "norm", "embedding", "1d")
"""Names of the built-in kinds; any other string is a regex on full parameter names."""

EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)

NoWeightDecayRule = str | Callable[[str, nn.Parameter, nn.Module], bool]
"""A kind name, a regex on the parameter's full name, or ``(name, parameter, module) -> bool``."""


def is_normalization(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer, by type (see :data:`NORMALIZATION_TYPES`)."""
    return isinstance(module, NORMALIZATION_TYPES)


@dataclass(frozen=True)
class WeightDecayRules:
    """Validated ``no_weight_decay`` rules.

    Attributes:
        kinds: the built-in kinds named.
        patterns: the regexes (matched with ``re.fullmatch`` on the full name).
        predicates: the callables.
    """

    kinds: frozenset[str]
    patterns: tuple[re.Pattern[str], ...]
    predicates: tuple[Callable[[str, nn.Parameter, nn.Module], bool], ...]

    def __bool__(self) -> bool:
        return bool(self.kinds or self.patterns or self.predicates)

    def excludes(self, name: str, parameter: nn.Parameter, module: nn.Module) -> bool:
        """Whether the parameter ``name`` (full name), registered on ``module``, gets no decay."""
        kinds = self.kinds
        if kinds:
            if "1d" in kinds and parameter.ndim <= 1:
                return True
            if "bias" in kinds:
                local = name.rpartition(".")[2]
                if local == "bias" or local.endswith("_bias"):
                    return True
            if "norm" in kinds and is_normalization(module):
                return True
            if "embedding" in kinds and isinstance(module, EMBEDDING_TYPES):
                return True
        for pattern in self.patterns:
            if pattern.fullmatch(name):
                return True
        for predicate in self.predicates:
            answer = predicate(name, parameter, module)
            if not isinstance(answer, bool):
                raise TypeError(
                    f"a no_weight_decay callable must return a bool, {predicate!r} returned "
                    f"{type(answer).__name__} for parameter {name!r}"
                )
            if answer:
                return True
        return False

    def unmatched_patterns(self, names: Iterable[str]) -> tuple[str, ...]:
        """The regexes that match none of ``names`` (a typo, most likely)."""
        remaining = list(self.patterns)
        for name in names:
            remaining = [pattern for pattern in remaining if not pattern.fullmatch(name)]
            if not remaining:
                break
        return tuple(pattern.pattern for pattern in remaining)


def weight_decay_rules(no_weight_decay: Iterable[NoWeightDecayRule] | None) -> WeightDecayRules:
    """Validate ``no_weight_decay`` rules.

    Each rule is a kind (``"bias"``: parameters named ``bias`` or ``*_bias``;
    ``"norm"``: parameters of normalization modules, by type; ``"embedding"``:
    parameters of ``nn.Embedding``/``nn.EmbeddingBag``; ``"1d"``: parameters
    with at most one dimension), any other string as a regex on the full
    parameter name (``re.fullmatch``, e.g. ``"pos_embed|cls_token"``), or a
    callable ``(name, parameter, module) -> bool``.

    Raises:
        TypeError: a rule that is neither a str nor a callable, or a bare str
            for the whole collection (``"bias"`` instead of ``("bias",)``).
        ValueError: a string that is not a valid regex.

    Example:
        >>> rules = weight_decay_rules(("bias", "norm", r"pos_embed"))
        >>> sorted(rules.kinds), [pattern.pattern for pattern in rules.patterns]
        (['bias', 'norm'], ['pos_embed'])
    """
    if no_weight_decay is None:
        return WeightDecayRules(frozenset(), (), ())
    if isinstance(no_weight_decay, str) or not isinstance(no_weight_decay, Iterable):
        raise TypeError(
            "no_weight_decay must be a collection of rules (kinds, regexes or callables), "
            f"got {no_weight_decay!r}; write ({no_weight_decay!r},) for a single rule"
        )
    kinds: list[str] = []
    patterns: list[re.Pattern[str]] = []
    predicates: list[Callable[[str, nn.Parameter, nn.Module], bool]] = []
    for rule in no_weight_decay:
        if isinstance(rule, str):
            if rule in NO_WEIGHT_DECAY_KINDS:
                kinds.append(rule)
                continue
            try:
                patterns.append(re.compile(rule))
            except re.error as error:
                raise ValueError(
                    f"no_weight_decay rule {rule!r} is neither a kind "
                    f"({', '.join(NO_WEIGHT_DECAY_KINDS)}) nor a valid regex: {error}"
                ) from None
        elif callable(rule):
            predicates.append(rule)
        else:
            raise TypeError(
                f"a no_weight_decay rule must be a kind, a regex (str) or a callable "
                f"(name, parameter, module) -> bool, got {type(rule).__name__}: {rule!r}"
            )
    return WeightDecayRules(frozenset(kinds), tuple(patterns), tuple(predicates))
