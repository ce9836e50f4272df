"""`Mentee`: torch_mentor's object API. Fine-tune in phases, checkpoint, resume.

Run: python examples/mentee_finetune.py
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
    checkpoint = os.path.join(folder, "net.ckpt")
    # Phase 1: the head only.
    model.freeze("backbone")
    model.create_train_objects(lr=1e-2)
    model.fit(train, val, epochs=4, checkpoint_path=checkpoint)
    # Phase 2: everything, the backbone at 0.3x, a fresh optimizer at a lower lr.
    model.unfreeze("backbone", reset_optimizer_if_needed=True)
    model.set_lr_coefficient(0.3, "backbone")
    model.create_train_objects(lr=5e-3)
    model.fit(train, val, epochs=6, checkpoint_path=checkpoint)

    # Resume: the class and its constructor arguments, the curriculum, the
    # optimizer's state and the scheduler's progress all come from the file.
    model, optimizer, scheduler = Net.resume_training(checkpoint)
    print(f"epoch {model.epoch}: coefficients {dict(model._lr_coefficients)}")
    model.fit(train, val, epochs=1)
    for record in model.history:
        lrs = ", ".join(f"{layer} {lr:.3g}" for layer, lr in record["lr"].items())
        print(f"epoch {record['epoch']}: val accuracy {record['val']['accuracy']:.0%}; lr {lrs}")
