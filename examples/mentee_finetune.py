"""`Mentee`: torch_mentor's object API. Fine-tune in phases, checkpoint, resume.

A subclass writes `__init__` and `forward`; freezing, coefficients, the
optimizer, `fit`, checkpoints and resume come with it. Run:
python examples/mentee_finetune.py
"""

import os
import tempfile

import torch
from torch import nn
from torch.utils.data import TensorDataset

from mentor_fn import Classifier, Mentee


class Net(Mentee):
    def __init__(self, num_classes=3):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, num_classes)
        self.trainer = Classifier()

    def forward(self, x):
        return self.head(self.backbone(x))


torch.manual_seed(0)
inputs = torch.randn(600, 10)
targets = (inputs[:, 0] > 0).long() + (inputs[:, 1] > 0.5).long()
train, val = TensorDataset(inputs[:480], targets[:480]), TensorDataset(inputs[480:], targets[480:])

model = Net(num_classes=3)
print(model.layer_names)  # ['backbone', 'backbone.0', 'backbone.2', 'head']

with tempfile.TemporaryDirectory() as folder:
    phase1, phase2 = os.path.join(folder, "phase1.ckpt"), os.path.join(folder, "phase2.ckpt")

    # Phase 1: train the head only.
    model.freeze("backbone")
    model.create_train_objects(lr=1e-2)
    model.fit(train, val, epochs=4, checkpoint_path=phase1, progress=False)

    # Phase 2: everything, the backbone at 0.3x, at a lower global lr.
    model.unfreeze("backbone", reset_optimizer_if_needed=True)
    model.set_lr_coefficient(0.3, "backbone")
    model.create_train_objects(lr=5e-3)
    model.fit(train, val, epochs=6, checkpoint_path=phase2, progress=False)
    for record in model.history:
        lrs = ", ".join(f"{layer} {lr:.0e}" for layer, lr in record["lr"].items())
        print(f"epoch {record['epoch']}: val accuracy {record['val']['accuracy']:.0%}; lr {lrs}")

    # Resume: the class and constructor arguments are in the checkpoint; the
    # optimizer comes back with its per-parameter state and the scheduler's progress.
    resumed, optimizer, scheduler = Net.resume_training(phase2)
    assert resumed.curriculum_state == model.curriculum_state
    assert dict(resumed._lr_coefficients) == {"backbone": 0.3}
    resumed.fit(train, val, epochs=1, progress=False)
    accuracy = resumed.history[-1]["val"]["accuracy"]
    print(
        f"resumed after epoch {resumed.epoch - 1}; epoch {resumed.epoch}: val accuracy {accuracy:.0%}"
    )
