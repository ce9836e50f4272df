"""The DeepSpeed configurations a curriculum cannot run under, refused before training starts.

Each refusal names the setting and what to use instead. Pure: reads a config
dict (or the JSON file DeepSpeed would read), never an engine.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["check_config", "read_config"]

try:
    from hjson import loads as _hjson_loads  # type: ignore[import-untyped,import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - hjson comes with DeepSpeed
    _hjson_loads = None

_STAGES = (1, 2, 3)
_NO_DEVICE = (None, "none")


def read_config(config: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """The config as a dict: a mapping as given, or the JSON file at a path.

    Raises:
        TypeError: neither a mapping nor a path.
        ValueError: a file that cannot be read or is not a JSON object.
    """
    if isinstance(config, Mapping):
        return dict(config)
    if not isinstance(config, (str, os.PathLike)):
        raise TypeError(
            f"config must be a DeepSpeed config dict or the path of its JSON file, got {config!r}"
        )
    try:
        text = Path(config).read_text()
        # DeepSpeed reads its config files with hjson (JSON with comments), its dependency.
        loaded = _hjson_loads(text) if _hjson_loads is not None else json.loads(text)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the DeepSpeed config {str(config)!r}: {error}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"the DeepSpeed config {str(config)!r} is not a JSON object")
    return loaded


def check_config(config: Mapping[str, Any] | str | os.PathLike[str]) -> None:
    """Refuse a DeepSpeed config that a curriculum cannot train under.

    Refused, each with what to use instead:

    * no ZeRO, or stage 0: mentor_fn runs on ZeRO stages 1, 2 and 3 (plain
      data parallelism: :func:`mentor_fn.wrap_ddp`);
    * an ``optimizer`` section: DeepSpeed would build one flat optimizer of
      its own, while the curriculum derives the param groups (give the
      optimizer class and its arguments to the ``Curriculum``);
    * a ``scheduler`` section: it would write lrs into every group, over the
      coefficients (give a scheduler factory to the ``Curriculum``);
    * ``offload_optimizer`` / ``offload_param`` (ZeRO-Offload, ZeRO-Infinity)
      and ZenFlow: a phase change re-initializes the ZeRO optimizer, which
      these keep in pinned host buffers and NVMe swap files that mentor_fn
      does not move (not verified: refused rather than risked);
    * ``tensor_parallel`` with ``autotp_size`` > 1: DeepSpeed replaces the
      model's modules at initialization, after the curriculum walked them;
    * ``compile`` with ``deepcompile``: its compiled graph captures the
      optimizer that a phase change replaces.

    Raises:
        TypeError / ValueError: a config that is not a dict or a readable JSON
            file; ValueError naming the refused setting and the alternative.
    """
    settings = read_config(config)
    zero = settings.get("zero_optimization")
    stage = zero.get("stage", 0) if isinstance(zero, Mapping) else 0
    if stage not in _STAGES:
        raise ValueError(
            f"DeepSpeed config: zero_optimization.stage is {stage!r}; mentor_fn runs curricula on "
            "ZeRO stages 1, 2 and 3 (set one). Without ZeRO, wrap the model with "
            "mentor_fn.wrap_ddp instead of DeepSpeed."
        )
    assert isinstance(zero, Mapping)
    if "optimizer" in settings:
        kind = (
            settings["optimizer"].get("type")
            if isinstance(settings["optimizer"], Mapping)
            else None
        )
        raise ValueError(
            f"DeepSpeed config: an 'optimizer' section (type {kind!r}) makes DeepSpeed build its own "
            "optimizer over every parameter, but the curriculum derives the param groups. Remove "
            "the section and give the optimizer to the Curriculum: Curriculum(model, lr, "
            "optimizer=torch.optim.AdamW, optimizer_kwargs={...})."
        )
    if "scheduler" in settings:
        kind = (
            settings["scheduler"].get("type")
            if isinstance(settings["scheduler"], Mapping)
            else None
        )
        raise ValueError(
            f"DeepSpeed config: a 'scheduler' section (type {kind!r}) would write lrs into every "
            "param group, over the curriculum's coefficients. Remove it and give a scheduler "
            "factory to the Curriculum: Curriculum(model, lr, scheduler=lambda optimizer: ...)."
        )
    for key, what in (
        ("offload_optimizer", "ZeRO-Offload of the optimizer"),
        ("offload_param", "ZeRO-Infinity's parameter offload"),
    ):
        offload = zero.get(key)
        device = offload.get("device") if isinstance(offload, Mapping) else offload
        if offload is not None and device not in _NO_DEVICE:
            raise ValueError(
                f"DeepSpeed config: zero_optimization.{key} (device {device!r}, {what}) is not "
                "supported: a phase change re-initializes the ZeRO optimizer, whose offloaded "
                "buffers and swap files mentor_fn does not move. Remove it (frozen layers already "
                "hold no optimizer state), or train without mentor_fn's phase changes."
            )
    if zero.get("zenflow") is not None:
        raise ValueError(
            "DeepSpeed config: zero_optimization.zenflow is not supported (its selective updates "
            "run on an offloaded optimizer that a phase change would have to move). Remove it."
        )
    parallel = settings.get("tensor_parallel")
    size = parallel.get("autotp_size", 1) if isinstance(parallel, Mapping) else 1
    if isinstance(size, int) and size > 1:
        raise ValueError(
            f"DeepSpeed config: tensor_parallel.autotp_size is {size}; automatic tensor "
            "parallelism replaces the model's modules when the engine starts, after the "
            "curriculum named them. Use ZeRO data parallelism only (autotp_size 1)."
        )
    compiled = settings.get("compile")
    if isinstance(compiled, Mapping) and compiled.get("deepcompile"):
        raise ValueError(
            "DeepSpeed config: compile.deepcompile captures the ZeRO optimizer in a compiled "
            "graph, and a phase change replaces that optimizer. Remove deepcompile."
        )
