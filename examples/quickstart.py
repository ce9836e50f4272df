"""The functional core in one screen: state, transitions, param groups, plan.

Run: python examples/quickstart.py
"""

import torch
from torch import nn

import mentor_fn as mf

model = nn.Sequential()
model.add_module("backbone", nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16)))
model.add_module("head", nn.Linear(16, 2))

print(mf.layer_names(model))  # ('backbone', 'backbone.0', 'backbone.2', 'head')
state = mf.CurriculumState.from_model(model)
state = state.freeze("backbone").unfreeze("backbone.2").set_lr_coefficient(0.1, "backbone")
# the same as a composable transition value:
phase2 = mf.chain(
    mf.freeze("backbone"), mf.unfreeze("backbone.2"), mf.set_lr_coefficient(0.1, "backbone")
)
assert phase2(mf.CurriculumState.from_model(model)) == state

mf.apply_requires_grad(state, model)
optimizer = torch.optim.AdamW(mf.param_groups(state, model, lr=1e-3))
for group in optimizer.param_groups:
    print(group["layers"], f"{group['lr']:g}", group["coefficient"])
# ('backbone.2',) 0.0001 0.1
# ('head',) 0.001 1.0

next_state = state.unfreeze("backbone")
# backbone.0 becomes trainable but has no param group, so the optimizer must be rebuilt:
print(mf.plan(mf.layout_of(optimizer), state, next_state))  # Rebuild(reasons=(...))
