"""Layers of a model: names, ownership of parameters, and pattern selection.

A *layer* is a module whose subtree holds at least one parameter (root
excluded), or a parameter registered directly on the root model. Names never
depend on wrappers (DDP, DataParallel, ``torch.compile``, FSDP1): a wrapper is
transparent, detected by its type.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from torch import nn

__all__ = ["ModelLayers", "layer_names", "select_layers", "unwrap_model", "walk_model"]

Patterns = str | Iterable[str]

# Wrapper types whose module only forwards to a wrapped one, with the attribute
# that holds it. Types from optional subsystems are resolved lazily through
# ``sys.modules``: if the subsystem was never imported, no instance can exist,
# and importing it here would cost seconds (torch._dynamo) for nothing.
_EAGER_WRAPPERS: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.parallel.DistributedDataParallel, "module"),
    (nn.DataParallel, "module"),
)
_LAZY_WRAPPERS: tuple[tuple[str, str, str], ...] = (
    ("torch._dynamo.eval_frame", "OptimizedModule", "_orig_mod"),
    (
        "torch.distributed.fsdp.fully_sharded_data_parallel",
        "FullyShardedDataParallel",
        "_fsdp_wrapped_module",
    ),
    (
        "torch.distributed.algorithms._checkpoint.checkpoint_wrapper",
        "ActivationWrapper",
        "_checkpoint_wrapped_module",
    ),
)


def _wrapper_types() -> tuple[tuple[type, str], ...]:
    found = list(_EAGER_WRAPPERS)
    for module_name, type_name, attribute in _LAZY_WRAPPERS:
        module = sys.modules.get(module_name)
        wrapper_type = getattr(module, type_name, None) if module is not None else None
        if isinstance(wrapper_type, type):
            found.append((wrapper_type, attribute))
    return tuple(found)


def _unwrap(module: nn.Module, wrappers: tuple[tuple[type, str], ...]) -> nn.Module:
    while True:
        for wrapper_type, attribute in wrappers:
            if isinstance(module, wrapper_type):
                module = getattr(module, attribute)
                break
        else:
            return module


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the bare model inside any DDP / DataParallel / compile / FSDP1 wrappers.

    Example:
        >>> from torch import nn
        >>> net = nn.Linear(2, 2)
        >>> unwrap_model(nn.DataParallel(net)) is net
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    return _unwrap(model, _wrapper_types())


@dataclass(frozen=True, eq=False)
class ModelLayers:
    """The result of one traversal of a model.

    Attributes:
        layers: layer names in traversal order (root parameters first).
        owned: for each layer, the ``(parameter name, parameter)`` pairs it owns,
            in registration order; parameter names are the bare model's.
    """

    layers: tuple[str, ...]
    owned: tuple[tuple[tuple[str, nn.Parameter], ...], ...]

    @property
    def parameter_owners(self) -> frozenset[str]:
        """Layers that own at least one parameter."""
        return frozenset(name for name, params in zip(self.layers, self.owned) if params)

    def named_parameters(self) -> Iterator[tuple[str, str, nn.Parameter]]:
        """Yield ``(layer, parameter name, parameter)`` for every owned parameter."""
        for layer, params in zip(self.layers, self.owned):
            for name, parameter in params:
                yield layer, name, parameter


def walk_model(model: nn.Module) -> ModelLayers:
    """Traverse ``model`` once: its layers and the parameters each one owns.

    A module reachable at several paths is visited once, at its first path; a
    parameter registered at several places is owned by the first layer (in
    traversal order) that registers it. Wrappers are looked through.
    """
    wrappers = _wrapper_types()
    root = _unwrap(model, wrappers) if isinstance(model, nn.Module) else None
    if root is None:
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")

    seen_parameters: set[int] = set()
    layers: list[str] = []
    owned: list[tuple[tuple[str, nn.Parameter], ...]] = []

    for name, parameter in root._parameters.items():
        if parameter is None or id(parameter) in seen_parameters:
            continue
        seen_parameters.add(id(parameter))
        layers.append(name)
        owned.append(((name, parameter),))

    # Pre-order traversal with an explicit stack (named_modules' recursive
    # generators cost a frame per level per module). Every visited module gets
    # a slot; slots of modules with no parameter in their subtree are dropped
    # afterwards, which needs each slot's parent.
    # Whether a module is a wrapper is decided once per type: isinstance
    # against the wrapper types (DDP's metaclass is ABCMeta) costs far more
    # than a dict lookup, and this loop runs once per module.
    is_wrapper_type: dict[type, bool] = {}
    paths: list[str] = []
    parents: list[int] = []
    registers_parameter: list[bool] = []
    slot_owned: list[tuple[tuple[str, nn.Parameter], ...]] = []
    seen_modules: set[int] = {id(root)}
    stack: list[tuple[str, nn.Module, int]] = [
        (name, child, -1) for name, child in reversed(root._modules.items()) if child is not None
    ]
    while stack:
        path, module, parent = stack.pop()
        module_type = type(module)
        is_wrapper = is_wrapper_type.get(module_type)
        if is_wrapper is None:
            is_wrapper = any(isinstance(module, wrapper_type) for wrapper_type, _ in wrappers)
            is_wrapper_type[module_type] = is_wrapper
        if is_wrapper:
            module = _unwrap(module, wrappers)
        if id(module) in seen_modules:
            continue
        seen_modules.add(id(module))
        slot = len(paths)
        paths.append(path)
        parents.append(parent)
        mine: list[tuple[str, nn.Parameter]] = []
        direct = False
        for parameter_name, parameter in module._parameters.items():
            if parameter is None:
                continue
            direct = True
            if id(parameter) not in seen_parameters:
                seen_parameters.add(id(parameter))
                mine.append((f"{path}.{parameter_name}", parameter))
        registers_parameter.append(direct)
        slot_owned.append(tuple(mine))
        children = module._modules
        if children:
            stack.extend(
                [
                    (f"{path}.{name}", child, slot)
                    for name, child in reversed(children.items())
                    if child is not None
                ]
            )

    keep = registers_parameter
    for slot in range(len(paths) - 1, -1, -1):
        if keep[slot]:
            parent = parents[slot]
            if parent >= 0:
                keep[parent] = True
    for slot, kept in enumerate(keep):
        if kept:
            layers.append(paths[slot])
            owned.append(slot_owned[slot])
    return ModelLayers(layers=tuple(layers), owned=tuple(owned))


def layer_names(model: nn.Module) -> tuple[str, ...]:
    """Names of the layers of ``model``, in traversal order.

    Every module whose subtree holds a parameter (root excluded, a shared module
    once at its first path), preceded by the parameters registered directly on
    the root. Wrappers (DDP, DataParallel, ``torch.compile``) do not change the
    names.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
        >>> layer_names(model)
        ('0', '2')
    """
    return walk_model(model).layers


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


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as error:
        raise ValueError(f"invalid regular expression {pattern!r}: {error}") from None


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
    compiled = [_compile(text) for text in pattern_texts]

    # One alternation of all patterns is as fast as a single pattern; it is
    # only valid when no pattern has groups or flags that would interfere.
    # Inline flags are checked here, not left to re.error: Python 3.10 only
    # warns about "(?i)" inside the alternation and applies it to every pattern.
    combined: re.Pattern[str] | None = None
    if len(compiled) > 1 and not any(
        pattern.groups or pattern.flags != _DEFAULT_FLAGS for pattern in compiled
    ):
        try:
            combined = re.compile("|".join(f"(?:{text})" for text in pattern_texts))
        except re.error:
            combined = None
    if len(compiled) == 1:
        combined = compiled[0]

    if combined is not None:
        fullmatch = combined.fullmatch
        selected = tuple(name for name in names if fullmatch(name))
    else:
        matchers = [pattern.fullmatch for pattern in compiled]
        selected = tuple(name for name in names if any(match(name) for match in matchers))

    # A pattern's matches are a subset of the selection: only that is searched.
    for text, pattern in zip(pattern_texts, compiled):
        if not any(pattern.fullmatch(name) for name in selected):
            close = difflib.get_close_matches(text, names, n=3, cutoff=0.5)
            hint = f"; closest layer names: {', '.join(map(repr, close))}" if close else ""
            raise ValueError(f"pattern {text!r} matches no layer{hint}")
    return selected


def check_same_layers(expected: tuple[str, ...], actual: tuple[str, ...], what: str) -> None:
    """Raise ValueError naming the missing and extra layers when they differ."""
    if expected == actual:
        return
    expected_set, actual_set = set(expected), set(actual)
    missing = [name for name in expected if name not in actual_set]
    extra = [name for name in actual if name not in expected_set]
    details = []
    if missing:
        details.append(f"missing from the model: {_short_list(missing)}")
    if extra:
        details.append(f"not in the state: {_short_list(extra)}")
    if not details:
        details.append("same layers in a different order")
    raise ValueError(f"{what} has different layers than the state ({'; '.join(details)})")


def _short_list(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(map(repr, names[:limit]))
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
