"""Walking a model once: its layers, and the parameters each layer owns.

A *layer* is a module whose subtree holds at least one parameter (root
excluded), or a parameter registered directly on the root model. A module
reachable at several paths is a layer once, at its first path, and each
parameter is owned by the first layer that registers it, so tied weights are
never in two groups. Wrappers are looked through (:mod:`.wrappers`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import compress, islice

from torch import nn

from .weight_decay import NORMALIZATION_TYPES
from .wrappers import identity, unwrap, wrapper_types

__all__ = ["ModelLayers", "layer_names", "walk_model"]


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
    wrappers = wrapper_types()
    passed: list[nn.Module] = []
    root = unwrap(model, wrappers, passed) if isinstance(model, nn.Module) else None
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
            module = unwrap(module, wrappers, passed)
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
