"""mentor_fn: curriculum learning for PyTorch on an immutable, pure state.

Two controls per layer, frozen and lr coefficient, held in a
:class:`CurriculumState`; optimizer param groups are derived from it, and
:func:`plan` says how a live optimizer moves from one state to the next.
"""

import importlib.metadata as _metadata

from ._checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ._conditions import (
    Condition,
    after_epochs,
    after_steps,
    all_of,
    any_of,
    condition_from_dict,
    plateau,
)
from ._curriculum import Curriculum
from ._ddp import wrap_ddp
from ._distributed_checkpoint import load_distributed_checkpoint, save_distributed_checkpoint
from ._groups import param_groups, requires_grad_map
from ._layers import layer_names, select_layers, unwrap_model
from ._mentee import Mentee
from ._plan import GroupLayout, GroupScale, NoChange, Patch, Plan, Rebuild, layout_of, plan
from ._recipes import fine_tune, gradual_unfreeze, lp_ft
from ._requires_grad import apply_requires_grad
from ._schedule import Phase, Schedule
from ._schedule_cursor import ScheduleCursor
from ._schedule_runner import ScheduleRunner
from ._state import CurriculumState
from ._trainers import Classifier, Regressor, Trainer
from ._transitions import (
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

try:  # one home for the version: the distribution's metadata (pyproject.toml)
    __version__ = _metadata.version("mentor_fn")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "unknown (not installed)"

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
    "Trainer",
    "Transition",
    "after_epochs",
    "after_steps",
    "all_of",
    "any_of",
    "apply_requires_grad",
    "chain",
    "condition_from_dict",
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
    "transition_from_dict",
    "unfreeze",
    "unwrap_model",
    "wrap_ddp",
]
