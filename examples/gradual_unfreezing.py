"""Gradual unfreezing in your own training loop, with an lr scheduler and a resume.

ULMFiT's recipe drives a plain PyTorch loop: the head first, then one more
block per epoch from the top, each block learning at half the rate of the one
above it, under a cosine schedule. The run is saved after epoch 3, resumed on
new objects, and ends bit-for-bit equal to the uninterrupted run.
"""

import io
from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional

import mentor_fn as mf

EPOCHS = 6
inputs = torch.randn(512, 16, generator=torch.Generator().manual_seed(0))
targets = inputs[:, :4].argmax(dim=1)

# The head alone; then block2, block1 and embed join, one per epoch, each at half
# the lr of the block above it; the last phase (everything) runs to the end.
schedule = mf.gradual_unfreeze(["embed", "block1", "block2", "head"], epochs_per_stage=1, decay=0.5)


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            embed=nn.Linear(16, 32),
            block1=nn.Sequential(nn.ReLU(), nn.Linear(32, 32)),
            block2=nn.Sequential(nn.ReLU(), nn.Linear(32, 32)),
            head=nn.Sequential(nn.ReLU(), nn.Linear(32, 4)),
        )
    )


def make_curriculum(model):
    return mf.Curriculum(
        model,
        lr=1e-2,
        optimizer=torch.optim.AdamW,
        scheduler=lambda optimizer: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, EPOCHS),
    )


def train(model, curriculum, runner, shuffle, epochs):
    """Your loop: two calls to the runner are all the curriculum needs."""
    for _ in range(epochs):
        for batch in torch.randperm(len(inputs), generator=shuffle).split(64):
            loss = functional.cross_entropy(model(inputs[batch]), targets[batch])
            curriculum.optimizer.zero_grad()
            loss.backward()
            curriculum.optimizer.step()
            runner.step()  # after every optimizer step
        groups = [g for g in curriculum.optimizer.param_groups if g["layers"]]
        lrs = ", ".join(f"{g['layers'][0].split('.')[0]} {g['lr']:.1e}" for g in groups)
        print(f"{runner.phase.name:<15}  loss {loss.item():.3f}  lr {lrs}")
        curriculum.scheduler.step()
        runner.epoch_end()  # after every epoch: may enter the next phase


# The uninterrupted run.
model = make_model()
curriculum = make_curriculum(model)
runner = mf.ScheduleRunner(curriculum, schedule)
runner.start()  # enters phase "head" before the build: the optimizer holds the head alone
curriculum.build()
shuffle = torch.Generator().manual_seed(1)
train(model, curriculum, runner, shuffle, epochs=3)

# Save where the run stands: plain data (torch.load with weights_only=True reads it).
buffer = io.BytesIO()
torch.save(
    {
        "model": model.state_dict(),
        "curriculum": curriculum.state_dict(),  # state, optimizer by parameter name, scheduler
        "schedule": runner.state_dict(),  # the phase and its progress
        "shuffle": shuffle.get_state(),
    },
    buffer,
)
print("-- saved after epoch 3; the uninterrupted run goes on")
train(model, curriculum, runner, shuffle, epochs=EPOCHS - 3)

# The resumed run: new objects, loaded from the saved data.
print("-- resumed from the save")
saved = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
resumed = make_model()
resumed.load_state_dict(saved["model"])
resumed_curriculum = make_curriculum(resumed)
resumed_curriculum.load_state_dict(saved["curriculum"])
resumed_runner = mf.ScheduleRunner(resumed_curriculum, schedule)
resumed_runner.load_state_dict(saved["schedule"])  # instead of start()
resumed_shuffle = torch.Generator()
resumed_shuffle.set_state(saved["shuffle"])
train(resumed, resumed_curriculum, resumed_runner, resumed_shuffle, epochs=EPOCHS - 3)

same = all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters()))
print("resumed run equals the uninterrupted one:", same)
assert same
