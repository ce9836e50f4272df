"""Replacing a file atomically and durably, keeping the caller waiting no longer than needed.

The new contents go to a temporary file in the target's folder, are flushed
to disk (fsync) and renamed over the target, and the rename is made durable
(fsync of the folder). A crash at any point, even a power loss, leaves either
the previous file or the new one at the target, whole.

Two costs of that are taken off the caller's path, without weakening it:

- **Writeback while writing.** Left alone, the kernel starts writing the
  temporary file to disk only when the final fsync asks for it, so the caller
  waits for all of it there. A helper thread asks for the writeback of each
  few MiB as they are written (``fdatasync``), so most of the disk work
  overlaps the serialization and the final fsync finds little left to do.
- **Freeing the previous file later.** Renaming over the target drops the
  previous file, and freeing its blocks is slow on some filesystems (ext4
  mounted with ``discard``: 3 ms for 12 MB). A second name (hard link) keeps
  the previous file alive through the rename; it is removed by a background
  thread. ``torch.save`` over an existing file pays that cost itself, when it
  truncates the file.

A target that is a symbolic link is written through, as ``torch.save`` or
any ``open(path, "w")`` would: the file it points to is replaced and the link
stays (renaming over the link itself would leave its target stale).

Files a killed process left behind (its temporary file, a second name not
yet removed) are removed at this process's first write to the same target:
their names carry the host and process id of their writer, and only those of
a process that no longer exists on this host are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import stat
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["replace_file", "wait_for_background_removals"]

WRITEBACK_THRESHOLD_BYTES = 4 << 20
"""Expected sizes below this are written without the writeback thread (it costs
a thread start, and small files are flushed quickly anyway)."""

WRITEBACK_CHUNK_BYTES = 2 << 20
"""The writeback thread asks for a flush each time this much more was written."""

_WRITEBACK_POLL_SECONDS = 0.001

_TEMPORARY_SUFFIX = ".tmp"
_PREVIOUS_SUFFIX = ".old"

_datasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)

_background_removals: set[threading.Thread] = set()
_background_lock = threading.Lock()
_cleaned_targets: set[Path] = set()


def replace_file(
    target: Path, write: Callable[[BinaryIO], None], *, expected_bytes: int = 0
) -> None:
    """Replace ``target`` with what ``write(file)`` writes, atomically and durably.

    When this returns, ``target`` holds the new contents and they are on disk.
    If ``write`` (or anything else) raises, ``target`` is left as it was and
    the temporary file is removed.

    Args:
        target: the file to replace (or create); its folder must exist. A
            symbolic link is followed: the file it points to is replaced.
        write: writes the whole contents to the binary file it is given.
        expected_bytes: about how much ``write`` writes; from
            :data:`WRITEBACK_THRESHOLD_BYTES` on, the disk writes overlap it.
    """
    target = _through_links(target)
    folder = target.parent
    _remove_leftovers_once(target)
    temporary, descriptor = _create_temporary(target)
    previous: Path | None = None
    try:
        with open(descriptor, "wb") as handle:
            with _writeback_while_writing(descriptor, expected_bytes):
                write(handle)
                handle.flush()
            os.fsync(descriptor)
        previous = _second_name(target)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        if previous is not None:
            previous.unlink(missing_ok=True)
        raise
    _fsync_folder(folder)
    if previous is not None:
        _remove_in_background(previous)


def wait_for_background_removals() -> None:
    """Wait until the previous files that writes replaced are removed.

    Never needed for correctness (Python waits for them at exit too); useful
    before measuring disk usage or listing a folder.
    """
    with _background_lock:
        pending = list(_background_removals)
    for thread in pending:
        thread.join()


def _through_links(target: Path) -> Path:
    """The file a write to ``target`` lands in: ``target``, or where its links lead."""
    if not target.is_symlink():
        return target
    # realpath also resolves chains, relative links and a dangling link's
    # destination (created there, as open() would).
    return Path(os.path.realpath(target))


@contextlib.contextmanager
def _writeback_while_writing(descriptor: int, expected_bytes: int) -> Iterator[None]:
    if expected_bytes < WRITEBACK_THRESHOLD_BYTES:
        yield
        return
    stop = threading.Event()

    def flush_as_written() -> None:
        flushed = 0
        try:
            while not stop.wait(_WRITEBACK_POLL_SECONDS):
                size = os.fstat(descriptor).st_size
                if size - flushed >= WRITEBACK_CHUNK_BYTES:
                    _datasync(descriptor)
                    flushed = size
        except OSError:
            # Only an early start of the disk writes is lost: the final fsync,
            # in the caller's thread, reports any error that matters.
            return

    thread = threading.Thread(target=flush_as_written, name="mentor_fn-writeback", daemon=True)
    try:
        thread.start()
    except RuntimeError:  # no new threads (interpreter shutting down): fsync does it all
        yield
        return
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _create_temporary(target: Path) -> tuple[Path, int]:
    """A new, empty temporary file next to ``target``, opened for writing.

    Its permissions are those ``torch.save`` would give the file: the
    target's own if it exists (a rewrite keeps them), else the usual ones
    for a new file (0o666 less the umask; ``tempfile`` would make it 0o600).
    """
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        mode = None
    prefix = _scratch_prefix(target)
    for _ in range(100):
        path = target.parent / f"{prefix}{os.urandom(4).hex()}{_TEMPORARY_SUFFIX}"
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666)
        except FileExistsError:
            continue
        if mode is not None:
            # If this fails, the file keeps the umask's permissions, as a new one.
            with contextlib.suppress(OSError, NotImplementedError):
                os.chmod(descriptor, mode)
        return path, descriptor
    raise FileExistsError(f"no free temporary name next to {str(target)!r}")


_O_BINARY = getattr(os, "O_BINARY", 0)


def _scratch_prefix(target: Path) -> str:
    # ".<name>.<host>.<pid>." : whose file it is, for _remove_leftovers_once.
    return f".{_short_name(target)}.{_host()}.{os.getpid()}."


def _short_name(target: Path) -> str:
    # Scratch names must fit the 255-byte limit of most filesystems whatever
    # the target's name: a long one is cut and made unique by its digest.
    name = target.name
    if len(name.encode()) <= 120:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"{name.encode()[:100].decode(errors='ignore')}~{digest}"


def _host() -> str:
    return socket.gethostname()[:40]


def _second_name(target: Path) -> Path | None:
    """A hard link to the current ``target`` (None when there is none, or no links here)."""
    link = target.parent / f"{_scratch_prefix(target)}{os.urandom(4).hex()}{_PREVIOUS_SUFFIX}"
    try:
        os.link(target, link)
    except OSError:
        # No previous file, or a filesystem without hard links: the rename
        # frees the previous file itself, as a plain rename would.
        return None
    return link


def _remove_in_background(path: Path) -> None:
    def remove() -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            warnings.warn(
                f"mentor_fn could not remove the replaced checkpoint {str(path)!r}: {error}",
                RuntimeWarning,
                stacklevel=1,
            )
        finally:
            with _background_lock:
                _background_removals.discard(threading.current_thread())

    # Not a daemon: Python waits for it at exit, so no second name is left behind.
    thread = threading.Thread(target=remove, name="mentor_fn-remove-replaced")
    with _background_lock:
        _background_removals.add(thread)
    try:
        thread.start()
    except RuntimeError:  # no new threads (interpreter shutting down): remove it now
        remove()


def _remove_leftovers_once(target: Path) -> None:
    key = target.absolute()
    if key in _cleaned_targets or os.name != "posix":
        return
    _cleaned_targets.add(key)
    start = f".{_short_name(target)}."
    host = _host()
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if not name.startswith(start) or not name.endswith((_TEMPORARY_SUFFIX, _PREVIOUS_SUFFIX)):
            continue
        # ".<name>.<host>.<pid>.<hex>.tmp" or ".old"; the host may hold dots.
        parts = name[len(start) :].rsplit(".", 3)
        if len(parts) != 4 or parts[0] != host or not parts[1].isdigit():
            continue
        if not _process_exists(int(parts[1])):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _process_exists(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only checks (POSIX; never called elsewhere)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


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
