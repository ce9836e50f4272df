"""Property-test your own curriculum: strategies, invariant checks, a state machine.

Needs hypothesis: the ``testing`` extra (``pip install -e '.[testing]'`` in a clone). ``import mentor_fn``
never imports this package (nor hypothesis).

* Strategies: :func:`models` (small module trees with tied weights, shared
  modules, root parameters, norm layers, parameters frozen before any
  Curriculum), :func:`writes` / :func:`states` (states of a model reached by
  random single-layer writes), :func:`patterns` and :func:`transitions`
  (mentor_fn transition values whose patterns match a model),
  :func:`schedules` / :func:`conditions` (valid schedules of phases for a model).
* Checks of the invariant (docs/design.md), each raising ``AssertionError`` that names
  the parameter, layer or group at fault: :func:`check_flags` (1),
  :func:`check_partition` (2), :func:`check_lrs` (3), :func:`check_resume` (4).
* :class:`CurriculumMachine`: a hypothesis ``RuleBasedStateMachine`` to
  subclass with your model, optimizer and scheduler; it checks the whole
  invariant after every step of random runs.

Example (a pytest module)::

    import torch
    from torch import nn
    from mentor_fn.testing import CurriculumMachine

    class MyMachine(CurriculumMachine):
        example_input = torch.randn(4, 8)

        def make_model(self):
            return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))

        def make_scheduler(self, optimizer):
            return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)

    TestMyCurriculum = MyMachine.TestCase
"""

try:
    import hypothesis
except ImportError as error:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "mentor_fn.testing needs hypothesis, which is not installed: "
        "pip install 'hypothesis>=6.100' (the 'testing' extra of mentor_fn)"
    ) from error

if hypothesis.version.__version_info__ < (6, 100):  # pragma: no cover
    raise ImportError(
        f"mentor_fn.testing needs hypothesis >= 6.100, found {hypothesis.__version__}: "
        "pip install 'hypothesis>=6.100' (the 'testing' extra of mentor_fn)"
    )

from ._checks import check_flags, check_lrs, check_partition
from ._diff import first_difference
from ._machine import CurriculumMachine
from ._models import INPUT_WIDTH, GeneratedModel, models
from ._resume import check_resume
from ._schedules import conditions, schedules
from ._strategies import (
    COEFFICIENTS,
    TRANSITION_KINDS,
    Write,
    patterns,
    states,
    transitions,
    writes,
)
from ._views import ModelView, view_model

__all__ = [
    "COEFFICIENTS",
    "INPUT_WIDTH",
    "TRANSITION_KINDS",
    "CurriculumMachine",
    "GeneratedModel",
    "ModelView",
    "Write",
    "check_flags",
    "check_lrs",
    "check_partition",
    "check_resume",
    "conditions",
    "first_difference",
    "models",
    "patterns",
    "schedules",
    "states",
    "transitions",
    "view_model",
    "writes",
]
