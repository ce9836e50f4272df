"""What the curriculum callback makes of a transformers ``TrainingArguments`` and model:
the optimizer settings it does not use, and the configurations it refuses.

Imports transformers only through the values it is given (the adapter has
imported it already).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

__all__ = ["ignored_optimizer_settings", "unsupported_configuration"]

# The Trainer's settings for the optimizer and scheduler it would build itself.
# The curriculum's optimizer class, arguments and scheduler factory replace them.
OPTIMIZER_SETTINGS = (
    "learning_rate",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "optim",
    "optim_args",
    "optim_target_modules",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_steps",
    "warmup_ratio",
)


def ignored_optimizer_settings(args: Any) -> dict[str, Any]:
    """The optimizer settings of ``args`` (a ``TrainingArguments``) that differ from
    their defaults, by name: the Trainer would have used them, the callback does not."""
    defaults = {
        field.name: field.default
        for field in dataclasses.fields(args)
        if field.name in OPTIMIZER_SETTINGS and field.default is not dataclasses.MISSING
    }
    differing = {}
    for name, default in defaults.items():
        value = getattr(args, name, default)
        # Enums (optim, lr_scheduler_type) compare by value; an empty dict is no setting.
        plain = getattr(value, "value", value)
        if plain == getattr(default, "value", default) or (not plain and not default):
            continue
        differing[name] = plain
    return differing


def unsupported_configuration(args: Any, model: nn.Module | None) -> str:
    """Why the callback cannot drive a run with ``args`` on ``model`` ("" when it can).

    Refused: DeepSpeed (a ZeRO engine owns the optimizer and its partitions),
    and models sharded at load time with other parallelisms than FSDP2
    (tensor, pipeline, expert parallel), whose parameters the curriculum's
    groups were not tested on.
    """
    if getattr(args, "deepspeed", None) or getattr(args, "deepspeed_plugin", None) is not None:
        return (
            "DeepSpeed (TrainingArguments(deepspeed=...)) is not supported by this callback yet: "
            "run the curriculum under DDP (torchrun) or FSDP2 (from_pretrained(..., "
            "distributed_config=DistributedConfig(fsdp_size=...)))"
        )
    config = getattr(getattr(model, "config", None), "distributed_config", None)
    if config is not None:
        others = {
            name: getattr(config, name, None)
            for name in ("tp_size", "pp_size", "ep_size")
            if (getattr(config, name, None) or 1) > 1
        }
        if others:
            settings = ", ".join(f"{name}={value}" for name, value in others.items())
            return (
                f"a model loaded with DistributedConfig({settings}) is not supported: the callback "
                "runs under DDP and FSDP2 (DistributedConfig(fsdp_size=...)) only"
            )
    return ""
