"""mentor_fn: curriculum learning for PyTorch on an immutable, pure state.

Two controls per layer, frozen and lr coefficient, held in a
:class:`CurriculumState`; optimizer param groups are derived from it, and
:func:`plan` says how a live optimizer moves from one state to the next.
:class:`Curriculum` executes those plans on a live optimizer and scheduler,
:class:`ScheduleRunner` runs a :class:`Schedule` of phases in your own loop,
and :class:`Mentee` is torch_mentor's object API on top. The invariant they
keep, and the guides: the documentation site (``docs/``; ``docs/design.md``
for the design).

Example:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> state = CurriculumState.from_model(model).freeze("0")
    >>> [group["layers"] for group in param_groups(state, model, lr=0.1)]
    [('2',)]
"""

# Each group is one layer of the package, bottom up; a layer imports only those above it here.
# ruff: noqa: I001 (the groups follow the layers, not the alphabet)

# The pure core: layers, the immutable state, transitions, param groups, plans.
from ._core.model_walk import layer_names
from ._core.selection import select_layers
from ._core.wrappers import unwrap_model
from ._core.state import CurriculumState
from ._core.transitions import (
    Transition,
    chain,
    freeze,
    layerwise_lr_decay,
    layerwise_lr_spread,
    set_lr_coefficient,
    set_norm_policy,
    transition_from_dict,
    unfreeze,
)
from ._core.groups import param_groups, requires_grad_map
from ._core.timm_groups import timm_layer_groups
from ._core.plan import GroupLayout, GroupScale, NoChange, Patch, Plan, Rebuild, layout_of, plan

# The wrapper: executes plans on a live optimizer and scheduler (the only mutation).
from ._wrapper.requires_grad import apply_requires_grad
from ._wrapper.curriculum import Curriculum
from ._wrapper.ddp import wrap_ddp

# Schedules: a curriculum over time, as data, and the runner that executes it.
from ._schedules.conditions import (
    Condition,
    after_epochs,
    after_steps,
    all_of,
    any_of,
    condition_from_dict,
    plateau,
)
from ._schedules.schedule import Phase, Schedule
from ._schedules.cursor import ScheduleCursor
from ._schedules.runner import ScheduleRunner
from ._schedules.recipes import fine_tune, gradual_unfreeze, lp_ft

# Files: checkpoints written atomically and read without running code.
from ._files.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ._files.distributed_checkpoint import load_distributed_checkpoint, save_distributed_checkpoint
from ._files.torch_mentor_conversion import TorchMentorConversion, convert_torch_mentor_checkpoint

# Mentee: torch_mentor's object API (an nn.Module that fits, saves and resumes itself).
from ._mentee.trainers import Classifier, Regressor, Trainer
from ._mentee.mentee import Mentee

# The application: its version (the command line lives in mentor_fn.__main__).
from ._app.version import VERSION as __version__  # noqa: F401 (not in __all__: no star import)

__all__ = [
    "CheckpointError",
    "Classifier",
    "Condition",
    "Curriculum",
    "CurriculumState",
    "GroupLayout",
    "GroupScale",
    "Mentee",
    "NoChange",
    "Patch",
    "Phase",
    "Plan",
    "Rebuild",
    "Regressor",
    "Schedule",
    "ScheduleCursor",
    "ScheduleRunner",
    "TorchMentorConversion",
    "Trainer",
    "Transition",
    "after_epochs",
    "after_steps",
    "all_of",
    "any_of",
    "apply_requires_grad",
    "chain",
    "condition_from_dict",
    "convert_torch_mentor_checkpoint",
    "fine_tune",
    "freeze",
    "gradual_unfreeze",
    "layer_names",
    "layerwise_lr_decay",
    "layerwise_lr_spread",
    "layout_of",
    "load_checkpoint",
    "load_distributed_checkpoint",
    "lp_ft",
    "param_groups",
    "plan",
    "plateau",
    "requires_grad_map",
    "save_checkpoint",
    "save_distributed_checkpoint",
    "select_layers",
    "set_lr_coefficient",
    "set_norm_policy",
    "timm_layer_groups",
    "transition_from_dict",
    "unfreeze",
    "unwrap_model",
    "wrap_ddp",
]


def _name_the_public_home() -> None:
    """Give every public class and function the module users import it from.

    They live in private layer modules; with ``__module__ = "mentor_fn"``, pickles,
    reprs, saved class paths and the API reference say ``mentor_fn.X``, a path
    that stays put when the private layout moves.
    """
    namespace = globals()
    for name in __all__:
        value = namespace[name]
        is_class_or_function = isinstance(value, type) or hasattr(value, "__code__")
        if is_class_or_function and value.__module__.startswith("mentor_fn._"):
            value.__module__ = __name__


_name_the_public_home()
