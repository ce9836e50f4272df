"""Parameters, owners and layers of a model, read from torch's own registries.

The checks compare what mentor_fn built (flags, optimizer groups) with this
independent reading of the model, so a bug in mentor_fn's own traversal
cannot hide itself. Only the definition of a wrapper (DDP, compile, ...) is
shared with the library: a wrapper is transparent wherever it sits.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .._layers import unwrap_model

__all__ = ["ModelView", "view_model"]


@dataclass(frozen=True, eq=False)
class ModelView:
    """One reading of a model, as DESIGN.md defines its layers.

    Attributes:
        layers: root parameters first (registration order), then every module
            whose subtree holds a parameter, in ``named_modules()`` order, a
            shared module once (first path).
        parameters: every parameter once, by its first name.
        owners: ``id(parameter)`` -> the layer that owns it: the first layer
            in traversal order that registers it directly.
        names: ``id(parameter)`` -> its first name.
    """

    layers: tuple[str, ...]
    parameters: dict[str, nn.Parameter]
    owners: dict[int, str]
    names: dict[int, str]

    def describe(self, parameter: object) -> str:
        """``'head.weight' (layer 'head')``, or a note that it is not the model's."""
        name = self.names.get(id(parameter))
        if name is None:
            shape = tuple(getattr(parameter, "shape", ()))
            return f"a tensor of shape {shape} that is not a parameter of the model"
        return f"{name!r} (layer {self.owners[id(parameter)]!r})"


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
    parameters: dict[str, nn.Parameter] = {}
    owners: dict[int, str] = {}
    names: dict[int, str] = {}

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
    modules: list[tuple[str, bool]] = []  # (path, holds a parameter in its subtree)

    def visit(path: str, module: nn.Module) -> bool:
        position = len(modules)
        modules.append((path, False))
        holds = register(path, module, path)
        for child_name, child in module._modules.items():
            if child is None:
                continue
            child = unwrap_model(child)
            if id(child) in seen:
                continue
            seen.add(id(child))
            holds = visit(f"{path}.{child_name}", child) or holds
        modules[position] = (path, holds)
        return holds

    for child_name, child in root._modules.items():
        if child is None:
            continue
        child = unwrap_model(child)
        if id(child) not in seen:
            seen.add(id(child))
            visit(child_name, child)
    layers = (*root_layers, *(path for path, holds in modules if holds))
    return ModelView(layers, parameters, owners, names)
