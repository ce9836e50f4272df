"""Checkpoint files: one file each, written atomically, loaded without running code.

This is the generic file layer: any plain contents, a format header, safe
loading and clear errors. What a Mentee checkpoint holds is
``mentor_fn._files.mentee_file``'s business.

A checkpoint holds only plain data and tensors, so it loads with
``torch.load(weights_only=True)``: a corrupt or malicious file raises
:class:`CheckpointError`, it never executes anything.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import torch

from .atomic_write import replace_file

__all__ = [
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "describe_load_error",
    "describe_open_error",
    "is_binary_file",
    "is_plain_data",
    "load_checkpoint",
    "save_checkpoint",
    "source_name",
    "unpickling_diagnosis",
    "write_checkpoint_to_file",
]

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
    :func:`load_checkpoint` do). A ``path`` that is a symbolic link is written
    through, as ``torch.save`` would: the file it points to is replaced.

    Large files cost about what ``torch.save`` over the same path costs: the
    disk writes overlap the serialization, and the previous file is freed in
    the background (see ``mentor_fn._files.atomic_write``).

    Returns:
        The path written.

    Raises:
        TypeError: ``path`` is not a str or path, or ``contents`` not a mapping.
        ValueError: ``path`` is empty, or ``contents`` holds another ``format``
            or ``version``, or a value ``torch.load(weights_only=True)`` would
            refuse (nothing is written, so a good checkpoint is never replaced
            by an unloadable one).
        OSError: the file could not be written, e.g. the disk is full (errno
            ``ENOSPC``); the previous file at ``path`` is intact.
    """
    target = _target_path(path)
    payload, tensor_bytes = _payload(contents)
    if target.is_dir():
        raise IsADirectoryError(
            errno.EISDIR, "a checkpoint path must name a file, this is a directory", str(target)
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        replace_file(target, lambda file: torch.save(payload, file), expected_bytes=tensor_bytes)
    except (OSError, RuntimeError) as error:
        _raise_write_error(error, str(target))
    return target


def write_checkpoint_to_file(file: BinaryIO, contents: Mapping[str, Any]) -> None:
    """Write the same file :func:`save_checkpoint` writes into an open binary file.

    Written directly, with no atomicity: the caller owns the file object.

    Raises:
        TypeError: ``file`` is a text file or has no ``write``, or ``contents``
            is not a mapping.
        ValueError: as :func:`save_checkpoint` (nothing is written).
        OSError: as :func:`save_checkpoint`.
    """
    if isinstance(file, io.TextIOBase) or not callable(getattr(file, "write", None)):
        raise TypeError(
            f"expected a path or a binary file object (open(..., 'wb'), io.BytesIO), got {file!r}"
        )
    payload, _ = _payload(contents)
    try:
        torch.save(payload, file)
    except (OSError, RuntimeError) as error:
        _raise_write_error(error, str(getattr(file, "name", file)))


def is_plain_data(value: Any) -> bool:
    """Whether ``value`` is data a checkpoint can hold (loads with ``weights_only=True``)."""
    try:
        _plain_bytes(value)
    except _NotPlain:
        return False
    return True


def _target_path(path: object) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"a checkpoint path must be a str or os.PathLike, got {path!r}")
    if not os.fspath(path):
        raise ValueError("a checkpoint path must name a file, got an empty path ''")
    return Path(path)


def _payload(contents: object) -> tuple[dict[str, Any], int]:
    """The header and ``contents``, checked; and about how many bytes they take."""
    if not isinstance(contents, Mapping):
        raise TypeError(
            "checkpoint contents must be a mapping (dict) of plain data and tensors, "
            f"got {type(contents).__name__}"
        )
    header = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION}
    for key, value in header.items():
        if key in contents and contents[key] != value:
            raise ValueError(
                f"save_checkpoint: the key {key!r} is reserved for the file header "
                f"({value!r}), contents hold {contents[key]!r}"
            )
    payload = {**header, **contents}
    return payload, _check_plain(payload, "contents")


_DISK_FULL = {
    code: reason
    for code, reason in (
        (errno.ENOSPC, "the disk is full"),
        (getattr(errno, "EDQUOT", None), "the disk quota is exceeded"),
    )
    if code is not None
}


def _raise_write_error(error: BaseException, where: str) -> NoReturn:
    """Re-raise a failed write; as an OSError that says why when a disk error is behind it.

    torch reports a failing write of its file as ``RuntimeError: [enforce fail
    at inline_container.cc...] unexpected pos``; the OSError of the write that
    failed is its context.
    """
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if cause is None or cause.errno is None:
        raise error
    reason = _DISK_FULL.get(cause.errno, cause.strerror or os.strerror(cause.errno))
    raise OSError(
        cause.errno,
        f"checkpoint not written, {reason} (a previous file there is left intact)",
        where,
    ) from error


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


def load_checkpoint(path: str | os.PathLike[str] | BinaryIO) -> dict[str, Any]:
    """The plain contents of a mentor_fn checkpoint file.

    Loaded with ``torch.load(weights_only=True)`` on the CPU: no code in the
    file ever runs. ``path`` may also be a binary file object open for reading
    (``open(..., "rb")``, ``io.BytesIO``), read from where it stands.

    Raises:
        TypeError: ``path`` is neither a str, a path nor a binary file object.
        CheckpointError: the file is missing, a directory, unreadable (e.g.
            permission denied), truncated or corrupt, is not a mentor_fn
            checkpoint, or has an unknown format version.
    """
    where = source_name(path)
    if is_binary_file(path):
        contents = _load_from(path, where)
    elif not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            "a checkpoint must be a path (str or os.PathLike) or a binary file object "
            f"(open(..., 'rb'), io.BytesIO), got {path!r}"
        )
    else:
        target = _target_path(path)
        try:
            handle = open(target, "rb")  # noqa: SIM115 (closed below; its errors told apart first)
        except OSError as error:
            raise CheckpointError(f"checkpoint {where!r} {describe_open_error(error)}") from None
        with handle:
            contents = _load_from(handle, where)
    if not isinstance(contents, dict) or contents.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{where!r} is not a mentor_fn checkpoint")
    version = contents.get("version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {where!r} has format version {version!r}; "
            f"this mentor_fn reads version {CHECKPOINT_VERSION}"
        )
    return contents


def is_binary_file(value: object) -> bool:
    """Whether ``value`` is a file object to read bytes from (not a path, not a text file)."""
    return not isinstance(value, (str, os.PathLike, io.TextIOBase)) and callable(
        getattr(value, "read", None)
    )


def source_name(source: object) -> str:
    """How messages name a checkpoint: its path, or a file object's name."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else f"<{type(source).__name__}>"


def _load_from(handle: Any, where: str) -> Any:
    try:
        return torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a bad file
        raise CheckpointError(f"checkpoint {where!r} {describe_load_error(error)}") from None


def describe_open_error(error: OSError) -> str:
    """Why a file could not be opened, to follow its name ("not found", ...)."""
    if isinstance(error, FileNotFoundError):
        return "not found"
    if isinstance(error, IsADirectoryError):
        return "is a directory, not a checkpoint file"
    if isinstance(error, PermissionError):
        return "cannot be read: permission denied"
    return f"cannot be read: {error.strerror or error}"


_TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")
_UNPICKLER_ERROR = "WeightsUnpickler error:"


def describe_load_error(error: Exception) -> str:
    """What was wrong with a file ``torch.load(weights_only=True)`` refused, to follow its name."""
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


def unpickling_diagnosis(error: Exception) -> str:
    """Where the unpickler stopped, without torch's advice to load unsafely."""
    return _diagnosis(str(error)) or type(error).__name__


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
