"""Property-test your own curriculum with mentor_fn.testing.CurriculumMachine.

Subclass the machine with your model, optimizer and scheduler: hypothesis then
drives a Curriculum through random runs (freeze / unfreeze / lr coefficients /
layer-wise decay, training steps, scheduler steps, new phases, save and resume)
and checks the invariant after every step: requires_grad follows the state,
every trainable parameter is in exactly one group, every lr is the schedule's
times its coefficient, and a resumed run continues bit for bit. A failure
prints the shortest run that breaks it. Needs `pip install 'mentor_fn[testing]'`.

Run: python -m pytest examples/property_test.py   (or as a script)
"""

import os
import tempfile

import torch
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test
from torch import nn

from mentor_fn.testing import CurriculumMachine


@settings(max_examples=5, stateful_step_count=20, deadline=None, database=None)
class MyCurriculum(CurriculumMachine):
    optimizer_class = torch.optim.AdamW
    optimizer_kwargs = {"weight_decay": 0.01}
    example_input = torch.randn(8, 16)  # the default loss: mean square of the outputs

    def make_model(self):
        return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.LayerNorm(32), nn.Linear(32, 4))

    def make_scheduler(self, optimizer):
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)


TestMyCurriculum = MyCurriculum.TestCase  # what pytest collects

if __name__ == "__main__":  # as a script, hypothesis keeps its caches out of the cwd
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = scratch
        run_state_machine_as_test(MyCurriculum)
    print("MyCurriculum: the invariant held after every step of 5 random runs")
