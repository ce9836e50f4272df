"""A recipe: ULMFiT's gradual unfreezing as a `Schedule`, run by `Mentee.fit`.

Run: python examples/schedule_recipe.py
"""

import torch
from torch import nn
from torch.utils.data import TensorDataset

import mentor_fn as mf


class Net(mf.Mentee):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(10, 32)
        self.encoder = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32))
        self.head = nn.Linear(32, 3)
        self.trainer = mf.Classifier()

    def forward(self, x):
        return self.head(self.encoder(self.embed(x).relu()).relu())


torch.manual_seed(0)
inputs = torch.randn(400, 10)
targets = (inputs[:, 0] > 0).long() + (inputs[:, 1] > 0.5).long()
train, val = TensorDataset(inputs[:320], targets[:320]), TensorDataset(inputs[320:], targets[320:])

# The head first, then one more group per stage from the top, each group at
# 0.5 ** depth of the head's lr; the last stage (everything) runs on.
schedule = mf.gradual_unfreeze(
    ["embed", "encoder.0", "encoder.2", "head"], epochs_per_stage=1, decay=0.5
)
print([phase.name for phase in schedule.phases])
model = Net()
model.fit(train, val, epochs=5, schedule=schedule, lr=1e-2, batch_size=64, progress=False)
for record in model.history:
    print(
        f"epoch {record['epoch']} {record['phase']:<18} trainable {len(record['lr'])} layers, "
        f"val accuracy {record['val']['accuracy']:.0%}"
    )

# Linear probe, then full fine-tuning at a tenth of the lr, on a fresh optimizer.
probe_then_tune = mf.lp_ft("head", probe_epochs=2)
Net().fit(train, val, epochs=3, schedule=probe_then_tune, lr=1e-2, batch_size=64, progress=False)
