"""A process-wide count of module and parameter registrations: cheap evidence of no change.

A :class:`~mentor_fn.Curriculum` keeps the walk of its model between
transitions (walking a 10k-layer model costs milliseconds; a transition that
changes one group should cost microseconds), and its optimizer's step guard
wants to know whether any parameter it holds was replaced since it looked.
Both compare this count with the one they recorded: torch calls its global
registration hooks whenever a module or parameter is assigned or registered
(``model.head = nn.Linear(...)``, ``module.weight = nn.Parameter(...)``,
``add_module``, ``register_parameter``, ``load_state_dict(assign=True)``), so
an unchanged count means no model in the process changed that way. A changed
count only means "look again": the walk is redone, the guard checks the whole
optimizer once.

Edits that bypass torch's registration (writing ``module._parameters`` or
``_modules`` directly, as ``fully_shard`` does; deleting an attribute) are not
counted: the step guard's registry lookups catch ``fully_shard`` (it replaces
every parameter), and every rebuild and ``build()`` walks the model afresh.

The hooks are installed once per process, at the first use, and cost one
Python call per registration.
"""

from __future__ import annotations

from typing import Any

from torch.nn.modules import module as _torch_module

__all__ = ["structure_generation"]

_count = [0]
_installed = [False]


def _counted(module: Any, name: str, value: Any) -> None:
    _count[0] += 1
    # None: torch keeps the value it was given.


def structure_generation() -> int:
    """The number of module and parameter registrations so far (hooks installed at first call)."""
    if not _installed[0]:
        _installed[0] = True
        _torch_module.register_module_module_registration_hook(_counted)
        _torch_module.register_module_parameter_registration_hook(_counted)
    return _count[0]
