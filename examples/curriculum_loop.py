"""`Curriculum` in your own training loop: phases, a scheduler, a patch, save and resume.

Run: python examples/curriculum_loop.py
"""

import io

import torch
from torch import nn
from torch.nn import functional

import mentor_fn as mf


def make_model():
    model = nn.Sequential()
    model.add_module("encoder", nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32)))
    model.add_module("head", nn.Linear(32, 4))
    return model


def cosine(optimizer):
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=30)


torch.manual_seed(0)
inputs = torch.randn(512, 16)
targets = inputs[:, :4].argmax(dim=1)
model = make_model()
curriculum = mf.Curriculum(model, lr=1e-2, optimizer=torch.optim.AdamW, scheduler=cosine)


def train(epochs):
    for _ in range(epochs):
        for batch in torch.randperm(len(inputs)).split(64):
            loss = functional.cross_entropy(model(inputs[batch]), targets[batch])
            curriculum.optimizer.zero_grad()
            loss.backward()
            curriculum.optimizer.step()
        curriculum.scheduler.step()
    # the last group (layers ()) holds no parameters: the reference the others scale
    groups = [g for g in curriculum.optimizer.param_groups if g["layers"]]
    print(f"loss {loss.item():.3f};", ", ".join(f"{g['layers']} lr {g['lr']:.1e}" for g in groups))


curriculum.update(mf.freeze("encoder"))  # phase 1: the head only
curriculum.build()
train(10)

# Phase 2: encoder.2 joins, 10x slower. It has no param group, so the optimizer
# is rebuilt: the head keeps its AdamW state, the cosine schedule its progress.
phase2 = mf.chain(mf.unfreeze("encoder.2"), mf.set_lr_coefficient(0.1, "encoder"))
print(curriculum.update(phase2, reset_optimizer_if_needed=True))
train(10)

# A fine adjustment is patched in place, scheduler state included: the cosine
# decay goes on and the ratio encoder.2 / head stays 0.3.
print(curriculum.set_lr_coefficient(0.3, "encoder"))
train(5)

# Save and resume: plain data, optimizer state keyed by parameter name.
buffer = io.BytesIO()
torch.save({"model": model.state_dict(), "curriculum": curriculum.state_dict()}, buffer)
saved = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
restored = make_model()
restored.load_state_dict(saved["model"])
resumed = mf.Curriculum(restored, lr=1e-2, optimizer=torch.optim.AdamW, scheduler=cosine)
resumed.load_state_dict(saved["curriculum"])
assert resumed.state == curriculum.state
print("resumed:", resumed)
