"""An optimizer handle that forwards to whichever optimizer is live now.

A framework keeps the optimizer it was given for the whole run, while a phase
change may replace the real one (a rebuild, a re-initialized ZeRO optimizer).
The handles the adapters give frameworks subclass :class:`ForwardingOptimizer`
and say in :attr:`~ForwardingOptimizer.live` where the real one is; the
groups, the state and the defaults then always are the real optimizer's.
"""

from __future__ import annotations

import abc
from typing import Any

import torch

__all__ = ["ForwardingOptimizer"]


class ForwardingOptimizer(torch.optim.Optimizer, metaclass=abc.ABCMeta):
    """``param_groups``, ``state`` and ``defaults`` read and written on :attr:`live`.

    Subclasses do not call ``Optimizer.__init__``: the groups and the state
    belong to the live optimizer, never to the handle.
    """

    @property
    @abc.abstractmethod
    def live(self) -> Any:
        """The real optimizer right now."""

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.live.param_groups

    @param_groups.setter
    def param_groups(self, groups: list[dict[str, Any]]) -> None:
        self.live.param_groups = groups

    @property
    def state(self) -> Any:
        return self.live.state

    @state.setter
    def state(self, state: Any) -> None:
        self.live.state = state

    @property
    def defaults(self) -> dict[str, Any]:
        # DeepSpeed's ZeRO optimizers are not torch optimizers and may lack them.
        return getattr(self.live, "defaults", {})

    @defaults.setter
    def defaults(self, defaults: dict[str, Any]) -> None:
        self.live.defaults = defaults
