"""What differs between the torch versions mentor_fn supports (2.4 to 2.14): one home.

- DTensor (the sharded parameters of FSDP2 and tensor parallelism) is public
  in ``torch.distributed.tensor`` from torch 2.5. torch 2.4 defines it in
  ``torch.distributed._tensor``, and its ``torch.distributed.tensor`` is a
  package without it (imported by ``torch.distributed.tensor.parallel``).
- Reading a checkpoint's globals without unpickling it
  (``torch.serialization.get_unsafe_globals_in_checkpoint``) and allowing
  globals for one load (``torch.serialization.safe_globals``, with
  ``(object, "module.name")`` pairs from torch 2.6) are newer than torch 2.4,
  which has ``add_safe_globals`` and matches an allowed global by its
  ``__module__`` and ``__name__``.

Version differences in the tests (optimizers, FSDP2's public path) are in
``tests/torch_features.py``.
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import pickletools
import sys
import zipfile
from collections.abc import Iterator, Sequence
from typing import IO, Any

import torch

__all__ = ["TORCH_RELEASE", "is_dtensor", "safe_globals", "unsafe_globals_in_checkpoint"]

TORCH_RELEASE: tuple[int, ...] = tuple(
    int(part) for part in torch.__version__.split("+")[0].split(".")[:2]
)
"""The installed torch's ``(major, minor)``."""

# Where each torch keeps DTensor, newest first.
_DTENSOR_MODULES = ("torch.distributed.tensor", "torch.distributed._tensor")


def is_dtensor(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a DTensor (a sharded or replicated distributed tensor).

    No DTensor can exist unless torch's module defining it was imported, so
    nothing is imported here: importing it would cost for nothing.

    Example:
        >>> is_dtensor(torch.zeros(2))
        False
    """
    for name in _DTENSOR_MODULES:
        dtensor = getattr(sys.modules.get(name), "DTensor", None)
        if dtensor is not None:
            return isinstance(tensor, dtensor)
    return False


def unsafe_globals_in_checkpoint(file: IO[bytes]) -> list[str]:
    """The globals (``"module.name"``) a ``torch.save`` file names that torch's
    weights-only unpickler does not allow by default, read without unpickling.

    Raises:
        Exception: whatever torch (or, before torch 2.5, :mod:`zipfile`) raises
            for a file that is not a torch zip checkpoint.
    """
    finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if finder is not None:
        return list(finder(file))
    from torch import _weights_only_unpickler  # torch 2.4: read the pickle's opcodes here

    allowed = {*_weights_only_unpickler._get_allowed_globals(), *_NEWER_DEFAULTS}
    with zipfile.ZipFile(file) as archive:
        pickle_name = next(name for name in archive.namelist() if name.endswith("/data.pkl"))
        names = _pickle_globals(archive.read(pickle_name))
    return sorted(name for name in names if name not in allowed)


# What torch allows by default from 2.5 on, and torch 2.4 does not.
_NEWER_DEFAULTS = {"builtins.set": set}


def _pickle_globals(data: bytes) -> set[str]:
    """The globals a pickle names: GLOBAL's argument (with Python 2 names mapped
    as the unpickler maps them: ``__builtin__.set`` is ``builtins.set``), or
    STACK_GLOBAL's two strings."""
    names: set[str] = set()
    strings: list[str] = []
    for opcode, argument, _ in pickletools.genops(data):
        if opcode.name == "GLOBAL":
            module, name = str(argument).split(" ", 1)
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            else:
                module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            names.add(f"{module}.{name}")
        elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
            names.add(f"{strings[-2]}.{strings[-1]}")
        elif isinstance(argument, str):
            strings.append(argument)
    return names


@contextlib.contextmanager
def safe_globals(allowed: Sequence[Any]) -> Iterator[None]:
    """Allow ``allowed`` to the weights-only unpickler for the ``with`` block:
    objects, or ``(object, "module.name")`` pairs that allow ``object`` under
    that name.
    """
    manager = getattr(torch.serialization, "safe_globals", None)
    if manager is not None and TORCH_RELEASE >= (2, 6):
        with manager(list(allowed)):
            yield
        return
    # torch 2.4 and 2.5 match an allowed global by its __module__ and __name__:
    # an object allowed under another name gets a subclass carrying that name.
    previous = list(torch.serialization.get_safe_globals())
    newer_defaults = list(_NEWER_DEFAULTS.values()) if TORCH_RELEASE < (2, 5) else []
    torch.serialization.add_safe_globals([*newer_defaults, *(_named(entry) for entry in allowed)])
    try:
        yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(previous)


def _named(entry: Any) -> Any:
    if not isinstance(entry, tuple):
        return entry
    target, qualified = entry
    module, _, name = qualified.rpartition(".")
    return type(name, (target,), {"__module__": module, "__qualname__": name})
