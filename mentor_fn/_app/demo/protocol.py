"""The demo's protocol as values: every constant, the arms, and the curriculum under test.

docs/demo-protocol.md writes the protocol out; these constants are it, and
they were fixed (and committed there) before any result was run. The data's
constants (digits, shots, shift) are in :mod:`mentor_fn._app.demo.data`.
"""

from __future__ import annotations

from ..._schedules.recipes import lp_ft
from ..._schedules.schedule import Schedule

__all__ = [
    "ARMS",
    "BATCH_SIZE",
    "EVALUATION_BATCH_SIZE",
    "GAMMA",
    "HEAD",
    "LR",
    "LR_RATIO",
    "PRETRAIN_EPOCHS",
    "PROBE_EPOCHS",
    "TRANSFER_EPOCHS",
    "curriculum_schedule",
]

BATCH_SIZE = 10
EVALUATION_BATCH_SIZE = 200
"""Validation and measures run in batches of this many images (faster than one
batch of all of them in float64, and fixed, so the sums always run the same way)."""
LR = 3e-3
"""The global lr of every run (lp_ft's fine-tuning phase runs at LR_RATIO of it)."""
GAMMA = 0.85
"""Every optimizer's lr decays by this factor per epoch (ExponentialLR)."""
PRETRAIN_EPOCHS = 10
TRANSFER_EPOCHS = 20
"""Epochs of every transfer arm, on the same batches in the same order."""
PROBE_EPOCHS = 10
"""lp_ft's probe: the first half of the transfer."""
LR_RATIO = 0.1
"""lp_ft's default: full fine-tuning at a tenth of the global lr."""
HEAD = "head"

ARMS = {
    "probe": "linear probe",
    "fine_tune": "plain fine-tuning",
    "lp_ft": "lp_ft (mentor_fn)",
    "by_hand": "LP-FT by hand",
}
"""Arm key -> label, in the order the arms run and the tables list them."""


def curriculum_schedule() -> Schedule:
    """The curriculum under test: lp_ft with the recipe's defaults."""
    return lp_ft(HEAD, probe_epochs=PROBE_EPOCHS)
