"""The fit loop on its own: step outputs, and its per-step and per-epoch-end hooks."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from mentor_fn import Mentee, Regressor, Trainer
from mentor_fn._mentee.fit_loop import FitHooks, as_step_output, run_epochs


class Line(Mentee):
    trainer = Regressor()

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(count)
    return [
        (torch.randn(3, 2, generator=generator), torch.randn(3, 1, generator=generator))
        for _ in range(count)
    ]


def test_step_outputs_all_become_a_loss_and_metrics():
    loss = torch.tensor(2.0)
    assert as_step_output(loss) == {"loss": loss}
    assert as_step_output({"loss": loss, "acc": 0.5}) == {"loss": loss, "acc": 0.5}
    # torch_mentor's tuple; its loss tensor wins over a "loss" metric
    assert as_step_output((loss, {"loss": 9.0, "acc": 0.5})) == {"loss": loss, "acc": 0.5}
    for odd in ({"acc": 1.0}, (loss,), (loss, [1.0]), [loss, {}], 2.0):
        with pytest.raises(TypeError, match="loss tensor"):
            as_step_output(odd)


def test_hooks_run_after_each_step_and_at_each_epoch_end():
    model = Line()
    model.create_train_objects(lr=0.1)
    events: list[Any] = []

    def at_epoch_end(record: dict[str, Any]) -> None:
        assert record is model.history[-1] and record["epoch"] == model.epoch
        events.append(("epoch end", record["epoch"]))

    hooks = FitHooks(after_step=lambda: events.append("step"), at_epoch_end=at_epoch_end)
    run_epochs(model, batches(3), batches(1), 2, trainer=Regressor(), progress=False, hooks=hooks)
    assert events == ["step"] * 3 + [("epoch end", 1)] + ["step"] * 3 + [("epoch end", 2)]


def test_an_optimizer_replaced_at_a_step_is_the_one_the_next_step_uses():
    model = Line()
    model.create_train_objects(lr=0.1)
    first = model.optimizer
    replaced: list[torch.optim.Optimizer] = []

    def new_phase_after_the_first_step() -> None:
        if not replaced:
            replaced.append(model.create_train_objects(lr=0.05)["optimizer"])

    run_epochs(
        model,
        batches(4),
        None,
        1,
        trainer=Trainer(),
        progress=False,
        hooks=FitHooks(after_step=new_phase_after_the_first_step),
    )
    assert int(first.state[model.fc.weight]["step"]) == 1
    assert int(replaced[0].state[model.fc.weight]["step"]) == 3
    assert model.history[-1]["lr"] == {"fc": 0.1}  # the lr the epoch started with
