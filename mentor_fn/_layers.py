"""Layers of a model: names, ownership of parameters, and pattern selection.

A *layer* is a module whose subtree holds at least one parameter (root
excluded), or a parameter registered directly on the root model. Names never
depend on wrappers (DDP, DataParallel, ``torch.compile``, FSDP1): a wrapper is
transparent, detected by its type.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import compress, islice

from torch import nn

from ._patterns import compiled, no_match_error
from ._weight_decay import NORMALIZATION_TYPES

__all__ = [
    "ModelLayers",
    "bare_named_modules",
    "layer_names",
    "select_layers",
    "short_list",
    "unwrap_model",
    "walk_model",
    "wrappers_around",
]

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


def identity(value: object) -> int:
    """A key for ``value``'s identity that hashes well: ``id(value) >> 4``.

    Objects are 16-byte aligned, so every ``id`` is a multiple of 16, and an
    int hashes to itself: sets and dicts keyed by plain ids use one slot in 16
    on the first probe and collide. Shifted, neighbouring objects spread over
    neighbouring slots (a third faster walk of a 10k-layer model). Unique
    among live objects, like ``id``.
    """
    return id(value) >> 4


def _wrapper_types() -> tuple[tuple[type, str], ...]:
    found = list(_EAGER_WRAPPERS)
    for module_name, type_name, attribute in _LAZY_WRAPPERS:
        module = sys.modules.get(module_name)
        wrapper_type = getattr(module, type_name, None) if module is not None else None
        if isinstance(wrapper_type, type):
            found.append((wrapper_type, attribute))
    return tuple(found)


def _unwrap(
    module: nn.Module,
    wrappers: tuple[tuple[type, str], ...],
    passed: list[nn.Module] | None = None,
) -> nn.Module:
    """The module inside ``module``'s wrappers; each wrapper is appended to ``passed``."""
    while True:
        for wrapper_type, attribute in wrappers:
            if isinstance(module, wrapper_type):
                if passed is not None:
                    passed.append(module)
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
        parameters: for each layer, the parameters it owns, in registration order.
        modules: for each layer, the module that registers its parameters
            (the root for a root parameter's layer). Names are read from it
            only when asked for (:attr:`local_names`, :meth:`named_parameters`):
            building the optimizer needs none, and recording them costs a
            tenth of the traversal.
        root_parameter_count: how many leading layers are parameters
            registered directly on the root (their layer name is their name).
        wrappers: the wrapper modules (DDP, compile, ...) looked through, in
            traversal order, the model's own first.
    """

    layers: tuple[str, ...]
    parameters: tuple[tuple[nn.Parameter, ...], ...]
    modules: tuple[nn.Module, ...]
    root_parameter_count: int
    wrappers: tuple[nn.Module, ...] = ()

    @property
    def parameter_owners(self) -> frozenset[str]:
        """Layers that own at least one parameter."""
        return frozenset(
            name for name, parameters in zip(self.layers, self.parameters) if parameters
        )

    @functools.cached_property
    def norm_layers(self) -> frozenset[str]:
        """Layers whose module is a normalization module, by type (BatchNorm, LayerNorm, ...).

        A parameter registered on the root is a layer of its own, never a
        norm layer, even when the root itself is a normalization module.
        """
        # Decided once per module type, in C-level passes: every Curriculum
        # derives this at its first build, and most models have few types.
        start = self.root_parameter_count
        module_types = list(map(type, self.modules[start:]))
        norm_types = {
            module_type
            for module_type in set(module_types)
            if issubclass(module_type, NORMALIZATION_TYPES)
        }
        if not norm_types:
            return frozenset()
        return frozenset(compress(self.layers[start:], map(norm_types.__contains__, module_types)))

    @property
    def owned(self) -> tuple[tuple[tuple[str, nn.Parameter], ...], ...]:
        """For each layer, its ``(full parameter name, parameter)`` pairs."""
        named = self.named_parameters()
        return tuple(
            tuple((name, parameter) for _, name, parameter in islice(named, len(parameters)))
            for parameters in self.parameters
        )

    @functools.cached_property
    def local_names(self) -> tuple[tuple[str, ...], ...]:
        """For each layer, the names its parameters are registered under on their module.

        Read from the modules on first access: the model must not have changed
        since the walk.

        Raises:
            RuntimeError: a parameter is no longer registered on its module.
        """
        return tuple(
            _registered_names(module, parameters, layer)
            for layer, module, parameters in zip(self.layers, self.modules, self.parameters)
        )

    def named_parameters(self) -> Iterator[tuple[str, str, nn.Parameter]]:
        """Yield ``(layer, full parameter name, parameter)`` for every owned parameter.

        Full names are the bare model's (``"encoder.0.weight"``), as in
        ``model.named_parameters()``.
        """
        for position, (layer, parameters, names) in enumerate(
            zip(self.layers, self.parameters, self.local_names)
        ):
            if position < self.root_parameter_count:
                for parameter in parameters:
                    yield layer, layer, parameter
            else:
                for name, parameter in zip(names, parameters):
                    yield layer, f"{layer}.{name}", parameter


def _registered_names(
    module: nn.Module, parameters: tuple[nn.Parameter, ...], layer: str
) -> tuple[str, ...]:
    if not parameters:
        return ()
    names: dict[int, str] = {}
    for name, parameter in module._parameters.items():
        if parameter is not None:
            names.setdefault(id(parameter), name)  # the first name, as the walk kept
    try:
        return tuple(names[id(parameter)] for parameter in parameters)
    except KeyError:
        raise RuntimeError(
            f"a parameter of layer {layer!r} is no longer registered on its module: the model "
            "changed after it was walked"
        ) from None


def walk_model(model: nn.Module) -> ModelLayers:
    """Traverse ``model`` once: its layers and the parameters each one owns.

    A module reachable at several paths is visited once, at its first path; a
    parameter registered at several places is owned by the first layer (in
    traversal order) that registers it. Wrappers are looked through.
    """
    wrappers = _wrapper_types()
    passed: list[nn.Module] = []
    root = _unwrap(model, wrappers, passed) if isinstance(model, nn.Module) else None
    if root is None:
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")

    seen_parameters: set[int] = set()
    layers: list[str] = []
    parameters_of: list[tuple[nn.Parameter, ...]] = []
    modules_of: list[nn.Module] = []

    for name, parameter in root._parameters.items():
        if parameter is None or identity(parameter) in seen_parameters:
            continue
        seen_parameters.add(identity(parameter))
        layers.append(name)
        parameters_of.append((parameter,))
        modules_of.append(root)
    root_parameter_count = len(layers)

    # Pre-order traversal. A module is appended when first visited and taken
    # out again (with its subtree) once its subtree turned out to register no
    # parameter. Recursion allocates less than an explicit stack of (path,
    # module) entries, and nests no deeper than named_modules' own generators:
    # a model too deep for this (about 1,000 levels) is too deep for torch.
    # Whether a module is a wrapper is decided once per type: isinstance
    # against the wrapper types (DDP's metaclass is ABCMeta) costs far more
    # than a dict lookup, and this runs once per module.
    is_wrapper_type: dict[type, bool] = {}
    seen_modules: set[int] = {identity(root)}
    no_parameters: tuple[()] = ()

    def visit(path: str, module: nn.Module) -> bool:
        """Add ``module``'s subtree; return whether it registers a parameter."""
        module_type = type(module)
        is_wrapper = is_wrapper_type.get(module_type)
        if is_wrapper is None:
            is_wrapper = any(isinstance(module, wrapper_type) for wrapper_type, _ in wrappers)
            is_wrapper_type[module_type] = is_wrapper
        if is_wrapper:
            module = _unwrap(module, wrappers, passed)
        key = identity(module)
        if key in seen_modules:
            return False
        seen_modules.add(key)
        slot = len(layers)
        layers.append(path)
        modules_of.append(module)
        registered = module._parameters
        registers = False
        if registered:
            mine: list[nn.Parameter] = []
            for parameter in registered.values():
                if parameter is None:
                    continue
                registers = True
                key = identity(parameter)
                if key not in seen_parameters:
                    seen_parameters.add(key)
                    mine.append(parameter)
            parameters_of.append(tuple(mine))
        else:
            parameters_of.append(no_parameters)
        children = module._modules
        if children:
            prefix = path + "."
            for name, child in children.items():
                if child is not None and visit(prefix + name, child):
                    registers = True
        if not registers:
            del layers[slot:], parameters_of[slot:], modules_of[slot:]
        return registers

    for name, child in root._modules.items():
        if child is not None:
            visit(name, child)
    return ModelLayers(
        layers=tuple(layers),
        parameters=tuple(parameters_of),
        modules=tuple(modules_of),
        root_parameter_count=root_parameter_count,
        wrappers=tuple(passed),
    )


def bare_named_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every module below ``model``'s bare root once, at its first path, wrappers looked through.

    Paths are spelled as layer names are (``"backbone.0"``, never
    ``"module.backbone.0"`` or ``"_orig_mod.backbone.0"``), in
    ``named_modules()`` order; a wrapper held by a child is looked through
    too. The root itself is not yielded.
    """
    wrappers = _wrapper_types()
    root = _unwrap(model, wrappers)
    seen = {identity(root)}
    # An explicit stack, children pushed in reverse: pre-order, as named_modules().
    stack = [(name, child) for name, child in reversed(root._modules.items()) if child is not None]
    while stack:
        path, module = stack.pop()
        module = _unwrap(module, wrappers)
        key = identity(module)
        if key in seen:
            continue
        seen.add(key)
        yield path, module
        stack.extend(
            (f"{path}.{name}", child)
            for name, child in reversed(module._modules.items())
            if child is not None
        )


def wrappers_around(model: nn.Module) -> tuple[nn.Module, ...]:
    """The wrapper modules around ``model``'s bare module, outermost first (no traversal)."""
    passed: list[nn.Module] = []
    _unwrap(model, _wrapper_types(), passed)
    return tuple(passed)


Lookup = tuple[nn.Module, str, str, object]
"""``(module, "_modules" or "_parameters", key, expected)``: one registry lookup."""


def registration_lookups(
    model: nn.Module, layer: str, parameter: nn.Parameter
) -> tuple[Lookup, ...] | None:
    """The registry lookups that lead from ``model`` to ``parameter`` of ``layer``.

    Every hop from ``model`` (wrappers included) down to the module that
    registers ``parameter``, then the parameter itself. While
    :func:`lookups_hold` says they all still hold, ``layer`` still registers
    ``parameter`` at the same place: checking costs a few dict lookups, not a
    traversal. None if ``layer`` does not register ``parameter``.
    """
    wrappers = _wrapper_types()
    lookups: list[Lookup] = []
    current = model

    def descend(key: str) -> bool:
        nonlocal current
        child = current._modules.get(key)
        if child is None:
            return False
        lookups.append((current, "_modules", key, child))
        current = child
        return True

    def through_wrappers() -> bool:
        while True:
            attribute = next((name for kind, name in wrappers if isinstance(current, kind)), None)
            if attribute is None:
                return True
            if not descend(attribute):
                return False

    if not through_wrappers():
        return None
    if layer in current._parameters:  # a parameter of the root is a layer of its own
        key: str | None = layer if current._parameters[layer] is parameter else None
    else:
        for part in layer.split("."):
            if not (descend(part) and through_wrappers()):
                return None
        key = next(
            (name for name, value in current._parameters.items() if value is parameter), None
        )
    if key is None:
        return None
    lookups.append((current, "_parameters", key, parameter))
    return tuple(lookups)


def lookups_hold(lookups: tuple[Lookup, ...]) -> bool:
    """Whether every registry lookup still finds what it found."""
    for module, registry, key, expected in lookups:
        if getattr(module, registry).get(key) is not expected:
            return False
    return True


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
