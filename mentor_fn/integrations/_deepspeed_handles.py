"""A stable handle on a DeepSpeed engine's ZeRO optimizer, for frameworks that keep a reference.

accelerate (under the transformers ``Trainer``) and Lightning's
``DeepSpeedStrategy`` hold the optimizer ``deepspeed.initialize`` returned for
the whole run. A change of the trainable set replaces the engine's ZeRO
optimizer (see ``_deepspeed_zero``); the handle forwards every call to the
one the engine holds at that moment, so the frameworks' references never go
stale.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._forwarding import ForwardingOptimizer

__all__ = ["EngineOptimizer"]


class EngineOptimizer(ForwardingOptimizer):
    """The optimizer a DeepSpeed engine holds now (``engine.optimizer``), whichever object that is.

    ``param_groups``, ``state``, :meth:`step`, :meth:`zero_grad`,
    :meth:`state_dict` and the ZeRO optimizer's own attributes (``overflow``,
    ``loss_scale``...) are the live optimizer's.
    """

    def __init__(self, engine: Any) -> None:
        # Not Optimizer.__init__: groups and state belong to the live optimizer.
        self._engine = engine

    @property
    def live(self) -> Any:
        """The engine's ZeRO optimizer right now."""
        return self._engine.optimizer

    def step(self, *args: Any, **kwargs: Any) -> Any:
        return self.live.step(*args, **kwargs)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.live.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.live.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.live.load_state_dict(state_dict)

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes the handle lacks: read them from the live optimizer.
        if name == "_engine" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.live, name)

    def __repr__(self) -> str:
        return f"EngineOptimizer({type(self.live).__name__})"
