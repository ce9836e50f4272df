"""The run file beside every checkpoint a DeepSpeed engine saves, and read back when it loads one.

A framework saves and loads through ``engine.save_checkpoint`` /
``engine.load_checkpoint`` itself (the transformers ``Trainer``, Lightning's
``DeepSpeedStrategy``), with no event that names the folder before DeepSpeed
reads or writes it. DeepSpeed's own extension point for checkpoint input and
output, its checkpoint engine (``engine.checkpoint_engine``), sees every file:
:class:`RunFiles` wraps the engine's.

* Saving: when DeepSpeed writes a tag's model-states file, the run's
  ``mentor_fn_curriculum.pt`` is written into the same folder first
  (atomically). DeepSpeed writes ``latest`` after all its files, so a save
  cut short never leaves ``latest`` on a tag without the run file.
* Loading (when ``on_load`` is set): DeepSpeed reads a tag's model-states
  file first, then loads the module's weights (frozen ones by the set of
  parameters frozen now) and only then the ZeRO optimizer's partitions (into
  the groups the optimizer has now). ``on_load`` gets the tag's folder in
  between, before any of it: the run is put back as saved, requires_grad
  flags and ZeRO groups included, so DeepSpeed loads into the layout it saved.

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

__all__ = ["RunFiles", "install_run_files"]

# DeepSpeed's names for a tag's model states: ZeRO-3 adds the partition rank.
_MODEL_STATES = re.compile(r"(zero_pp_rank_\d+_)?mp_rank_\d+_model_states\.pt")


class RunFiles(CheckpointEngine):  # type: ignore[misc,unused-ignore]
    """DeepSpeed's checkpoint engine, writing the run file beside each checkpoint's model
    states, and handing a loaded checkpoint's folder to ``on_load`` before DeepSpeed reads it.

    Args:
        inner: the engine's checkpoint engine, which does all the work.
        contents: the run file's contents now (plain data).
    """

    def __init__(self, inner: Any, contents: Callable[[], Mapping[str, Any]]) -> None:
        # Not CheckpointEngine.__init__: the inner engine holds the configuration.
        self.inner = inner
        self.contents = contents
        self.on_load: Callable[[Path], None] | None = None
        """Called with a tag's folder when DeepSpeed starts loading it (None: nothing)."""
        self.name = getattr(inner, "name", None)

    def save(self, state_dict: Any, path: str) -> Any:
        target = Path(path)
        if _MODEL_STATES.fullmatch(target.name):
            write_run_file(target.parent.parent, target.parent.name, self.contents())
        return self.inner.save(state_dict, path)

    def create(self, info: Any) -> Any:
        return self.inner.create(info)

    def load(self, path: str, map_location: Any = None) -> Any:
        target = Path(path)
        if self.on_load is not None and _MODEL_STATES.fullmatch(target.name):
            self.on_load(target.parent)
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
        if name in ("inner", "contents", "on_load") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)


def install_run_files(engine: Any, contents: Callable[[], Mapping[str, Any]]) -> RunFiles:
    """Make ``engine`` write the run file (``contents()``) into every checkpoint it saves.

    Installed once per engine; installing again replaces the contents.
    Returns the engine's :class:`RunFiles` (set its ``on_load`` to read them back).
    """
    current = engine.checkpoint_engine
    if isinstance(current, RunFiles):
        current.contents = contents
        return current
    engine.checkpoint_engine = RunFiles(current, contents)
    return engine.checkpoint_engine  # type: ignore[no-any-return,unused-ignore]
