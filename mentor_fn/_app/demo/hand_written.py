"""LP-FT the usual hand-written way, in plain torch: the demo's fourth arm.

This is how LP-FT is commonly written without a curriculum library: freeze
the backbone, build the optimizer over the parameters that require grad,
train the probe; then "unfreeze" the backbone with ``requires_grad_(True)``
and lower the lr for the fine-tuning phase. The optimizer was built during
the probe, so it holds the head's parameters only: from then on the
backbone computes gradients that no optimizer applies, and it never moves.
No error, no warning. The demo measures what this run actually trained.

It is written on purpose the way it is usually written, bug included; it
shares nothing with mentor_fn but the network and the batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch.nn import functional
from torch.optim import lr_scheduler

from .model import DigitsCNN
from .protocol import GAMMA, LR, LR_RATIO

__all__ = ["lp_ft_by_hand"]


def lp_ft_by_hand(
    model: DigitsCNN,
    epochs: Sequence[Iterable[tuple[torch.Tensor, torch.Tensor]]],
    *,
    probe_epochs: int,
    note: Callable[[str], None] | None = None,
) -> None:
    """Train ``model`` in place, one epoch per entry of ``epochs`` (its batches): a probe
    for ``probe_epochs``, then "everything".

    The probe and the fine-tuning phase use the lrs lp_ft uses (the global lr,
    then ``LR_RATIO`` of it, each decayed by ``GAMMA`` per epoch). ``note``
    gets one line when the backbone is "unfrozen", saying what the optimizer
    holds then.
    """
    model.backbone.requires_grad_(False)
    optimizer = torch.optim.Adam(filter(lambda p: p.requires_grad, model.parameters()), lr=LR)
    scheduler = lr_scheduler.ExponentialLR(optimizer, gamma=GAMMA)
    model.train()
    for epoch, batches in enumerate(epochs):
        if epoch == probe_epochs:
            model.backbone.requires_grad_(True)  # "unfreeze"
            for group in optimizer.param_groups:
                group["lr"] = LR * LR_RATIO
            if note is not None:
                note(_what_the_optimizer_holds(model, optimizer))
        for images, labels in batches:
            optimizer.zero_grad()
            functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
        scheduler.step()


def _what_the_optimizer_holds(model: DigitsCNN, optimizer: torch.optim.Optimizer) -> str:
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    names = [name for name, p in model.named_parameters() if id(p) in held]
    trainable = sum(p.requires_grad for p in model.parameters())
    return (
        f"phase 2: backbone.requires_grad_(True), lr set to {LR * LR_RATIO:g}; "
        f"{trainable} of {len(list(model.parameters()))} parameter tensors now require grad, "
        f"the optimizer holds {len(names)}: {', '.join(names)}"
    )
