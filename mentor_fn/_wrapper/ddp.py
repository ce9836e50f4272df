"""DistributedDataParallel that survives phase changes, without unused-parameter detection.

DDP registers with its reducer only the parameters that require grad when it
is constructed: unfreezing one later silently desynchronizes the ranks (its
gradient is never averaged), and freezing one breaks the next reduction (the
reducer waits for a gradient that never comes). DDP's own escape,
``find_unused_parameters=True``, walks the autograd graph after every forward
to find the parameters without a gradient, a cost paid at every step to serve
a change that happens a few times a run.

Here the wrapper follows the flags instead: a forward pre-hook compares the
``requires_grad`` flags of the wrapped parameters with those the reducer was
built for (one pass over the parameter list, no graph walk) and, when they
differ, builds a new reducer for the parameters that train now, as DDP
itself does when it is unpickled. The first forward after a phase change
pays for it; every other forward pays only the comparison. All ranks must
change phase at the same step (a curriculum applies a transition on every
rank); a rank that disagrees is caught by DDP's cross-rank shape check, which
the rebuild runs, instead of desynchronizing silently.
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "adopt_ddp_wrappers",
    "follow_trainable_parameters",
    "is_following",
    "reducer_rebuilds",
    "sync_reducer",
    "wrap_ddp",
]


class _Registration:
    """The parameters a DDP wrapper reduces, and the flags its reducer was built for."""

    def __init__(self, wrapper: DistributedDataParallel, *, built_now: bool) -> None:
        ignored = wrapper.parameters_to_ignore
        self.parameters = [
            parameter
            for name, parameter in wrapper.module.named_parameters()
            if name not in ignored
        ]
        # The flags the reducer was built for: known when it was built just
        # now; otherwise unknown (flags may have changed since the wrapper
        # was made), and the first forward with gradients rebuilds it.
        self.flags: list[bool] | None = self.current_flags() if built_now else None
        self.rebuilds = 0

    def current_flags(self) -> list[bool]:
        return [parameter.requires_grad for parameter in self.parameters]


# Wrappers whose reducer follows the flags, by weak reference: nothing is
# written onto the user's object but the hook.
_FOLLOWED: WeakKeyDictionary[DistributedDataParallel, _Registration] = WeakKeyDictionary()


def follow_trainable_parameters(
    wrapper: DistributedDataParallel, *, built_now: bool = False
) -> None:
    """Make ``wrapper`` rebuild its reducer whenever the trainable parameters change.

    Idempotent. The check runs before each forward with gradients enabled
    (a forward without them prepares no reduction), so a phase change between
    two steps is registered before the next backward. ``built_now``: the
    wrapper was constructed just now, with the flags the parameters have; else
    the first forward with gradients rebuilds the reducer once, whatever the
    flags were at construction.

    Raises:
        ValueError: a wrapper whose reducer cannot be rebuilt as it was made:
            ``static_graph=True`` (the graph changes with each phase), DDP's
            private mixed precision or delayed all-reduce, or a built-in
            communication hook (only Python hooks are recorded by DDP, so only
            they can be registered again).
    """
    if not isinstance(wrapper, DistributedDataParallel):
        raise TypeError(f"expected a DistributedDataParallel, got {type(wrapper).__name__}")
    if wrapper in _FOLLOWED:
        return
    _check_rebuildable(wrapper)
    _FOLLOWED[wrapper] = _Registration(wrapper, built_now=built_now)
    wrapper.register_forward_pre_hook(_before_forward, prepend=True)


def is_following(wrapper: DistributedDataParallel) -> bool:
    """Whether ``wrapper``'s reducer follows the trainable parameters (see above)."""
    return wrapper in _FOLLOWED


def reducer_rebuilds(wrapper: DistributedDataParallel) -> int:
    """How many times the reducer of a followed ``wrapper`` was rebuilt (0 if not followed)."""
    registration = _FOLLOWED.get(wrapper)
    return 0 if registration is None else registration.rebuilds


def _check_rebuildable(wrapper: DistributedDataParallel) -> None:
    problem = None
    if wrapper.static_graph:
        problem = "static_graph=True (each phase change changes which parameters get gradients)"
    elif getattr(wrapper, "mixed_precision", None) is not None:
        problem = "DDP's mixed_precision (use torch.autocast instead)"
    elif getattr(wrapper, "_delay_all_reduce_params", None):
        problem = "delay_all_reduce_named_params"
    else:
        hook_name = _comm_hook_name(wrapper)
        recorded = {hook.__qualname__ for hook, _ in getattr(wrapper, "_comm_hooks", [])}
        if hook_name and hook_name not in recorded:
            problem = (
                f"the built-in communication hook {hook_name} (register a Python hook instead)"
            )
    if problem is not None:
        raise ValueError(
            f"this DistributedDataParallel wrapper cannot follow phase changes: it uses {problem}. "
            "Wrap the model with mentor_fn.wrap_ddp(model, ...) without it."
        )


def _comm_hook_name(wrapper: DistributedDataParallel) -> str:
    """The name of the communication hook DDP logged as registered ("" for none)."""
    if getattr(wrapper, "logger", None) is None:
        return ""
    return str(wrapper._get_ddp_logging_data().get("comm_hook", "") or "")


def _before_forward(wrapper: nn.Module, inputs: Any) -> None:
    """Forward pre-hook of a followed wrapper."""
    if torch.is_grad_enabled():  # else no reduction follows this forward
        sync_reducer(wrapper)  # type: ignore[arg-type]


def sync_reducer(wrapper: DistributedDataParallel) -> None:
    """Rebuild a followed wrapper's reducer if the trainable parameters changed since it
    was built (what its forward pre-hook does; a no-op for a wrapper not followed)."""
    registration = _FOLLOWED.get(wrapper)
    if registration is None:
        return
    flags = registration.current_flags()
    if flags == registration.flags:
        return
    _rebuild_reducer(wrapper)
    registration.flags = flags
    registration.rebuilds += 1


def _rebuild_reducer(wrapper: DistributedDataParallel) -> None:
    """Build a new reducer for the parameters that require grad now (DDP's own unpickling
    path), check across ranks that they are the same, and register the Python
    communication hooks again. The old reducer removes its autograd hooks when
    it is released."""
    from torch.distributed.utils import _verify_param_shape_across_processes

    parameters, expect_sparse_gradient = wrapper._build_params_for_reducer()
    if not parameters:
        raise RuntimeError(
            "every parameter under DistributedDataParallel is frozen: there is nothing to train "
            "and nothing to reduce (unfreeze a layer, or stop training)"
        )
    # A collective: every rank must train the same parameters (same shapes, same order).
    _verify_param_shape_across_processes(wrapper.process_group, parameters)
    names = wrapper._build_debug_param_to_name_mapping(parameters)
    wrapper._ddp_init_helper(parameters, expect_sparse_gradient, names, wrapper.static_graph)
    for hook, state in getattr(wrapper, "_comm_hooks", []):
        torch.distributed._register_comm_hook(wrapper.reducer, state, hook)
    wrapper._has_rebuilt_buckets = False


def wrap_ddp(module: nn.Module, **ddp_kwargs: Any) -> DistributedDataParallel:
    """``DistributedDataParallel(module, ...)`` that survives freezing and unfreezing.

    The wrapper's reducer follows the trainable parameters: before the first
    forward after a phase change it is rebuilt for the parameters that train
    now (see :func:`follow_trainable_parameters`), so DDP needs no
    unused-parameter detection (``find_unused_parameters`` keeps its default,
    False; pass True only for a model that itself skips parameters in some
    forwards). A module with no trainable parameter yet is wrapped with every
    parameter trainable (DDP refuses otherwise), then its flags are restored.

    Raises:
        ValueError: ``static_graph=True`` or DDP's private mixed precision or
            delayed all-reduce options, which a rebuilt reducer cannot keep.

    Example:
        >>> # under an initialized process group
        >>> ddp = wrap_ddp(model)                      # doctest: +SKIP
        >>> curriculum = Curriculum(ddp, lr=1e-3)      # doctest: +SKIP
    """
    if ddp_kwargs.get("static_graph"):
        raise ValueError(
            "wrap_ddp cannot use static_graph=True: each phase change changes which parameters "
            "get gradients"
        )
    flags = [(parameter, parameter.requires_grad) for parameter in module.parameters()]
    none_trainable = not any(flag for _, flag in flags)
    if none_trainable:
        for parameter, _ in flags:
            parameter.requires_grad_(True)
    try:
        wrapped = DistributedDataParallel(module, **ddp_kwargs)
    finally:
        if none_trainable:
            for parameter, flag in flags:
                parameter.requires_grad_(flag)
    follow_trainable_parameters(wrapped, built_now=not none_trainable)
    return wrapped


def adopt_ddp_wrappers(model: nn.Module) -> None:
    """Make every DistributedDataParallel wrapper in ``model`` follow phase changes.

    Called by :class:`~mentor_fn.Curriculum` on the model it is given: a
    wrapper made by :func:`wrap_ddp` already follows; any other one is made to
    (see :func:`follow_trainable_parameters`), whatever was frozen when it
    was constructed and whether or not it detects unused parameters.

    Raises:
        ValueError: a wrapper that cannot follow (``static_graph=True``, DDP's
            private mixed precision, a built-in communication hook), naming it
            and the fix.
    """
    for module in model.modules():
        if isinstance(module, DistributedDataParallel):
            follow_trainable_parameters(module)
