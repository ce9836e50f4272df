"""The model a torch_mentor checkpoint describes, as a conversion needs it.

Converting needs to know which of the file's tensors are parameters (they get
layers, optimizer groups, moments) and which are buffers. A torch_mentor file
does not say; the model does. With the model (``model=``), a copy of it holds
the file's weights. Without it, a *skeleton* is built from the file: plain
modules along the paths of the tensors taken as parameters, holding the
file's tensors (no copy). A tensor is taken as a buffer when its dtype cannot
be a parameter's (integers, bools), when its module is not among the file's
``layer_names`` (torch_mentor lists every module whose subtree holds a
parameter), or when it is a normalization layer's running statistic; every
other one is a parameter. The skeleton's layers must then be the file's own
(parameters registered on the model itself first), which catches most
misjudgements; what is left (a floating-point buffer of one's own beside
parameters) is caught when the converted file is resumed into the real model,
and ``model=`` settles it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .._core.model_walk import layer_names
from .checkpoint import CheckpointError

__all__ = ["model_of_file"]

# Buffers of torch's normalization layers that hold floating-point values.
_RUNNING_STATISTICS = frozenset({"running_mean", "running_var"})


def model_of_file(
    weights: Mapping[str, torch.Tensor],
    module_layers: Sequence[str],
    *,
    model: nn.Module | None,
    where: str,
) -> nn.Module:
    """A module holding ``weights`` whose layers are the file's.

    Args:
        weights: the file's state dict.
        module_layers: torch_mentor's ``layer_names`` (modules only).
        model: the model the file was saved from (it is not changed), or None.
        where: the file, for messages.

    Raises:
        CheckpointError: the weights do not fit ``model``, or the layers the
            weights describe are not the file's.
    """
    built = (
        _loaded_copy(model, weights, where)
        if model is not None
        else _skeleton(weights, frozenset(module_layers))
    )
    on_root = {name for name, _ in built.named_parameters(recurse=False)}
    modules = [layer for layer in layer_names(built) if layer not in on_root]
    if modules != list(module_layers):
        hint = (
            "the file was not saved from this model"
            if model is not None
            else "the file's tensors could not be told apart into parameters and buffers "
            "(shared modules, or buffers of one's own?): pass the model, "
            "convert_torch_mentor_checkpoint(..., model=YourModel(...))"
        )
        raise CheckpointError(
            f"torch_mentor checkpoint {where!r}: its layer_names {list(module_layers)[:8]} are "
            f"not the layers its weights describe {modules[:8]}: {hint}"
        )
    return built


def _loaded_copy(model: nn.Module, weights: Mapping[str, torch.Tensor], where: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module (or None), got {type(model).__name__}")
    expected = model.state_dict()
    missing = [name for name in expected if name not in weights]
    extra = [name for name in weights if name not in expected]
    reshaped = [
        f"{name} (file {list(weights[name].shape)}, model {list(tensor.shape)})"
        for name, tensor in expected.items()
        if name in weights and weights[name].shape != tensor.shape
    ]
    details = [
        f"{what}: {', '.join(names[:8])}"
        for what, names in (
            ("weights the file lacks", missing),
            ("weights the model lacks", extra),
            ("shapes differ", reshaped),
        )
        if names
    ]
    if details:
        raise CheckpointError(
            f"torch_mentor checkpoint {where!r} does not fit the model given ("
            + "; ".join(details)
            + ")"
        )
    copied = copy.deepcopy(model)
    copied.load_state_dict(dict(weights))
    return copied


def _skeleton(weights: Mapping[str, torch.Tensor], module_layers: frozenset[str]) -> nn.Module:
    root = nn.Module()
    seen: dict[tuple[int, int, tuple[int, ...]], nn.Parameter] = {}
    for name, tensor in weights.items():
        path, _, leaf = name.rpartition(".")
        if not _is_parameter(leaf, tensor) or (path and path not in module_layers):
            continue  # a module not in layer_names holds no parameter
        module = root
        for part in path.split(".") if path else ():
            child = dict(module.named_children()).get(part)
            if child is None:
                child = nn.Module()
                module.add_module(part, child)
            module = child
        # torch.load keeps tied tensors shared: a tied weight is one parameter.
        key = (
            tensor.untyped_storage().data_ptr(),
            int(tensor.storage_offset()),
            tuple(tensor.shape),
        )
        parameter = seen.get(key)
        if parameter is None:
            parameter = seen[key] = nn.Parameter(tensor, requires_grad=True)
        module.register_parameter(leaf, parameter)
    return root


def _is_parameter(leaf: str, tensor: torch.Tensor) -> bool:
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return False
    return leaf not in _RUNNING_STATISTICS
