"""Model wrappers (DDP, DataParallel, ``torch.compile``, FSDP1), looked through by type.

A wrapper only forwards to the module it wraps, so it is transparent to a
curriculum: layer names and parameter ownership are the bare model's.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

from torch import nn

__all__ = [
    "bare_named_modules",
    "identity",
    "unwrap",
    "unwrap_model",
    "wrapper_types",
    "wrappers_around",
]

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


def wrapper_types() -> tuple[tuple[type, str], ...]:
    found = list(_EAGER_WRAPPERS)
    for module_name, type_name, attribute in _LAZY_WRAPPERS:
        module = sys.modules.get(module_name)
        wrapper_type = getattr(module, type_name, None) if module is not None else None
        if isinstance(wrapper_type, type):
            found.append((wrapper_type, attribute))
    return tuple(found)


def unwrap(
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
    return unwrap(model, wrapper_types())


def bare_named_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every module below ``model``'s bare root once, at its first path, wrappers looked through.

    Paths are spelled as layer names are (``"backbone.0"``, never
    ``"module.backbone.0"`` or ``"_orig_mod.backbone.0"``), in
    ``named_modules()`` order; a wrapper held by a child is looked through
    too. The root itself is not yielded.
    """
    wrappers = wrapper_types()
    root = unwrap(model, wrappers)
    seen = {identity(root)}
    # An explicit stack, children pushed in reverse: pre-order, as named_modules().
    stack = [(name, child) for name, child in reversed(root._modules.items()) if child is not None]
    while stack:
        path, module = stack.pop()
        module = unwrap(module, wrappers)
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
    unwrap(model, wrapper_types(), passed)
    return tuple(passed)
