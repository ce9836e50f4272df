"""mentor_fn: curriculum learning for PyTorch on an immutable, pure state.

Two controls per layer, frozen and lr coefficient, held in a
:class:`CurriculumState`; optimizer param groups are derived from it, and
:func:`plan` says how a live optimizer moves from one state to the next.
"""

from ._checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ._curriculum import Curriculum
from ._ddp import wrap_ddp
from ._distributed_checkpoint import load_distributed_checkpoint, save_distributed_checkpoint
from ._groups import param_groups, requires_grad_map
from ._layers import layer_names, select_layers, unwrap_model
from ._mentee import Mentee
from ._plan import GroupLayout, GroupScale, NoChange, Patch, Plan, Rebuild, layout_of, plan
from ._requires_grad import apply_requires_grad
from ._state import CurriculumState
from ._trainers import Classifier, Regressor, Trainer
from ._transitions import (
    Transition,
    chain,
    freeze,
    layerwise_lr_decay,
    set_lr_coefficient,
    unfreeze,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "Classifier",
    "Curriculum",
    "CurriculumState",
    "GroupLayout",
    "GroupScale",
    "Mentee",
    "NoChange",
    "Patch",
    "Plan",
    "Rebuild",
    "Regressor",
    "Trainer",
    "Transition",
    "apply_requires_grad",
    "chain",
    "freeze",
    "layer_names",
    "layerwise_lr_decay",
    "layout_of",
    "load_checkpoint",
    "load_distributed_checkpoint",
    "param_groups",
    "plan",
    "requires_grad_map",
    "save_checkpoint",
    "save_distributed_checkpoint",
    "select_layers",
    "set_lr_coefficient",
    "unfreeze",
    "unwrap_model",
    "wrap_ddp",
]
