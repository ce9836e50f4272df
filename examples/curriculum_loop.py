"""`Curriculum` in your own training loop: phases, a scheduler, save and resume.

`Curriculum` owns the optimizer and scheduler derived from a `CurriculumState`
and keeps them in agreement with it at every transition. Run:
python examples/curriculum_loop.py
"""

import os
import tempfile

import torch
from torch import nn
from torch.nn import functional

import mentor_fn as mf

torch.manual_seed(0)


def make_model() -> nn.Module:
    model = nn.Sequential()
    model.add_module("encoder", nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32)))
    model.add_module("head", nn.Linear(32, 4))
    return model


def cosine(optimizer):
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=30)


inputs = torch.randn(512, 16)
targets = inputs[:, :4].argmax(dim=1)
model = make_model()
curriculum = mf.Curriculum(model, lr=1e-2, optimizer=torch.optim.AdamW, scheduler=cosine)


def train(epochs: int) -> float:
    for _ in range(epochs):
        for start in range(0, len(inputs), 64):
            batch = slice(start, start + 64)
            loss = functional.cross_entropy(model(inputs[batch]), targets[batch])
            curriculum.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            curriculum.optimizer.step()
        curriculum.scheduler.step()
    return loss.item()


def show(title: str) -> None:
    print(title)
    for group in curriculum.optimizer.param_groups:
        if group["layers"]:  # the last group is the parameter-less reference group
            print(
                f"  {', '.join(group['layers']):<20} lr {group['lr']:.2e}  x{group['coefficient']:g}"
            )


# Phase 1: the head only. Before build() only the state and requires_grad change.
curriculum.update(mf.freeze("encoder"))
curriculum.build()
print(f"phase 1 loss {train(10):.3f}")
show("phase 1 groups:")

# Phase 2: unfreeze the encoder's last layer, 10x slower than the head. It has no
# param group yet, so the optimizer is rebuilt: the head keeps its AdamW state and
# the cosine schedule keeps its progress.
plan = curriculum.update(
    mf.chain(mf.unfreeze("encoder.2"), mf.set_lr_coefficient(0.1, "encoder")),
    reset_optimizer_if_needed=True,
)
print(f"phase 2 plan: {type(plan).__name__}: {'; '.join(plan.reasons)}")
print(f"phase 2 loss {train(10):.3f}")

# A fine adjustment is a patch in place: the scheduler's state is scaled too,
# so the cosine decay goes on and the ratio head / encoder.2 stays 0.3.
print(f"coefficient 0.3: {type(curriculum.set_lr_coefficient(0.3, 'encoder')).__name__}")
print(f"phase 2b loss {train(5):.3f}")
show("after the patch and 5 more cosine steps:")

# Save and resume: plain data, optimizer state keyed by parameter name.
with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "curriculum.pt")
    torch.save({"model": model.state_dict(), "curriculum": curriculum.state_dict()}, path)
    saved = torch.load(path, weights_only=True)
restored = make_model()
restored.load_state_dict(saved["model"])
resumed = mf.Curriculum(restored, lr=1e-2, optimizer=torch.optim.AdamW, scheduler=cosine)
resumed.load_state_dict(saved["curriculum"])
assert resumed.state == curriculum.state
assert [g["lr"] for g in resumed.optimizer.param_groups] == [
    g["lr"] for g in curriculum.optimizer.param_groups
]
print("resumed: same state, same groups and lrs")
