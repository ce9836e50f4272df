"""A schedule in your own training loop: `ScheduleRunner` on a `Curriculum`.

Run: python examples/schedule_loop.py
"""

import torch
from torch import nn
from torch.nn import functional

import mentor_fn as mf

torch.manual_seed(0)
model = nn.Sequential()
model.add_module("encoder", nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32)))
model.add_module("head", nn.Linear(32, 4))
inputs = torch.randn(512, 16)
targets = inputs[:, :4].argmax(dim=1)
train, val = torch.arange(384), torch.arange(384, 512)

schedule = mf.Schedule(
    [
        mf.Phase("head", mf.freeze("encoder"), until=mf.after_epochs(2)),
        mf.Phase(
            "top",
            mf.unfreeze("encoder.2"),
            until=mf.any_of(mf.plateau("val_loss", patience=2), mf.after_epochs(5)),
            warmup_steps=12,  # encoder.2's lr ramps up over its first 12 steps
        ),
        mf.Phase(
            "all", mf.unfreeze("encoder"), lr=3e-3, optimizer="fresh", until=mf.after_epochs(2)
        ),
    ]
)
schedule.check(model)  # every pattern of every phase matches a layer
curriculum = mf.Curriculum(model, lr=1e-2, optimizer=torch.optim.AdamW)
runner = mf.ScheduleRunner(curriculum, schedule)
runner.start()  # phase "head", before the build: the optimizer holds the head alone
curriculum.build()

epoch = 0
while not runner.finished:
    for batch in train[torch.randperm(len(train))].split(64):
        loss = functional.cross_entropy(model(inputs[batch]), targets[batch])
        curriculum.optimizer.zero_grad()
        loss.backward()
        curriculum.optimizer.step()
        runner.step()  # after each optimizer step: warmups advance, after_steps counts
    with torch.no_grad():
        val_loss = functional.cross_entropy(model(inputs[val]), targets[val]).item()
    epoch += 1
    phase = runner.phase.name
    plan = runner.epoch_end({"val_loss": val_loss})  # may enter the next phase
    print(
        f"epoch {epoch} {phase}: val loss {val_loss:.3f}"
        + (f" -> {runner.phase.name}" if plan else "")
    )

# Where the run stands is plain data: save it beside the curriculum's state.
saved = {"curriculum": curriculum.state_dict(), "schedule": runner.state_dict()}
print(runner.cursor)
