"""A torch_mentor checkpoint, read as safely as torch allows and checked field by field.

torch_mentor (the library mentor_fn ports) saves a pickled dict with
``torch.save``; its own ``resume`` loads it with ``weights_only=False``, which
runs whatever code the file names. Here the file is read with
``torch.load(weights_only=True)``: the globals it names are listed first
(``torch.serialization.get_unsafe_globals_in_checkpoint``); the plain types
torch_mentor's files need (torch's ``TorchVersion`` string in the software
history, numpy scalars in metrics) are allowed as themselves, and every other
global is allowed only as an inert :class:`StandIn` that records its name and
runs nothing. A file that even then cannot be read (an object the weights-only
unpickler cannot rebuild, such as a ``defaultdict``) needs full unpickling,
which runs code from the file: it is refused unless the caller trusts the file
(``trust=True``).

This is the one module that knows torch_mentor's keys. Its releases wrote
three layouts, told apart by their keys (nothing in the file names the
release): 0.2.2 (no lr coefficients), 0.2.3 (``lr_coefficients``) and 0.3.0
(``lr_coefficients`` and ``total_train_iterations``).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from .._core.torch_compat import TORCH_RELEASE, safe_globals, unsafe_globals_in_checkpoint
from . import mentee_fields as fields
from .checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    describe_load_error,
    describe_open_error,
    unpickling_diagnosis,
)

__all__ = [
    "KNOWN_VERSIONS",
    "StandIn",
    "TorchMentorCheckpoint",
    "read_torch_mentor_checkpoint",
    "stand_ins",
]

_COMMON_KEYS = frozenset(
    {
        "class_name",
        "class_module",
        "state_dict",
        "constructor_params",
        "train_history",
        "validate_history",
        "software_history",
        "argv_history",
        "best_weights_so_far",
        "best_epoch_so_far",
        "inference_state",
        "output_schema",
        "preprocessing_info",
        "default_loss_fn",
        "frozen_modules",
        "layer_names",
    }
)
_OPTIONAL_KEYS = frozenset({"optimizer_state", "lr_scheduler_state", "grad_scaler_state"})
_LAYOUTS = {
    "0.2.2": _COMMON_KEYS,
    "0.2.3": _COMMON_KEYS | {"lr_coefficients"},
    "0.3.0": _COMMON_KEYS | {"lr_coefficients", "total_train_iterations"},
}
KNOWN_VERSIONS = tuple(_LAYOUTS)
"""The torch_mentor releases whose checkpoint layouts this module reads."""


class StandIn:
    """An object of a torch_mentor file that is not plain data, kept by name only.

    The weights-only unpickler builds one in place of any global the file
    names beyond torch's safe list: it stores nothing and runs nothing.
    """

    global_name: ClassVar[str] = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> StandIn:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{self.global_name}>"


@dataclass(frozen=True)
class TorchMentorCheckpoint:
    """A torch_mentor checkpoint, read and checked."""

    path: str
    version: str
    """The torch_mentor release whose layout the file has (``KNOWN_VERSIONS``)."""
    data: Mapping[str, Any]
    fully_unpickled: bool
    """Read with full unpickling (``trust=True``), not weights-only."""

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    @property
    def weights(self) -> dict[str, torch.Tensor]:
        return dict(self.data["state_dict"])

    @property
    def model_class(self) -> str:
        """``module.Name`` of the saved model's class."""
        return f"{self.data['class_module']}.{self.data['class_name']}"

    @property
    def epoch(self) -> int:
        """Epochs trained (torch_mentor's ``current_epoch``: its train history's length)."""
        return len(self.data["train_history"])


def read_torch_mentor_checkpoint(
    path: str | os.PathLike[str], *, trust: bool = False
) -> TorchMentorCheckpoint:
    """Load a torch_mentor checkpoint without running code from it (unless ``trust``).

    Args:
        path: the file; it is only read.
        trust: allow full unpickling when weights-only loading cannot read the
            file (it runs code the file names: only for files of a trusted origin).

    Raises:
        TypeError: ``path`` is not a str or path; ``trust`` not a bool.
        CheckpointError: missing, unreadable, truncated or corrupt file; not a
            torch_mentor checkpoint (a mentor_fn one is named as such); a
            layout of no known torch_mentor release; a malformed field (named);
            a file that needs full unpickling without ``trust``; a torch older
            than :data:`READABLE_FROM` (before the file is opened).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"a checkpoint path must be a str or os.PathLike, got {path!r}")
    if not isinstance(trust, bool):
        raise TypeError(f"trust must be a bool, got {trust!r}")
    where = str(path)
    if TORCH_RELEASE < READABLE_FROM:
        raise CheckpointError(
            f"reading torch_mentor checkpoint {where!r} needs torch "
            f"{'.'.join(map(str, READABLE_FROM))} or newer (measured; this is torch "
            f"{torch.__version__}): older weights-only unpicklers refuse what torch_mentor "
            "files hold. Convert it with a newer torch; the converted file then loads on "
            "every torch mentor_fn supports"
        )
    data, fully_unpickled = _load(Path(path), where, trust)
    version = _layout_version(data, where)
    try:
        _check_fields(data)
    except fields.Malformed as problem:
        raise CheckpointError(
            f"torch_mentor checkpoint {where!r} is malformed: {problem}"
        ) from None
    return TorchMentorCheckpoint(where, version, data, fully_unpickled)


def stand_ins(value: Any, where: str = "") -> Iterator[tuple[str, StandIn]]:
    """Every :class:`StandIn` inside ``value``, with where it is (``['a'][0]``)."""
    if isinstance(value, StandIn):
        yield where, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from stand_ins(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from stand_ins(item, f"{where}[{index}]")


# Loading ------------------------------------------------------------------------------


def _load(path: Path, where: str, trust: bool) -> tuple[Any, bool]:
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed below; its errors told apart first)
    except OSError as error:
        raise CheckpointError(f"checkpoint {where!r} {describe_open_error(error)}") from None
    with handle:
        try:
            names = unsafe_globals_in_checkpoint(handle)
        except Exception as error:  # torch raises many kinds (OSError too) for a bad file
            raise CheckpointError(f"checkpoint {where!r} {describe_load_error(error)}") from None
    allowed = [_allowed(name) for name in names]
    try:
        with open(path, "rb") as handle, safe_globals(allowed):
            return torch.load(handle, map_location="cpu", weights_only=True), False
    except pickle.UnpicklingError as error:
        if not str(error).startswith(_REFUSED):
            raise CheckpointError(f"checkpoint {where!r} {describe_load_error(error)}") from None
        if not trust:
            raise CheckpointError(
                f"checkpoint {where!r} can only be read by full unpickling, which runs code "
                "the file names (the weights-only unpickler, which runs nothing, stops at: "
                f"{unpickling_diagnosis(error)}); if you trust its origin, convert it with "
                "trust=True (python -m mentor_fn convert --trust)"
            ) from None
    except Exception as error:  # torch raises many kinds for a damaged file
        raise CheckpointError(f"checkpoint {where!r} {describe_load_error(error)}") from None
    try:
        with open(path, "rb") as handle:
            return torch.load(handle, map_location="cpu", weights_only=False), True
    except Exception as error:  # a trusted file can still be damaged
        raise CheckpointError(f"checkpoint {where!r} {describe_load_error(error)}") from None


READABLE_FROM = (2, 13)
"""The oldest torch that reads torch_mentor files here: 2.4.1 and 2.5.1 refuse them."""

_REFUSED = "Weights only load failed"  # how torch starts the message of a refused global or opcode


def _allowed(name: str) -> Any:
    """What the unpickler may build for the global ``name``: the real plain type, or a StandIn."""
    real = _PLAIN_GLOBALS.get(name) or _numpy_scalar_global(name)
    if real is not None:
        return real
    return (type("StandIn", (StandIn,), {"global_name": name}), name)


_PLAIN_GLOBALS: dict[str, Any] = {
    # torch_mentor's software history holds torch.__version__, a str subclass.
    "torch.torch_version.TorchVersion": torch.torch_version.TorchVersion,
}


def _numpy_scalar_global(name: str) -> Any:
    """numpy's scalar reconstruction and dtypes (metrics computed with numpy), when installed.

    These rebuild a number from its dtype and bytes; nothing else of numpy is allowed.
    """
    if not name.startswith("numpy."):
        return None
    try:
        import numpy
    except ImportError:
        return None
    if name in ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"):
        core = getattr(numpy, "_core", None) or numpy.core  # numpy 2 / numpy 1
        return (core.multiarray.scalar, name)
    if name == "numpy.dtype":
        return numpy.dtype
    dtype_classes = getattr(numpy, "dtypes", None)
    if name.startswith("numpy.dtypes.") and dtype_classes is not None:
        found = getattr(dtype_classes, name.rpartition(".")[2], None)
        if isinstance(found, type) and issubclass(found, numpy.dtype):
            return found
    return None


# The layout ------------------------------------------------------------------------------


def _layout_version(data: Any, where: str) -> str:
    if isinstance(data, Mapping) and data.get("format") == CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{where!r} is already a mentor_fn checkpoint: nothing to convert "
            "(python -m mentor_fn inspect shows it)"
        )
    if not isinstance(data, Mapping) or not {"class_name", "state_dict"} <= set(data):
        kind = (
            f"a dict with keys {sorted(map(str, data))[:8]}"
            if isinstance(data, Mapping)
            else f"a {type(data).__name__}"
        )
        raise CheckpointError(
            f"{where!r} is not a torch_mentor checkpoint (Mentee.save writes a dict with "
            f"class_name, state_dict, constructor_params...; this file holds {kind})"
        )
    keys = set(data) - _OPTIONAL_KEYS
    for version, layout in _LAYOUTS.items():
        if keys == layout:
            return version
    closest = min(_LAYOUTS.values(), key=lambda layout: len(layout ^ keys))
    differences = []
    if keys - closest:
        differences.append(f"keys no known release writes: {sorted(keys - closest)}")
    if closest - keys:
        differences.append(f"keys missing: {sorted(closest - keys)}")
    raise CheckpointError(
        f"{where!r} is a checkpoint of a torch_mentor release this mentor_fn does not know "
        f"({'; '.join(differences)}); it reads the layouts of torch_mentor "
        f"{', '.join(KNOWN_VERSIONS)}"
    )


def _check_fields(data: Mapping[str, Any]) -> None:
    """Check the fields conversion reads; raise Malformed at the first bad one."""
    fields.string(data["class_name"], "class_name")
    fields.string(data["class_module"], "class_module")
    fields.tensor_mapping(data["state_dict"], "state_dict")
    best = fields.mapping(data["best_weights_so_far"], "best_weights_so_far")
    fields.tensor_mapping(best, "best_weights_so_far")
    fields.integer(data["best_epoch_so_far"], "best_epoch_so_far", minimum=-1)
    fields.mapping(data["constructor_params"], "constructor_params")
    history = data["train_history"]
    if not isinstance(history, list):
        raise fields.Malformed("train_history", f"must be a list, got {fields.shown(history)}")
    for index, record in enumerate(history):
        fields.mapping(record, f"train_history[{index}]")
    validated = data["validate_history"]
    if not isinstance(validated, Mapping):
        raise fields.Malformed("validate_history", f"must be a dict, got {fields.shown(validated)}")
    for epoch, record in validated.items():
        fields.integer(epoch, f"validate_history key {epoch!r}", minimum=0)
        fields.mapping(record, f"validate_history[{epoch!r}]")
    fields.string_list(data["frozen_modules"], "frozen_modules")
    fields.string_list(data["layer_names"], "layer_names")
    for name, value in fields.mapping(data.get("lr_coefficients", {}), "lr_coefficients").items():
        fields.number(value, f"lr_coefficients[{name!r}]")
    if "total_train_iterations" in data:
        fields.integer(data["total_train_iterations"], "total_train_iterations", minimum=0)
    optimizer = data.get("optimizer_state")
    if optimizer is not None:
        section = fields.mapping(optimizer, "optimizer_state")
        groups = fields.key(section, "param_groups", "optimizer_state")
        if not isinstance(groups, list):
            raise fields.Malformed(
                "optimizer_state['param_groups']", f"must be a list, got {fields.shown(groups)}"
            )
        for index, group in enumerate(groups):
            inside = f"optimizer_state['param_groups'][{index}]"
            fields.mapping(group, inside)
            params = fields.key(group, "params", inside)
            if not isinstance(params, list) or not all(
                isinstance(p, int) and not isinstance(p, bool) for p in params
            ):
                raise fields.Malformed(
                    f"{inside}['params']", f"must be a list of int, got {fields.shown(params)}"
                )
            fields.number(fields.key(group, "lr", inside), f"{inside}['lr']")
        state = fields.key(section, "state", "optimizer_state")
        if not isinstance(state, Mapping):
            raise fields.Malformed(
                "optimizer_state['state']", f"must be a dict, got {fields.shown(state)}"
            )
        for index, values in state.items():
            fields.integer(index, f"optimizer_state['state'] key {index!r}", minimum=0)
            fields.mapping(values, f"optimizer_state['state'][{index!r}]")
    scheduler = data.get("lr_scheduler_state")
    if scheduler is not None:
        fields.mapping(scheduler, "lr_scheduler_state")
