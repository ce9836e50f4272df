"""Lightning: a curriculum schedule as a Callback (pip install 'mentor_fn[lightning]').

Three phases: the head alone for two epochs; the top block, warming up, until
the validation loss stops improving (three epochs at most); then everything
with layer-wise lr decay at a lower lr. Halfway, the run is resumed from
Lightning's own checkpoint, as a new process would resume it.
"""

import tempfile

import lightning as L
import torch
from torch import nn
from torch.nn import functional
from torch.utils.data import DataLoader, TensorDataset

import mentor_fn as mf
from mentor_fn.integrations.lightning import CurriculumCallback, curriculum_optimizers

torch.set_num_threads(1)  # a tiny model: more threads only wait on each other


class Classifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        return functional.cross_entropy(self(inputs), targets)

    def validation_step(self, batch, batch_idx):
        inputs, targets = batch
        self.log("val_loss", functional.cross_entropy(self(inputs), targets))

    def configure_optimizers(self):
        return curriculum_optimizers(self)  # the curriculum's optimizer and scheduler


schedule = mf.Schedule(
    [
        mf.Phase("head", mf.freeze("backbone"), until=mf.after_epochs(2)),
        mf.Phase(
            "top",
            mf.unfreeze("backbone.2"),
            until=mf.any_of(mf.plateau("val_loss", patience=1), mf.after_epochs(3)),
            warmup_steps=10,
        ),
        mf.Phase("all", mf.chain(mf.unfreeze("backbone"), mf.layerwise_lr_decay(0.5)), lr=3e-3),
    ]
)


def run():
    """The model, and a callback owning its curriculum and the schedule."""
    model = Classifier()
    curriculum = mf.Curriculum(
        model,
        lr=1e-2,
        optimizer=torch.optim.AdamW,
        scheduler=lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.8),
    )
    return model, CurriculumCallback(curriculum, schedule)


torch.manual_seed(0)
inputs = torch.randn(512, 16)
targets = inputs[:, :4].argmax(dim=1)
train = DataLoader(TensorDataset(inputs[:448], targets[:448]), batch_size=64, shuffle=True)
val = DataLoader(TensorDataset(inputs[448:], targets[448:]), batch_size=64)
quiet = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}

with tempfile.TemporaryDirectory() as folder:
    model, callback = run()
    first = L.Trainer(max_epochs=4, callbacks=[callback], default_root_dir=folder, **quiet)
    first.fit(model, train, val)
    print(f"after epoch {first.current_epoch}: phase {callback.runner.phase.name!r}")

    # Resume from the checkpoint Lightning wrote: it holds the curriculum (layout,
    # optimizer state by parameter name, scheduler) and the schedule's cursor.
    model, callback = run()
    second = L.Trainer(max_epochs=8, callbacks=[callback], default_root_dir=folder, **quiet)
    second.fit(model, train, val, ckpt_path=first.checkpoint_callback.best_model_path)
    lrs = {
        g["layers"][0]: g["lr"] for g in callback.curriculum.optimizer.param_groups if g["layers"]
    }
    print(f"after epoch {second.current_epoch}: phase {callback.runner.phase.name!r}, lrs", end=" ")
    print(", ".join(f"{layer} {lr:.1e}" for layer, lr in lrs.items()))
