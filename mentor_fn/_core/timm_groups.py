"""The layer-wise lr decay ranks a timm model declares, as ``layerwise_lr_decay`` groups.

timm models declare how their parameters group into ranks for layer-wise lr
decay with ``model.group_matcher(coarse=False)``: regular expressions with
ordinals (``blocks.(\\d+)``), a marker that merges a match into the previous
rank (a ViT's final ``norm`` joins the last block), and everything unmatched
(the head) in the last rank. timm's ``param_groups_layer_decay`` turns that
into lr scales; :func:`timm_layer_groups` turns it into the groups of
:func:`~mentor_fn.layerwise_lr_decay`, so that mentor_fn gives every
parameter timm's lr scale without anyone writing the regexes. mentor_fn never
imports timm: the model carries its own matcher.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import nn

from .model_walk import walk_model
from .wrappers import unwrap_model

__all__ = ["timm_layer_groups"]

_MERGE_WITH_PREVIOUS = 99999.0
"""timm's ``MATCH_PREV_GROUP`` ordinal: the match joins the rank before it."""


def timm_layer_groups(model: nn.Module) -> list[list[str]]:
    """The ranks of a timm model's ``group_matcher()``, lowest first, as layer patterns.

    Pass them as ``layerwise_lr_decay(decay, groups=timm_layer_groups(model))``:
    every parameter then gets the lr scale timm's ``param_groups_layer_decay``
    gives it (weight decay comes from ``no_weight_decay=("1d", ...)``, with the
    names of ``model.no_weight_decay()``). Each pattern is one layer's exact name.

    Raises:
        TypeError: the model has no ``group_matcher`` (not a timm model).
        ValueError: a layer's own parameters fall in two ranks (a matcher
            that splits a module), which layer-wise coefficients cannot express.

    Example:
        >>> import torch
        >>> class Tiny(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.stem = torch.nn.Linear(2, 2)
        ...         self.blocks = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
        ...         self.norm = torch.nn.LayerNorm(2)
        ...         self.head = torch.nn.Linear(2, 1)
        ...     def group_matcher(self, coarse=False):
        ...         return {"stem": r"^stem", "blocks": [(r"^blocks\\.(\\d+)", None), (r"^norm", (99999,))]}
        >>> timm_layer_groups(Tiny())
        [['stem'], ['blocks\\\\.0'], ['blocks\\\\.1', 'norm'], ['head']]
    """
    bare = unwrap_model(model)
    matcher = getattr(bare, "group_matcher", None)
    if not callable(matcher):
        raise TypeError(
            f"{type(bare).__name__} has no group_matcher(): timm_layer_groups reads the ranks a "
            "timm model declares; for another model, pass layerwise_lr_decay(groups=...) yourself"
        )
    ordinal = _ordinal_function(matcher(coarse=False))
    walked = walk_model(bare)
    ranked: dict[tuple[float, ...], list[str]] = {}
    for _, name, _ in walked.named_parameters():
        ranked.setdefault(ordinal(name), []).append(name)
    owner = {name: layer for layer, name, _ in walked.named_parameters()}
    rank_of_layer: dict[str, int] = {}
    rank = -1
    for key in sorted(ranked):
        if rank < 0 or key[-1] != _MERGE_WITH_PREVIOUS:
            rank += 1
        for name in ranked[key]:
            layer = owner[name]
            if rank_of_layer.setdefault(layer, rank) != rank:
                raise ValueError(
                    f"layer {layer!r} holds parameters of ranks {rank_of_layer[layer]} and {rank} "
                    "of the model's group_matcher(): one layer has one coefficient"
                )
    return _grouped(walked.layers, rank_of_layer, rank + 1)


def _grouped(
    layers: Iterable[str], rank_of_layer: Mapping[str, int], count: int
) -> list[list[str]]:
    """Each rank's layers, a whole subtree named by its root (``blocks.3`` for its
    norms, attention and MLP) when all of it is in one rank; in layer order."""
    below: dict[str, set[int]] = {}
    for owner, rank in rank_of_layer.items():
        parts = owner.split(".")
        for end in range(1, len(parts) + 1):
            below.setdefault(".".join(parts[:end]), set()).add(rank)
    groups: list[list[str]] = [[] for _ in range(count)]
    named: list[str] = []
    for layer in layers:
        if any(layer.startswith(root + ".") for root in named):
            continue  # inside a subtree already named
        ranks = below.get(layer, set())
        if len(ranks) == 1:
            groups[next(iter(ranks))].append(re.escape(layer))
            named.append(layer)
        elif layer in rank_of_layer:  # its own parameters; its children are named apart
            groups[rank_of_layer[layer]].append(re.escape(layer))
    return groups


def _ordinal_function(matcher: Any) -> Callable[[str], tuple[float, ...]]:
    """A parameter name -> its ordinal tuple, as timm's ``group_with_matcher`` computes it."""
    if not isinstance(matcher, Mapping):
        if not callable(matcher):
            raise TypeError(f"group_matcher() returned {type(matcher).__name__}, not a dict")

        def called(name: str) -> tuple[float, ...]:
            found = matcher(name)
            return tuple(found) if isinstance(found, Iterable) else (found,)

        return called
    compiled: list[tuple[re.Pattern[str], tuple[float, ...], Any]] = []
    for position, specification in enumerate(matcher.values()):
        if specification is None:
            continue
        entries = (
            specification if isinstance(specification, (list, tuple)) else [(specification, None)]
        )
        for pattern, suffix in entries:
            compiled.append((re.compile(pattern), (float(position),), suffix))

    def matched(name: str) -> tuple[float, ...]:
        for regex, prefix, suffix in compiled:
            found = regex.match(name)
            if found:
                parts = [prefix, found.groups(), suffix]
                return tuple(float(item) for part in parts if part for item in part)
        return (math.inf,)  # unmatched (the head): the last rank

    return matched
