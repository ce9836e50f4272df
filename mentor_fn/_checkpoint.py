"""Checkpoint files: one file each, written atomically, loaded without running code.

A checkpoint holds only plain data and tensors, so it loads with
``torch.load(weights_only=True)``: a corrupt or malicious file raises
:class:`CheckpointError`, it never executes anything.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["CHECKPOINT_VERSION", "CheckpointError", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "mentor_fn.checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, foreign, or does not fit the model."""


def save_checkpoint(path: str | os.PathLike[str], contents: Mapping[str, Any]) -> Path:
    """Write ``contents`` (plain data and tensors) to ``path`` atomically.

    The file is written to a temporary file in the same folder, flushed to
    disk (fsync) and renamed over ``path``: a crash during the save leaves the
    previous file at ``path`` intact. ``format`` and ``version`` keys are added.

    Returns:
        The path written.
    """
    target = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **contents}
    folder = target.parent if str(target.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    # Not a `with` block: the file must outlive it to be renamed, or be removed.
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115
        dir=folder, prefix=f".{target.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, target)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    _fsync_folder(folder)
    return target


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform.
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The plain contents of a mentor_fn checkpoint file.

    Loaded with ``torch.load(weights_only=True)`` on the CPU: no code in the
    file ever runs.

    Raises:
        CheckpointError: the file is missing, truncated or unreadable, is not a
            mentor_fn checkpoint, or has an unknown format version.
    """
    target = Path(path)
    if not target.is_file():
        raise CheckpointError(f"checkpoint {str(target)!r} not found")
    try:
        contents = torch.load(target, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a bad file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"checkpoint {str(target)!r} is truncated, corrupt or not a safe torch file: {reason}"
        ) from None
    if not isinstance(contents, dict) or contents.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(target)!r} is not a mentor_fn checkpoint")
    version = contents.get("version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(target)!r} has format version {version!r}; "
            f"this mentor_fn reads version {CHECKPOINT_VERSION}"
        )
    return contents


def check_checkpoint_layers(
    contents: Mapping[str, Any], layers: tuple[str, ...], path: str | os.PathLike[str]
) -> None:
    """Raise CheckpointError naming missing and extra layers if the model differs."""
    saved = tuple(contents["curriculum"]["state"]["layers"])
    if saved == layers:
        return
    saved_set, model_set = set(saved), set(layers)
    missing = [name for name in saved if name not in model_set]
    extra = [name for name in layers if name not in saved_set]
    details = []
    if missing:
        details.append(f"layers missing from the model: {', '.join(missing[:10])}")
    if extra:
        details.append(f"layers not in the checkpoint: {', '.join(extra[:10])}")
    raise CheckpointError(
        f"checkpoint {str(path)!r} does not fit this model ("
        + ("; ".join(details) or "same layers in another order")
        + ")"
    )
