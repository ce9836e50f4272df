"""A model's walk, kept between transitions while nothing was registered.

Walking a model is linear in its modules (26 ms at 10k layers); a transition
that changes one group should not pay it. A :class:`KeptWalk` keeps the last
walk with the process's registration count taken before it
(:func:`~mentor_fn._wrapper.structure_watch.structure_generation`) and the registry
lookups that lead to one of its parameters: while the count is unchanged, no
module or parameter was assigned anywhere, and while the lookups hold, the
registries were not rewritten under that parameter either (``fully_shard``
writes them directly, replacing every parameter); the walk still describes
the model. Otherwise the model is walked again.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .._core.groups import walk_for_state
from .._core.model_walk import ModelLayers
from .._core.state import CurriculumState
from .registration_lookups import Lookup, lookups_hold, registration_lookups
from .structure_watch import structure_generation

__all__ = ["KeptWalk"]


class KeptWalk:
    """The last walk of ``model``, and whether it may still be used.

    Args:
        model: the model (bare or wrapped) walked.
    """

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self._walked: ModelLayers | None = None
        self._generation = -1
        self._witness: tuple[Lookup, ...] | None = None

    def kept(self) -> ModelLayers | None:
        """The last walk, if the model cannot have changed since; else None."""
        walked, witness = self._walked, self._witness
        if (
            walked is not None
            and self._generation == structure_generation()
            and witness is not None
            and lookups_hold(witness)
        ):
            return walked
        return None

    def walk(
        self, state: CurriculumState, check: Callable[[ModelLayers], None] | None = None
    ) -> ModelLayers:
        """Walk the model now, check that its layers are ``state``'s, and keep the walk.

        ``check`` (say, that an optimizer's parameters are among the walk's)
        runs before the walk is kept: a walk that failed it is not.

        Raises:
            ValueError: the model's layers are not the state's.
            Whatever ``check`` raises.
        """
        generation = structure_generation()  # before: a registration during the walk counts
        walked = walk_for_state(state, self._model)
        if check is not None:
            check(walked)
        self.keep(walked, generation)
        return walked

    def keep(self, walked: ModelLayers, generation: int) -> None:
        """Keep ``walked``, a walk that started at registration count ``generation``."""
        witness: tuple[Lookup, ...] | None = ()  # no parameter: nothing to rewrite
        for layer, parameters in zip(walked.layers, walked.parameters):
            if parameters:
                witness = registration_lookups(self._model, layer, parameters[0])
                break
        self._walked, self._generation, self._witness = walked, generation, witness
