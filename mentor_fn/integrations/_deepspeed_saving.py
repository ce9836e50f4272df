"""The run file written whenever a DeepSpeed engine saves a checkpoint, whoever asked for it.

A framework saves through ``engine.save_checkpoint`` itself (the transformers
``Trainer``, Lightning's ``DeepSpeedStrategy``), with no event that names the
folder before DeepSpeed writes into it. DeepSpeed's own extension point for
checkpoint input and output, its checkpoint engine (``engine.checkpoint_engine``),
sees every file it writes: :class:`RunFileOnSave` wraps the engine's and, when
DeepSpeed writes a tag's model-states file, writes the run's
``mentor_fn_curriculum.pt`` into the same folder first (atomically). DeepSpeed
writes ``latest`` after all its files, so a save cut short never leaves
``latest`` on a tag without the run file.

Files that are not a checkpoint tag's model states (``save_16bit_model``'s
weights, ZeRO's optimizer partitions) pass through untouched.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from deepspeed.runtime.checkpoint_engine.checkpoint_engine import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
    CheckpointEngine,
)

from ._deepspeed_checkpoint import write_run_file

__all__ = ["RunFileOnSave", "install_run_file_writer"]

# DeepSpeed's names for a tag's model states: ZeRO-3 adds the partition rank.
_MODEL_STATES = re.compile(r"(zero_pp_rank_\d+_)?mp_rank_\d+_model_states\.pt")


class RunFileOnSave(CheckpointEngine):  # type: ignore[misc,unused-ignore]
    """DeepSpeed's checkpoint engine, writing the run file beside each checkpoint's model states.

    Args:
        inner: the engine's checkpoint engine, which does all the work.
        contents: the run file's contents now (plain data).
    """

    def __init__(self, inner: Any, contents: Callable[[], Mapping[str, Any]]) -> None:
        # Not CheckpointEngine.__init__: the inner engine holds the configuration.
        self.inner = inner
        self.contents = contents
        self.name = getattr(inner, "name", None)

    def save(self, state_dict: Any, path: str) -> Any:
        target = Path(path)
        if _MODEL_STATES.fullmatch(target.name):
            write_run_file(target.parent.parent, target.parent.name, self.contents())
        return self.inner.save(state_dict, path)

    def create(self, info: Any) -> Any:
        return self.inner.create(info)

    def load(self, path: str, map_location: Any = None) -> Any:
        return self.inner.load(path, map_location=map_location)

    def commit(self, info: Any) -> Any:
        return self.inner.commit(info)

    def makedirs(self, path: str, exist_ok: bool = False) -> Any:
        return self.inner.makedirs(path, exist_ok=exist_ok)

    def is_data_parallel_writer(self, dp_rank: int) -> bool:
        return bool(self.inner.is_data_parallel_writer(dp_rank))

    def is_decoupled(self) -> bool:
        return bool(self.inner.is_decoupled())

    def set_commit_info(self, info: Any) -> Any:
        return self.inner.set_commit_info(info)

    def get_commit_info(self) -> Any:
        return self.inner.get_commit_info()

    def cleanup(self) -> Any:
        return self.inner.cleanup()

    def preserves_storage_sharing(self) -> bool:
        return bool(self.inner.preserves_storage_sharing())

    def __getattr__(self, name: str) -> Any:
        # Only reached for what this class lacks: the inner engine's own attributes.
        if name in ("inner", "contents") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)


def install_run_file_writer(engine: Any, contents: Callable[[], Mapping[str, Any]]) -> None:
    """Make ``engine`` write the run file (``contents()``) into every checkpoint it saves.

    Installed once per engine; installing again replaces the contents.
    """
    current = engine.checkpoint_engine
    if isinstance(current, RunFileOnSave):
        current.contents = contents
    else:
        engine.checkpoint_engine = RunFileOnSave(current, contents)
