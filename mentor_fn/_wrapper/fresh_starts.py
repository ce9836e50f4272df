"""Parameters that start with fresh optimizer state inside a fused group that has state.

A parameter unfrozen on the patch path, or made trainable by a rebuild, starts
with the state a new optimizer gives it: none, for every torch optimizer that
creates its state at the first step (all but Adagrad). torch's for-loop and
foreach implementations create that state parameter by parameter, so a group
where some parameters have state and others have none steps each one as it
should. A fused implementation hands the whole group to one kernel and decides
per list: fused SGD takes a list as a first step only when no parameter in it
has a momentum buffer, and refuses a list where some have one and others not
(a plain torch optimizer raises the same ``TypeError``).

So for the steps where a fused group holds both kinds, its parameters without
state are stepped as a group of their own: a copy of their group (same
hyperparameters, same lr), inserted right after it. Each kernel call then sees
a uniform list, and the newcomers get exactly the first step a new parameter
gets (for SGD, a momentum buffer equal to the gradient, undamped, as in the
for-loop implementation). No state is invented: a zero momentum buffer would
be exact only without dampening, and other optimizers would need other
guesses. Stepping a subset of a group apart is exact for torch's fused
kernels, which work tensor by tensor.

The split exists only during the step: a step pre-hook makes it and a step
post-hook undoes it (the group gets its own ``params`` list back, the copy is
removed). Both hooks are registered only while such parameters are pending and
removed once they all have state, so every other step costs nothing. Within a
step, code that reads ``param_groups`` (a closure's ``zero_grad``, hooks
registered after these) sees every parameter, in one more group than usual.
If the step raises, the next step, or :meth:`FreshStarts.restore`, undoes the
split first.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

__all__ = ["FreshStarts"]


class FreshStarts:
    """Steps the stateless parameters of one optimizer's fused groups apart, while needed.

    Args:
        optimizer: the optimizer whose groups are watched.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self._optimizer = optimizer
        # (group, its parameters still without state), for fused groups only.
        self._pending: list[tuple[dict[str, Any], list[torch.Tensor]]] = []
        # (group, its own params list, the copy stepping the others) during a step.
        self._split: list[tuple[dict[str, Any], list[torch.Tensor], dict[str, Any]]] = []
        self._handles: tuple[RemovableHandle, ...] = ()

    def add(
        self,
        parameters: Iterable[torch.Tensor],
        groups: Iterable[dict[str, Any]] | None = None,
    ) -> None:
        """Watch ``parameters``: those without state in a fused group are stepped apart.

        Parameters in non-fused groups, or that already have state, are
        ignored. ``groups``: the optimizer's groups that hold them, when
        known (default: every group). Linear in the parameters of those
        groups that are fused.
        """
        state = self._optimizer.state
        fresh = {id(parameter) for parameter in parameters if not state.get(parameter)}
        if not fresh:
            return
        candidates = self._optimizer.param_groups if groups is None else groups
        groups = [group for group in candidates if group.get("fused")]
        if not groups:
            return
        watched = {id(group): known for group, known in self._pending}
        for group in groups:
            waiting = [parameter for parameter in group["params"] if id(parameter) in fresh]
            if not waiting:
                continue
            known = watched.get(id(group))
            if known is None:
                self._pending.append((group, waiting))
            else:
                known_ids = {id(parameter) for parameter in known}
                known.extend(p for p in waiting if id(p) not in known_ids)
        if self._pending and not self._handles:
            self._handles = (
                self._optimizer.register_step_pre_hook(self._before_step),
                self._optimizer.register_step_post_hook(self._after_step),
            )

    def restore(self) -> None:
        """Undo a split left in place by a step that raised (nothing to do otherwise)."""
        if not self._split:
            return
        groups = self._optimizer.param_groups
        for group, own, apart in reversed(self._split):
            group["params"] = own
            for index, candidate in enumerate(groups):
                if candidate is apart:
                    del groups[index]
                    break
        self._split.clear()

    def close(self) -> None:
        """Stop watching: the optimizer's groups are about to be replaced (a rebuild in place).

        Undoes a split left by a step that raised, removes the hooks and
        forgets the pending parameters; a new instance watches the new groups.
        """
        self.restore()
        for handle in self._handles:
            handle.remove()
        self._handles = ()
        self._pending = []

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.restore()
        state = self._optimizer.state
        groups = self._optimizer.param_groups
        for group, waiting in self._pending:
            fresh = [parameter for parameter in waiting if not state.get(parameter)]
            own = group["params"]
            if not fresh or len(fresh) == len(own):
                continue  # a uniform list already: all with state, or none
            fresh_ids = {id(parameter) for parameter in fresh}
            apart = dict(group)
            apart["params"] = fresh
            position = next(index for index, candidate in enumerate(groups) if candidate is group)
            group["params"] = [parameter for parameter in own if id(parameter) not in fresh_ids]
            groups.insert(position + 1, apart)
            self._split.append((group, own, apart))

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.restore()
        state = self._optimizer.state
        # A parameter frozen again needs nothing until it is unfrozen, which
        # adds it again; one without a gradient yet keeps waiting.
        still = []
        for group, waiting in self._pending:
            left = [p for p in waiting if p.requires_grad and not state.get(p)]
            if left:
                still.append((group, left))
        self._pending = still
        if not still:
            for handle in self._handles:
                handle.remove()
            self._handles = ()
