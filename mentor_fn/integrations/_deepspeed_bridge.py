"""A framework adapter's curriculum run on the DeepSpeed engine the framework builds.

The transformers ``Trainer`` (through accelerate) and Lightning's
``DeepSpeedStrategy`` call ``deepspeed.initialize`` and
``engine.save_checkpoint`` / ``engine.load_checkpoint`` themselves. The
adapter's :class:`~mentor_fn.integrations._run.CurriculumRun` keeps owning the
schedule, its cursor and the adapter's bookkeeping, and the framework keeps
stepping the scheduler handle it was given; :class:`EngineBridge` makes the
engine follow:

* :meth:`~mentor_fn.integrations.deepspeed.DeepSpeedCurriculum.client_optimizer`
  is what the framework gives ``deepspeed.initialize``: the curriculum's
  trainable groups;
* :meth:`EngineBridge.attach_engine` takes the engine over, before the
  framework loads a checkpoint into it or steps it, and returns a handle on
  its ZeRO optimizer (for the framework to hold in place of the object a
  phase change replaces). From then on every checkpoint the engine saves
  holds the run file (the curriculum, the cursor, the adapter's bookkeeping
  and the ZeRO layout), and every checkpoint it loads puts the run back from
  it first, requires_grad flags and ZeRO groups included, so that DeepSpeed
  loads its own state into the layout it saved (see
  ``_deepspeed_checkpoint_engine``);
* :meth:`~mentor_fn.integrations.deepspeed.DeepSpeedCurriculum.sync` after
  every change (a phase change, a scheduler step, a transition made from any
  callback), before the engine's next step, and
  :meth:`~mentor_fn.integrations.deepspeed.DeepSpeedCurriculum.checkpoint_loaded`
  once the framework has loaded a checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import CheckpointError
from ._deepspeed_checkpoint import read_run_file
from ._deepspeed_checkpoint_engine import install_run_files
from ._deepspeed_handles import EngineOptimizer
from ._run import CurriculumRun
from .deepspeed import DeepSpeedCurriculum

__all__ = ["EngineBridge"]


class EngineBridge(DeepSpeedCurriculum):
    """The engine side of an adapter's run: no schedule of its own (the run's drives),
    no scheduler stepping (the framework steps its handle).

    Args:
        run: the adapter's run.
    """

    def __init__(self, run: CurriculumRun) -> None:
        super().__init__(run.curriculum, steps_scheduler=False)
        self._adapter_run = run
        self.handle: EngineOptimizer | None = None
        """The handle on the engine's ZeRO optimizer, once attached."""

    def state_dict(self) -> dict[str, Any]:
        """The curriculum and the ZeRO layout, with the adapter's cursor and bookkeeping."""
        fields = self._adapter_run.state_dict()
        return {**super().state_dict(), "schedule": fields["schedule"], "extra": fields["extra"]}

    def attach_engine(self, engine: Any) -> EngineOptimizer:
        """:meth:`attach` the engine, and read the run back from every checkpoint it loads;
        the handle the framework should hold as its optimizer."""
        self.attach(engine)
        install_run_files(engine, self._run_file_contents).on_load = self._restore
        self.handle = EngineOptimizer(engine)
        return self.handle

    def _restore(self, folder: Path) -> None:
        """Put the run back as the run file of a checkpoint tag's ``folder`` has it, with
        the ZeRO optimizer rebuilt in its layout (DeepSpeed loads the state next).

        Raises:
            CheckpointError: a missing or malformed run file (a checkpoint saved
                without mentor_fn, or by a DeepSpeedCurriculum in a loop of its
                own), or one that does not fit this run. Nothing has changed.
        """
        _, saved = read_run_file(folder.parent, folder.name)
        where = repr(str(folder))
        if "extra" not in saved:
            raise CheckpointError(
                f"{where} was saved by a DeepSpeedCurriculum in a loop of its own, not by a "
                "framework's curriculum callback: load it with DeepSpeedCurriculum.load_checkpoint"
            )
        try:
            self._adapter_run.load_fields(saved)
            self.use_zero_groups(saved.get("zero_groups"))
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{where} does not fit this run: {error}") from None
