"""A DeepSpeed engine's ZeRO optimizer, re-initialized for new parameter groups with state carried.

DeepSpeed's ZeRO optimizers flatten each parameter group's trainable
parameters into one buffer and partition it across the ranks when they are
constructed; the base (torch) optimizer then steps one flat partition per
group. So a parameter that becomes trainable later is ignored (ZeRO-3) or
breaks the next step (ZeRO-1/2), and a frozen parameter left in a flat group
is still moved by its momentum (its gradient reads as zeros). A change of the
trainable set is executed here by constructing a new ZeRO optimizer inside the
same engine, as ``deepspeed.initialize`` constructs the first one, and moving
every carried parameter's fp32 master weights and optimizer state into it with
DeepSpeed's own per-parameter accessors:

* ZeRO-3 partitions each parameter on its own, the same way before and after,
  so each rank copies its local partition (``get_local_fp32_param`` /
  ``set_local_hp_param``): no communication.
* ZeRO-1/2 partition the flat group, whose layout changes, so each carried
  tensor is gathered whole (``get_full_hp_param``) and each rank keeps its new
  fragment (``safe_set_full_fp32_param`` / ``safe_set_full_optimizer_state``),
  one parameter at a time.

Both are exact copies (fp32 in, fp32 out). The base optimizer keeps one set of
per-group values (Adam's ``step``) for each flat partition, so a ZeRO group
never mixes parameters whose values differ: :func:`zero_layout` splits a
group's parameters by the ZeRO group they come from, and newcomers (fresh
state, as a new torch optimizer gives them) go apart.

The engine internals this relies on (``DeepSpeedEngine._configure_optimizer``,
the ZeRO optimizers' flat partitions and hp mappings) are DeepSpeed 0.19's;
:func:`check_engine_internals` names what is missing on another version.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state  # type: ignore[import-untyped,import-not-found,unused-ignore]
from torch import nn

__all__ = [
    "ZeroGroup",
    "check_engine_internals",
    "is_stage3",
    "link_state",
    "optimizer_bytes",
    "reinitialize",
    "same_groups",
    "zero_layout",
]

_FP32 = None
"""The optimizer-state key under which the accessors read and write the fp32 master weights."""


@dataclass(frozen=True, eq=False)
class ZeroGroup:
    """One group of the ZeRO optimizer.

    Attributes:
        source: the index of the curriculum optimizer's group it takes its
            hyperparameters (lr, weight decay, ...) from.
        parameters: its parameters, all trainable.
        origin: the index of the ZeRO group of the previous layout whose state
            its parameters carry, or None: fresh state.
    """

    source: int
    parameters: tuple[nn.Parameter, ...]
    origin: int | None


def zero_layout(
    groups: Sequence[Mapping[str, Any]], previous: Sequence[ZeroGroup] | None
) -> tuple[ZeroGroup, ...]:
    """The ZeRO groups for the curriculum optimizer's ``groups`` and the flags they have now.

    One ZeRO group per curriculum group with trainable parameters, split by
    the previous ZeRO group each parameter comes from (``None``: it was not
    trainable, or there is no previous layout), in order of first appearance.
    Frozen parameters and parameter-less groups (the reference group) get none.
    """
    origin_of = {
        id(parameter): index
        for index, group in enumerate(previous or ())
        for parameter in group.parameters
    }
    layout: list[ZeroGroup] = []
    for source, group in enumerate(groups):
        split: dict[int | None, list[nn.Parameter]] = {}
        for parameter in group["params"]:
            if parameter.requires_grad:
                split.setdefault(origin_of.get(id(parameter)), []).append(parameter)
        layout.extend(ZeroGroup(source, tuple(params), origin) for origin, params in split.items())
    return tuple(layout)


def same_groups(first: Sequence[ZeroGroup], second: Sequence[ZeroGroup]) -> bool:
    """Whether two layouts hold the same parameters in the same groups (origins aside)."""
    return len(first) == len(second) and all(
        a.source == b.source
        and len(a.parameters) == len(b.parameters)
        and all(p is q for p, q in zip(a.parameters, b.parameters, strict=True))
        for a, b in zip(first, second, strict=True)
    )


def is_stage3(zero_optimizer: Any) -> bool:
    """Whether the engine's optimizer is ZeRO-3's (it partitions parameters one by one)."""
    return hasattr(zero_optimizer, "fp32_partitioned_groups_flat")


def _flat_partitions(zero_optimizer: Any) -> list[tuple[int, torch.Tensor]]:
    """(group index, this rank's fp32 flat partition) of each group the base optimizer steps.

    ZeRO-3 may cut a group into several sub-groups (``sub_group_size``);
    ZeRO-1/2 (and DeepSpeed's bf16 optimizer) keep one partition per group in
    the base optimizer's group.
    """
    if is_stage3(zero_optimizer):
        return [
            (zero_optimizer.sub_group_to_group_id[index], flat)
            for index, flat in enumerate(zero_optimizer.fp32_partitioned_groups_flat)
        ]
    return [
        (index, group["params"][0])
        for index, group in enumerate(zero_optimizer.optimizer.param_groups)
    ]


@dataclass(frozen=True)
class _GroupState:
    """What a ZeRO group's base optimizer state holds: per-element keys, and the rest."""

    element_keys: tuple[str, ...]  # tensors shaped like the flat partition (Adam's moments)
    values: dict[str, Any]  # the others, one value per group (Adam's step)


def _group_states(zero_optimizer: Any) -> dict[int, _GroupState]:
    """The state of each group that has some (a group never stepped has none)."""
    states: dict[int, _GroupState] = {}
    base_state = zero_optimizer.optimizer.state
    for index, flat in _flat_partitions(zero_optimizer):
        values = base_state.get(flat)
        if not values or index in states:
            continue
        element_keys = tuple(
            key
            for key, value in values.items()
            if isinstance(value, torch.Tensor) and value.shape == flat.shape
        )
        others = {
            key: value.clone() if isinstance(value, torch.Tensor) else value
            for key, value in values.items()
            if key not in element_keys
        }
        states[index] = _GroupState(element_keys, others)
    return states


def reinitialize(
    engine: Any,
    layout: Sequence[ZeroGroup],
    hyperparameters: Sequence[Mapping[str, Any]],
    *,
    make_optimizer: Callable[[list[dict[str, Any]]], torch.optim.Optimizer],
    carry: bool,
) -> None:
    """Replace the engine's ZeRO optimizer with one over ``layout``, carrying state.

    Args:
        engine: the DeepSpeed engine.
        layout: the new groups; ``origin`` indexes the engine's current groups.
        hyperparameters: per group of ``layout``, its keys other than ``params``.
        make_optimizer: builds the torch optimizer ZeRO wraps from group dicts.
        carry: move the fp32 master weights and optimizer state of every
            parameter with an origin (False: everything starts fresh, as in a
            new phase; the master weights are the model's).

    Every rank must call it with the same layout (collective under ZeRO-1/2).
    """
    old = engine.optimizer
    stage3 = is_stage3(old)
    old_states = _group_states(old) if carry else {}
    carried = [
        (parameter, old_states[group.origin])
        for group in layout
        if group.origin in old_states
        for parameter in group.parameters
    ]
    kept = {id(parameter) for group in layout for parameter in group.parameters}
    leaving = [
        parameter for group in _old_groups(old) for parameter in group if id(parameter) not in kept
    ]
    # ZeRO-1/2 read a parameter's partition through its hp mapping, which the
    # new optimizer replaces: keep the old ones to read from, linked to the
    # state as it is now (ZeRO links them once, after its first group's first
    # step, when the other groups have no state yet).
    link_state(old)
    old_mappings = (
        {} if stage3 else {id(parameter): _mapping(parameter) for parameter, _ in carried}
    )
    loss_scaler = getattr(old, "loss_scaler", None)
    old.destroy()  # its hooks; its partitions and state stay readable until dropped
    basic = make_optimizer(
        [
            {**hyper, "params": list(group.parameters)}
            for group, hyper in zip(layout, hyperparameters, strict=True)
        ]
    )
    _replace_optimizer(engine, basic)
    new = engine.optimizer
    if loss_scaler is not None and getattr(new, "dynamic_loss_scale", False):
        new.loss_scaler = loss_scaler  # fp16: the scale found so far, not a fresh search
    _create_state(new, layout, old_states)
    for parameter, group_state in carried:
        for key in (_FP32, *group_state.element_keys):
            if stage3:
                new.set_local_hp_param(old.get_local_fp32_param(parameter, key), parameter, key)
            else:
                full = _read_full(parameter, old_mappings[id(parameter)], key)
                if key is _FP32:
                    safe_set_full_fp32_param(parameter, full)
                else:
                    safe_set_full_optimizer_state(parameter, full, key)
    for parameter in leaving:
        _own_storage(parameter, stage3)
    _release(old)


def _release(zero_optimizer: Any) -> None:
    """Let go of a replaced ZeRO optimizer's buffers now, not at the next full garbage collection.

    It sits in reference cycles (bound methods and closures among its own
    attributes) that only a full collection finds, which takes as long as the
    process has objects (a second here); emptying its attributes frees its
    flat partitions, gradients and state at once. It is unusable afterwards,
    as a replaced optimizer is anyway.
    """
    base = zero_optimizer.optimizer
    base.state.clear()
    base.param_groups.clear()
    vars(zero_optimizer).clear()


def _old_groups(zero_optimizer: Any) -> Iterator[Sequence[nn.Parameter]]:
    """The model parameters in each group of a ZeRO optimizer."""
    if is_stage3(zero_optimizer):
        yield from zero_optimizer.fp16_groups
    elif hasattr(zero_optimizer, "bit16_groups"):
        yield from zero_optimizer.bit16_groups
    else:  # DeepSpeed's bf16 optimizer
        yield from zero_optimizer.bf16_groups


def _replace_optimizer(engine: Any, basic: torch.optim.Optimizer) -> None:
    """What ``DeepSpeedEngine.__init__`` does with a client optimizer, done again."""
    engine._configure_optimizer(basic, None)
    engine.client_optimizer = basic  # the first client optimizer holds the first partitions
    if getattr(engine, "_support_torch_style_backward", False):
        engine.optimizer.register_grad_acc_post_hook(engine._backward_post_hook)


def _create_state(
    zero_optimizer: Any, layout: Sequence[ZeroGroup], old_states: Mapping[int, _GroupState]
) -> None:
    """Give each carrying group's flat partition the keys its origin had: zeros per element
    (the accessors fill them), the other values copied; newcomer groups get none (fresh)."""
    base_state = zero_optimizer.optimizer.state
    for index, flat in _flat_partitions(zero_optimizer):
        origin = layout[index].origin
        if origin is None or origin not in old_states:
            continue
        group_state = old_states[origin]
        values: dict[str, Any] = {key: torch.zeros_like(flat) for key in group_state.element_keys}
        for key, value in group_state.values.items():
            values[key] = value.clone() if isinstance(value, torch.Tensor) else value
        base_state[flat] = values
    link_state(zero_optimizer)


def link_state(zero_optimizer: Any) -> None:
    """Point ZeRO-1/2's per-parameter hp mappings at the base optimizer's state as it is now.

    ZeRO-1/2 link them once, right after the first group's first step, when
    the other groups have no state yet, and the accessors need them before
    any step too (after a rebuild, after loading a checkpoint). The link is
    made again after the next step.
    ZeRO-3 reads the state directly: nothing to do.
    """
    link = getattr(zero_optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:
        zero_optimizer._hp_optimizer_states_linked = False
        link()
        zero_optimizer._hp_optimizer_states_linked = False


def _mapping(parameter: nn.Parameter) -> Any:
    """ZeRO-1/2's link from a parameter to its fragment of the flat partitions (None: no fragment
    on this rank)."""
    return parameter._hp_mapping  # type: ignore[attr-defined]


def _read_full(parameter: nn.Parameter, mapping: Any, key: str | None) -> torch.Tensor:
    """The whole of ``parameter``'s ``key`` (None: fp32 master weights) through an old hp mapping.

    Collective: every rank adds its fragment (a rank holding none adds zeros).
    """
    current = parameter._hp_mapping  # type: ignore[attr-defined]
    parameter._hp_mapping = mapping  # type: ignore[attr-defined]
    try:
        return parameter.get_full_hp_param(key).clone()  # type: ignore[attr-defined]
    finally:
        parameter._hp_mapping = current  # type: ignore[attr-defined]


def _own_storage(parameter: nn.Parameter, stage3: bool) -> None:
    """Give a parameter that left the optimizer its own storage.

    ZeRO flattened it into a buffer shared with its group; left pointing
    there, it would keep the whole old buffer alive.
    """
    if stage3:
        parameter.ds_tensor.data = parameter.ds_tensor.data.clone()  # type: ignore[attr-defined]
    else:
        parameter.data = parameter.data.clone()


def optimizer_bytes(zero_optimizer: Any) -> int:
    """Bytes of the fp32 master partitions and the base optimizer's state on this rank.

    What ZeRO partitions as "optimizer states" (for Adam: master weights and
    two moments, 12 bytes per trainable parameter before partitioning);
    gradients, communication buckets and the model's own weights are not counted.
    """
    seen: set[int] = set()
    total = 0
    tensors: list[torch.Tensor] = [flat for _, flat in _flat_partitions(zero_optimizer)]
    for values in zero_optimizer.optimizer.state.values():
        tensors.extend(value for value in values.values() if isinstance(value, torch.Tensor))
    for tensor in tensors:
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total


def check_engine_internals(engine: Any) -> None:
    """Raise RuntimeError unless the engine has what :func:`reinitialize` relies on.

    Raises:
        RuntimeError: naming what is missing and the DeepSpeed version.
    """
    import deepspeed  # type: ignore[import-untyped,import-not-found,unused-ignore]

    zero = engine.optimizer
    needed = {
        "the engine's _configure_optimizer": hasattr(engine, "_configure_optimizer"),
        "the ZeRO optimizer's destroy()": hasattr(zero, "destroy"),
        "the ZeRO optimizer's flat partitions": is_stage3(zero)
        or hasattr(zero, "bit16_groups")
        or hasattr(zero, "bf16_groups"),
    }
    if is_stage3(zero):
        needed["ZeRO-3's local partition accessors"] = hasattr(
            zero, "get_local_fp32_param"
        ) and hasattr(zero, "set_local_hp_param")
    missing = [name for name, present in needed.items() if not present]
    if missing:
        raise RuntimeError(
            f"mentor_fn.integrations.deepspeed cannot re-initialize this engine's optimizer "
            f"({type(zero).__name__}, DeepSpeed {deepspeed.__version__}): {', '.join(missing)} "
            "missing; it is written for DeepSpeed 0.19"
        )
