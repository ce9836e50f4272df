"""A schedule driving `Mentee.fit`, saved in its checkpoints and resumed.

Run: python examples/schedule_fit.py
"""

import os
import tempfile

import torch
from torch import nn
from torch.utils.data import TensorDataset

import mentor_fn as mf


class Net(mf.Mentee):
    def __init__(self, num_classes=3):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, num_classes)
        self.trainer = mf.Classifier()

    def forward(self, x):
        return self.head(self.backbone(x))


torch.manual_seed(0)
inputs = torch.randn(400, 10)
targets = (inputs[:, 0] > 0).long() + (inputs[:, 1] > 0.5).long()
train, val = TensorDataset(inputs[:320], targets[:320]), TensorDataset(inputs[320:], targets[320:])

schedule = mf.Schedule(
    [
        mf.Phase("head", mf.freeze("backbone"), until=mf.after_epochs(2)),
        # fit reports its metrics as train_<name> and val_<name>: val_loss, val_accuracy, ...
        mf.Phase("top", mf.unfreeze("backbone.2"), until=mf.plateau("val_accuracy", mode="max")),
        mf.Phase(
            "all",
            mf.chain(mf.unfreeze("backbone"), mf.layerwise_lr_decay(0.5)),
            lr=5e-3,
            optimizer="fresh",
            until=mf.after_epochs(2),
        ),
    ]
)
with tempfile.TemporaryDirectory() as folder:
    checkpoint = os.path.join(folder, "net.ckpt")
    model = Net()
    # No epochs: fit runs until the last phase's until holds. It stops here after 3 epochs
    # to show a resume; each checkpoint holds the schedule and where the run stands.
    model.fit(
        train,
        val,
        epochs=3,
        checkpoint_path=checkpoint,
        schedule=schedule,
        lr=1e-2,
        batch_size=64,
        progress=False,
    )

    model, optimizer, scheduler = Net.resume_training(checkpoint)
    print("resumed in phase", model.schedule_runner.phase.name, model.schedule_runner.cursor)
    model.fit(
        train, val, checkpoint_path=checkpoint, batch_size=64, progress=False
    )  # the saved schedule goes on
    for record in model.history:
        print(
            f"epoch {record['epoch']} {record['phase']}: val accuracy {record['val']['accuracy']:.0%}"
        )
    # Another schedule is refused unless the change is asked for explicitly.
    try:
        Net.resume_training(checkpoint, schedule=mf.lp_ft("head", probe_epochs=2))
    except mf.CheckpointError as error:
        print("refused:", str(error)[-80:])
