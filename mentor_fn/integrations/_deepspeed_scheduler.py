"""The curriculum's scheduler as a DeepSpeed engine steps it (``run.lr_scheduler``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["EngineScheduler"]

_FORMAT = "mentor_fn.integrations.deepspeed.scheduler"


class EngineScheduler:
    """What to give ``deepspeed.initialize`` as ``lr_scheduler``.

    The engine calls :meth:`step` after each optimizer step it applies (none
    between gradient accumulation boundaries, none after an fp16 overflow);
    that steps the curriculum's scheduler and copies the new lrs into the ZeRO
    groups. The scheduler's state travels in the run's own checkpoint file,
    so :meth:`state_dict` is a marker that :meth:`load_state_dict` checks.

    Args:
        step: steps the curriculum's scheduler and the engine's lrs.
        lrs: the ZeRO groups' lrs now.
    """

    def __init__(self, step: Callable[..., None], lrs: Callable[[], list[float]]) -> None:
        self._step, self._lrs = step, lrs

    def step(self, *args: Any, **kwargs: Any) -> None:
        self._step(*args, **kwargs)

    def get_last_lr(self) -> list[float]:
        return self._lrs()

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "note": "the scheduler's state is in mentor_fn_curriculum.pt, with the curriculum",
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Check the marker (the run's own load restored the scheduler).

        Raises:
            ValueError: another scheduler's state (a checkpoint saved without mentor_fn).
        """
        if not isinstance(state_dict, Mapping) or state_dict.get("format") != _FORMAT:
            raise ValueError(
                "the checkpoint's lr_scheduler state is not a mentor_fn DeepSpeed run's "
                f"(saved without mentor_fn?): {state_dict!r}"
            )
