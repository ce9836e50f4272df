"""What the curriculum callback makes of a transformers ``TrainingArguments`` and model:
the optimizer settings it does not use, and the configurations it refuses.

Imports transformers only through the values it is given (the adapter has
imported it already).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

__all__ = ["deepspeed_settings", "ignored_optimizer_settings", "unsupported_configuration"]

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


def deepspeed_settings(args: Any) -> dict[str, Any] | None:
    """The DeepSpeed config a ``TrainingArguments`` turns on (None: no DeepSpeed).

    ``TrainingArguments(deepspeed=...)`` (a dict or a JSON file, which the
    arguments have read), or ``accelerate launch --use_deepspeed`` (the plugin
    accelerate makes from its own configuration).
    """
    processed = getattr(args, "hf_deepspeed_config", None)
    if processed is not None:
        return dict(processed.config)
    plugin = getattr(args, "deepspeed_plugin", None)
    if plugin is not None:
        return dict(getattr(plugin, "deepspeed_config", None) or {})
    if getattr(args, "deepspeed", None):
        return {}
    return None


def unsupported_configuration(args: Any, model: nn.Module | None) -> str:
    """Why the callback cannot drive a run with ``args`` on ``model`` ("" when it can).

    Refused: accelerate's FSDP (``TrainingArguments(fsdp=...)``); models
    sharded at load time with other parallelisms than FSDP2 (tensor,
    pipeline, expert parallel), whose parameters the curriculum's groups were
    not tested on; and checkpoints of a model sharded at load time with FSDP2,
    which the Trainer cannot resume (it saves no optimizer state for such a
    model, and its resume loads the saved weights into the sharded model,
    which fails: ``aten.copy_.default got mixed torch.Tensor and DTensor``,
    transformers 5.25). DeepSpeed is the adapter's to judge (it needs
    ``CurriculumTrainer``).
    """
    if getattr(args, "fsdp", None):
        return (
            f"accelerate's FSDP (TrainingArguments(fsdp={args.fsdp!r})) is not supported: it "
            "shards the model when training starts and moves the optimizer onto new parameters "
            "(FSDP1 also fixes requires_grad in flat parameters). Load the model sharded with "
            "FSDP2 instead: from_pretrained(..., distributed_config=DistributedConfig("
            "fsdp_size=...))"
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
                "runs under DDP, FSDP2 (DistributedConfig(fsdp_size=...)) and DeepSpeed ZeRO only"
            )
        saving = str(getattr(getattr(args, "save_strategy", "no"), "value", "no"))
        if (getattr(config, "fsdp_size", None) or 1) > 1 and saving != "no":
            return (
                f"checkpoints (save_strategy={saving!r}) of a model sharded at load time "
                f"(DistributedConfig(fsdp_size={config.fsdp_size})) cannot be resumed: the Trainer "
                "saves no optimizer state for it, and its resume loads the saved weights into the "
                "sharded model, which fails. Pass save_strategy='no' (save the run with "
                "mentor_fn.save_distributed_checkpoint(directory, callback.curriculum) from a "
                "callback of yours if you need it), or train under DDP or DeepSpeed "
                "(CurriculumTrainer), whose Trainer checkpoints hold the whole run and resume it"
            )
    return ""
