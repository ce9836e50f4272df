"""The file a DeepSpeed run keeps beside DeepSpeed's own checkpoint: writing, finding, reading it.

``mentor_fn_curriculum.pt`` in the tag's folder holds the curriculum's state
dict, the schedule's cursor and the ZeRO group layout, as plain data written
atomically by :func:`mentor_fn.save_checkpoint` (loads with
``torch.load(weights_only=True)``). A file of its own rather than DeepSpeed's
``client_state``: DeepSpeed loads its model-states file with full
unpickling, and frameworks put their own data in ``client_state``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .. import CheckpointError, load_checkpoint, save_checkpoint
from ._deepspeed_zero import ZeroGroup

__all__ = ["CHECKPOINT_FILE", "read_run_file", "saved_layout", "write_run_file"]

CHECKPOINT_FILE = "mentor_fn_curriculum.pt"
"""The file beside DeepSpeed's own in each checkpoint tag's folder."""

_KEY = "deepspeed_run"
_FORMAT_NAME, _FORMAT_VERSION = "mentor_fn.integrations.deepspeed", 1


def write_run_file(folder: str | os.PathLike[str], tag: str, run: Mapping[str, Any]) -> None:
    """Write ``run`` (plain data) as the tag's :data:`CHECKPOINT_FILE`, atomically."""
    contents = {"format": _FORMAT_NAME, "version": _FORMAT_VERSION, **run}
    save_checkpoint(Path(folder) / tag / CHECKPOINT_FILE, {_KEY: contents})


def read_run_file(folder: str | os.PathLike[str], tag: str | None) -> tuple[str, dict[str, Any]]:
    """The tag (``tag``, or the one DeepSpeed's ``latest`` names) and its run file's contents.

    Raises:
        CheckpointError: no ``latest`` file, a missing, unreadable or foreign
            run file, or another format version.
    """
    folder = Path(folder)
    if tag is None:
        latest = folder / "latest"
        if not latest.is_file():
            raise CheckpointError(f"no 'latest' file in {str(folder)!r}: pass the tag to load")
        tag = latest.read_text().strip()
    path = folder / tag / CHECKPOINT_FILE
    saved = load_checkpoint(path).get(_KEY)
    if not isinstance(saved, Mapping) or saved.get("format") != _FORMAT_NAME:
        raise CheckpointError(f"{str(path)!r} holds no mentor_fn DeepSpeed run")
    if saved.get("version") != _FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has version {saved.get('version')!r}; "
            f"this mentor_fn reads version {_FORMAT_VERSION}"
        )
    return tag, dict(saved)


def saved_layout(
    saved: object,
    model: nn.Module,
    groups: Sequence[Mapping[str, Any]],
    expected: Sequence[ZeroGroup],
) -> tuple[ZeroGroup, ...]:
    """The ZeRO groups a run file names, checked against the curriculum as loaded.

    ``groups`` are the curriculum optimizer's; ``expected`` the layout they
    derive now. The saved layout may split a group further (by the history
    of its parameters), but must place the same parameters in the same groups.

    Raises:
        ValueError: not a list of groups, unknown parameter names, or another
            placement of the trainable parameters.
    """
    if not isinstance(saved, list):
        raise ValueError(f"'zero_groups' is {saved!r}, not a list")
    parameters = dict(model.named_parameters())
    layout = []
    for entry in saved:
        source, names = entry["source"], entry["parameters"]
        if not isinstance(source, int) or not 0 <= source < len(groups):
            raise ValueError(f"a ZeRO group takes its hyperparameters from group {source!r}")
        unknown = [name for name in names if name not in parameters]
        if unknown:
            raise ValueError(f"the ZeRO groups name unknown parameters {unknown[:8]}")
        layout.append(ZeroGroup(source, tuple(parameters[name] for name in names), None))
    placed = {(group.source, id(p)) for group in layout for p in group.parameters}
    wanted = {(group.source, id(p)) for group in expected for p in group.parameters}
    if placed != wanted or sum(len(group.parameters) for group in layout) != len(placed):
        raise ValueError("the saved ZeRO groups do not hold the curriculum's trainable parameters")
    return tuple(layout)
