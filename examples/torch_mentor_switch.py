"""Coming from torch_mentor: convert its checkpoint, then go on training in mentor_fn.

The checkpoint is a real one, written by torch_mentor 0.3.0's own ``fit``
(tests/data/torch_mentor/, made by tools/write_torch_mentor_fixtures.py).
The model class is the torch_mentor one with ``from mentor_fn import ...``
in place of ``from mentor import ...``.

Run: python examples/torch_mentor_switch.py
"""

import io
import os
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mentor_fn as mf
from mentor_fn import Classifier, Mentee  # was: from mentor import Mentee, Classifier

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "torch_mentor"


class TinyNet(Mentee):
    def __init__(self, hidden=6, num_classes=3):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(num_classes))
        self.body = nn.Sequential(
            nn.Linear(4, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
        )
        self.head = nn.Linear(hidden, num_classes)
        self.trainer = Classifier()

    def forward(self, x):
        return self.head(torch.relu(self.body(x))) * self.scale


data = torch.load(DATA / "data.pt", weights_only=True)
loader = DataLoader(TensorDataset(data["inputs"], data["targets"]), batch_size=8)

with tempfile.TemporaryDirectory() as folder:
    converted = os.path.join(folder, "run.ckpt")
    # The same as: python -m mentor_fn convert tm0.3.0_trained.pt run.ckpt
    report = mf.convert_torch_mentor_checkpoint(DATA / "tm0.3.0_trained.pt", converted)
    print(report)  # what was carried, changed, and not carried (with why)

    # torch_mentor's call forms: resume_training with lr (it must repeat the
    # saved global lr: the run goes on as it was), current_epoch.
    model, optimizer, scheduler = TinyNet.resume_training(converted, lr=0.01)
    print(f"resumed at epoch {model.current_epoch}, frozen {sorted(model._frozen_modules)}")
    model.fit(loader, loader, epochs=2, progress=False)
    record = model.history[-1]
    print(f"epoch {record['epoch']}: val loss {record['val']['loss']:.4f}")

    # A binary file object works wherever a path does.
    buffer = io.BytesIO()
    model.save(buffer)
    buffer.seek(0)
    print("from a file object: epoch", TinyNet.resume(buffer).current_epoch)
