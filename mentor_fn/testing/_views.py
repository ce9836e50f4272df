"""Parameters, owners and layers of a model, read from torch's own registries.

The checks compare what mentor_fn built (flags, optimizer groups) with this
independent reading of the model, so a bug in mentor_fn's own traversal
cannot hide itself. Only the definition of a wrapper (DDP, compile, ...) is
shared with the library: a wrapper is transparent wherever it sits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._core.state import CurriculumState
from .._core.wrappers import unwrap_model

__all__ = ["NORM_TYPES", "ModelView", "view_model"]

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.LocalResponseNorm,
    nn.CrossMapLRN2d,
)
"""Normalization modules, by type, as the norm policy names them (docs/design.md)."""


@dataclass(frozen=True, eq=False)
class ModelView:
    """One reading of a model, as the design defines its layers (docs/design.md).

    Attributes:
        layers: root parameters first (registration order), then every module
            whose subtree holds a parameter, in ``named_modules()`` order, a
            shared module once (first path).
        parameters: every parameter once, by its first name.
        owners: ``id(parameter)`` -> the layer that owns it: the first layer
            in traversal order that registers it directly.
        names: ``id(parameter)`` -> its first name.
        modules: every module below the root once, by its first path, wrappers
            left out.
    """

    layers: tuple[str, ...]
    parameters: dict[str, nn.Parameter]
    owners: dict[int, str]
    names: dict[int, str]
    modules: dict[str, nn.Module]

    def describe(self, parameter: object) -> str:
        """``'head.weight' (layer 'head')``, or a note that it is not the model's."""
        name = self.names.get(id(parameter))
        if name is None:
            shape = tuple(getattr(parameter, "shape", ()))
            return f"a tensor of shape {shape} that is not a parameter of the model"
        return f"{name!r} (layer {self.owners[id(parameter)]!r})"

    def trains(self, state: CurriculumState, layer: str) -> bool:
        """Whether ``layer``'s parameters train under ``state``.

        When the layer is not frozen; or, under the ``"train"`` norm policy,
        when it is a normalization module (its affine parameters keep
        training inside a frozen subtree).
        """
        if not state.is_frozen(layer):
            return True
        return state.norm_policy == "train" and isinstance(self.modules.get(layer), NORM_TYPES)

    def trainable(self, state: CurriculumState) -> dict[str, nn.Parameter]:
        """The parameters that train under ``state``, by name."""
        return {
            name: parameter
            for name, parameter in self.parameters.items()
            if self.trains(state, self.owners[id(parameter)])
        }

    def frozen_statistics(self, state: CurriculumState) -> dict[str, torch.Tensor]:
        """Running statistics that must not change under ``state``, by buffer name.

        Under the ``"eval"`` norm policy, those of normalization modules inside
        frozen layers (the nearest layer at or above the module is frozen).
        """
        if state.norm_policy != "eval":
            return {}
        layers = set(self.layers)
        found = {}
        for path, module in self.modules.items():
            if not isinstance(module, NORM_TYPES):
                continue
            layer = path
            while layer and layer not in layers:
                layer = layer.rpartition(".")[0]
            if layer and state.is_frozen(layer):
                for buffer_name, buffer in module._buffers.items():
                    if buffer is not None:
                        found[f"{path}.{buffer_name}"] = buffer
        return found


def view_model(model: nn.Module) -> ModelView:
    """Read ``model``'s layers, parameter names and owners.

    Example:
        >>> from torch import nn
        >>> view = view_model(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)))
        >>> view.layers
        ('0', '2')
        >>> sorted(view.parameters)
        ['0.bias', '0.weight', '2.bias', '2.weight']
    """
    root = unwrap_model(model)
    bare_types: set[type] = set()  # types known not to be wrappers: one check per type

    def bare(module: nn.Module) -> nn.Module:
        if type(module) in bare_types:
            return module
        inner = unwrap_model(module)
        if inner is module:
            bare_types.add(type(module))
        return inner

    parameters: dict[str, nn.Parameter] = {}
    owners: dict[int, str] = {}
    names: dict[int, str] = {}
    modules: dict[str, nn.Module] = {}

    def register(module_path: str, module: nn.Module, layer: str | None) -> bool:
        """Record ``module``'s own parameters; True if it registers any."""
        registers = False
        for local_name, parameter in module._parameters.items():
            if parameter is None:
                continue
            registers = True
            if id(parameter) not in owners:
                name = f"{module_path}.{local_name}" if module_path else local_name
                owners[id(parameter)] = local_name if layer is None else layer
                names[id(parameter)] = name
                parameters[name] = parameter
        return registers

    register("", root, None)
    root_layers = [name for name, p in root._parameters.items() if p is not None]

    # Depth first in named_modules() order, each module once (first path);
    # a path is a layer when a module at or below it registers a parameter.
    seen = {id(root)}
    holding: dict[str, bool] = {}  # path -> holds a parameter in its subtree

    def visit(path: str, module: nn.Module) -> bool:
        modules[path] = module
        holding[path] = False  # reserves the path's place in traversal order
        holds = register(path, module, path)
        for child_name, child in module._modules.items():
            if child is None:
                continue
            child = bare(child)
            if id(child) not in seen:
                seen.add(id(child))
                holds = visit(f"{path}.{child_name}", child) or holds
        holding[path] = holds
        return holds

    for child_name, child in root._modules.items():
        if child is None:
            continue
        child = bare(child)
        if id(child) not in seen:
            seen.add(id(child))
            visit(child_name, child)
    layers = (*root_layers, *(path for path, holds in holding.items() if holds))
    return ModelView(layers, parameters, owners, names, modules)
