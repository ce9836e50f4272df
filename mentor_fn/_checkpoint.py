"""Checkpoint files: one file each, written atomically, loaded without running code.

A checkpoint holds only plain data and tensors, so it loads with
``torch.load(weights_only=True)``: a corrupt or malicious file raises
:class:`CheckpointError`, it never executes anything.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ._atomic_write import replace_file

__all__ = ["CHECKPOINT_VERSION", "CheckpointError", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "mentor_fn.checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, foreign, or does not fit the model."""


def save_checkpoint(path: str | os.PathLike[str], contents: Mapping[str, Any]) -> Path:
    """Write ``contents`` (plain data and tensors) to ``path`` atomically.

    The file is written to a temporary file in the same folder, flushed to
    disk (fsync) and renamed over ``path``, and the rename is flushed too: a
    crash during the save, even a power loss, leaves the previous file at
    ``path`` intact. When this returns, ``path`` holds the new checkpoint, on
    disk. ``format`` and ``version`` keys are added (``contents`` may hold them
    only with these same values, as the contents returned by
    :func:`load_checkpoint` do).

    Large files cost about what ``torch.save`` over the same path costs: the
    disk writes overlap the serialization, and the previous file is freed in
    the background (see ``mentor_fn._atomic_write``).

    Returns:
        The path written.

    Raises:
        ValueError: ``contents`` holds another ``format`` or ``version``, or a
            value ``torch.load(weights_only=True)`` would refuse (nothing is
            written, so a good checkpoint is never replaced by an unloadable one).
    """
    target = Path(path)
    header = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION}
    for key, value in header.items():
        if key in contents and contents[key] != value:
            raise ValueError(
                f"save_checkpoint: the key {key!r} is reserved for the file header "
                f"({value!r}), contents hold {contents[key]!r}"
            )
    payload = {**header, **contents}
    tensor_bytes = _check_plain(payload, "contents")
    target.parent.mkdir(parents=True, exist_ok=True)
    replace_file(target, lambda file: torch.save(payload, file), expected_bytes=tensor_bytes)
    return target


_PLAIN_SCALARS = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)


def _check_plain(value: Any, where: str) -> int:
    """Raise ValueError at the first value weights-only loading would refuse.

    Returns:
        The bytes of the tensors in ``value``: about the size of the file.
    """
    try:
        return _plain_bytes(value)
    except _NotPlain as problem:
        location = where + "".join(f"[{key!r}]" for key in reversed(problem.keys))
        if problem.bad_key is not None:
            raise ValueError(
                f"save_checkpoint: {location} has a key of type {type(problem.bad_key).__name__}"
            ) from None
        raise ValueError(
            f"save_checkpoint: {location} is a {type(problem.value).__name__}, which "
            "torch.load(weights_only=True) refuses; store plain data and tensors only"
        ) from None


class _NotPlain(Exception):
    """Where (keys, innermost first) a value or key that is not plain data is."""

    def __init__(self, value: Any, bad_key: Any = None) -> None:
        self.value, self.bad_key = value, bad_key
        self.keys: list[Any] = []


_PLAIN_KEYS = (str, int, float, bool, type(None), tuple)


def _plain_bytes(value: Any) -> int:
    # The location is built only on failure: this visits every entry of an
    # optimizer state, and formatting a path for each would cost more.
    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, (torch.Size, *_PLAIN_SCALARS)):
        return 0
    entries: Iterable[tuple[Any, Any]]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, _PLAIN_KEYS):
                raise _NotPlain(value, bad_key=key)
        entries = value.items()
    elif isinstance(value, (list, tuple)):
        entries = enumerate(value)
    else:
        raise _NotPlain(value)
    total = 0
    for key, item in entries:
        try:
            total += _plain_bytes(item)
        except _NotPlain as problem:
            problem.keys.append(key)
            raise
    return total


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
        raise CheckpointError(f"checkpoint {str(target)!r} {_load_problem(error)}") from None
    if not isinstance(contents, dict) or contents.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(target)!r} is not a mentor_fn checkpoint")
    version = contents.get("version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(target)!r} has format version {version!r}; "
            f"this mentor_fn reads version {CHECKPOINT_VERSION}"
        )
    return contents


_TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")
_UNPICKLER_ERROR = "WeightsUnpickler error:"


def _load_problem(error: Exception) -> str:
    """What was wrong with a file ``torch.load(weights_only=True)`` refused."""
    text = str(error)
    if isinstance(error, pickle.UnpicklingError) and text.startswith(_TORCH_ADVICE[0]):
        # torch's message advises weights_only=False or allowlisting globals,
        # which would run whatever the file holds: keep only its diagnosis.
        return (
            "is corrupt or holds objects other than plain data and tensors "
            f"(refused, nothing in it was run): {_diagnosis(text) or type(error).__name__}"
        )
    reason = text.strip().splitlines()[0] if text.strip() else ""
    if isinstance(error, KeyError) or not reason:
        # torch's KeyError for a foreign file says only a record number.
        reason = f"{type(error).__name__} {reason}".strip()
    return f"is truncated, corrupt or not a torch file ({reason})"


def _diagnosis(text: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        if _UNPICKLER_ERROR in line:
            line = line.split(_UNPICKLER_ERROR, 1)[1]
        elif line.startswith(_TORCH_ADVICE) or "weights_only" in line:
            continue
        line = line.split(" Please use ", 1)[0].strip()
        if line:
            return line
    return ""


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


def check_checkpoint_weights(
    saved: Mapping[str, Any], model: Mapping[str, Any], path: str | os.PathLike[str]
) -> None:
    """Raise CheckpointError naming missing, extra and reshaped entries of a state dict.

    ``saved`` is the checkpoint's model state dict, ``model`` the model's own.
    """
    missing = [name for name in saved if name not in model]
    extra = [name for name in model if name not in saved]
    reshaped = [
        f"{name} (checkpoint {list(saved[name].shape)}, model {list(tensor.shape)})"
        for name, tensor in model.items()
        if name in saved
        and isinstance(tensor, torch.Tensor)
        and isinstance(saved[name], torch.Tensor)
        and saved[name].shape != tensor.shape
    ]
    details = []
    if missing:
        details.append(f"weights missing from the model: {', '.join(missing[:10])}")
    if extra:
        details.append(f"weights not in the checkpoint: {', '.join(extra[:10])}")
    if reshaped:
        details.append(f"shapes differ: {', '.join(reshaped[:10])}")
    if details:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit this model (" + "; ".join(details) + ")"
        )
