"""Every torch optimizer form through phase changes: for-loop, foreach and fused agree.

A layer is frozen and unfrozen again, on the patch path (frozen after build)
and on the rebuild path (frozen at build), with per-layer and coalesced
groups. In a coalesced group the re-activated layer has no optimizer state
while its group mates have some: a mixed list, which torch's fused SGD cannot
take. Each form's trajectory is compared, step by step, with the for-loop
implementation's on the same run (same initial weights, data and phase
changes), within a float32 tolerance (FORM_TOLERANCE): the forms are different
kernels, which round differently, and which of them happen to agree bit for
bit depends on the CPU kernels and on the lrs (with torch's generic, AVX2 and
AVX512 kernels, different forms drift an ulp or a few from the for-loop). What
mentor_fn could get wrong here is far above rounding: a missing lr
coefficient, stale optimizer state for a re-activated layer, or a skipped
first step moves parameters by about lr x gradient (a test below checks that
the tolerance sees an lr 1% off).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch_features import ADAFACTOR

import mentor_fn as mf

OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "SGD-momentum": (torch.optim.SGD, {"momentum": 0.9}),
    "SGD-nesterov": (torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    "SGD-dampening": (torch.optim.SGD, {"momentum": 0.9, "dampening": 0.5, "weight_decay": 0.01}),
    "Adam": (torch.optim.Adam, {}),
    "AdamW": (torch.optim.AdamW, {}),
    "AdamW-amsgrad": (torch.optim.AdamW, {"amsgrad": True}),
    "Adamax": (torch.optim.Adamax, {}),
    "NAdam": (torch.optim.NAdam, {}),
    "RAdam": (torch.optim.RAdam, {}),
    "RMSprop-momentum": (torch.optim.RMSprop, {"momentum": 0.9}),
    "RMSprop-centered": (torch.optim.RMSprop, {"momentum": 0.5, "centered": True}),
    "Adagrad": (torch.optim.Adagrad, {}),
    "Adadelta": (torch.optim.Adadelta, {}),
    "ASGD": (torch.optim.ASGD, {}),
    "Rprop": (torch.optim.Rprop, {}),
    "Adafactor": (ADAFACTOR, {}),
}
LOOP = {"foreach": False}
FORM_TOLERANCE = {"rtol": 1e-6, "atol": 1e-7}
"""About eight float32 ulps relative (eps is 1.2e-7), and 1e-7 absolute for
values near zero: six steps of a few roundings each, accumulated. Measured
with ATEN_CPU_CAPABILITY=default, avx2 and avx512, the worst case (foreach
NAdam) uses under a quarter of it."""
FORMS = {"foreach": {"foreach": True}, "fused": {"fused": True}}
LR = 0.05

_data = torch.Generator().manual_seed(3)
BATCHES = [
    (torch.randn(6, 3, generator=_data), torch.randn(6, 2, generator=_data)) for _ in range(6)
]


def has_fused(optimizer_class: type[torch.optim.Optimizer]) -> bool:
    try:
        optimizer_class([nn.Parameter(torch.zeros(1))], lr=LR, fused=True)
    except (TypeError, RuntimeError):
        return False
    return True


CASES = [
    pytest.param(name, form, id=f"{name}-{form}")
    for name, (optimizer_class, _) in OPTIMIZERS.items()
    for form in FORMS
    if form != "fused" or has_fused(optimizer_class)
]


def make_model() -> nn.Module:
    torch.manual_seed(11)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))


def train_step(curriculum: mf.Curriculum, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    inputs, targets = batch
    curriculum.optimizer.zero_grad()
    nn.functional.mse_loss(curriculum.model(inputs), targets).backward()
    curriculum.optimizer.step()


def snapshot(curriculum: mf.Curriculum) -> list[torch.Tensor]:
    return [parameter.detach().clone() for parameter in curriculum.model.parameters()]


def patch_path(curriculum: mf.Curriculum) -> list[list[torch.Tensor]]:
    """Built with everything trainable; layer 2 frozen after two steps, unfrozen (a Patch)."""
    curriculum.set_lr_coefficient(0.5, "0")
    curriculum.build()
    trajectory = []
    for step, batch in enumerate(BATCHES):
        if step == 2:
            curriculum.freeze("2")
        if step == 3:
            plan = curriculum.unfreeze("2")
            assert plan == mf.Patch(scales=(), reactivated=("2",))
        train_step(curriculum, batch)
        trajectory.append(snapshot(curriculum))
    return trajectory


def rebuild_path(curriculum: mf.Curriculum) -> list[list[torch.Tensor]]:
    """Built with layer 2 frozen; unfrozen after two steps (a Rebuild)."""
    curriculum.set_lr_coefficient(0.5, "0")
    curriculum.freeze("2")
    curriculum.build()
    trajectory = []
    for step, batch in enumerate(BATCHES):
        if step == 2:
            plan = curriculum.unfreeze("2", reset_optimizer_if_needed=True)
            assert isinstance(plan, mf.Rebuild)
        train_step(curriculum, batch)
        trajectory.append(snapshot(curriculum))
    return trajectory


PATHS: dict[str, Callable[[mf.Curriculum], list[list[torch.Tensor]]]] = {
    "patch": patch_path,
    "rebuild": rebuild_path,
}


def run(name: str, form: dict[str, Any], path: str, coalesce: bool) -> list[list[torch.Tensor]]:
    optimizer_class, kwargs = OPTIMIZERS[name]
    curriculum = mf.Curriculum(
        make_model(),
        LR,
        optimizer=optimizer_class,
        optimizer_kwargs={**kwargs, **form},
        coalesce=coalesce,
    )
    return PATHS[path](curriculum)


@pytest.mark.parametrize("coalesce", [False, True], ids=["per-layer", "coalesced"])
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize(("name", "form"), CASES)
def test_form_follows_the_for_loop_through_phase_changes(name, form, path, coalesce):
    expected = run(name, LOOP, path, coalesce)
    got = run(name, FORMS[form], path, coalesce)
    for step, (expected_step, got_step) in enumerate(zip(expected, got, strict=True)):
        for index, (want, have) in enumerate(zip(expected_step, got_step, strict=True)):
            torch.testing.assert_close(
                have,
                want,
                **FORM_TOLERANCE,
                msg=lambda text, step=step, index=index: f"step {step}, tensor {index}: {text}",
            )


def test_the_tolerance_sees_an_lr_one_percent_off():
    """The comparison can fail: layer 0 at a coefficient of 0.505 instead of 0.5."""

    def first_step(coefficient: float) -> torch.Tensor:
        curriculum = mf.Curriculum(make_model(), LR, optimizer=torch.optim.Adam)
        curriculum.set_lr_coefficient(coefficient, "0")
        curriculum.build()
        train_step(curriculum, BATCHES[0])
        return snapshot(curriculum)[0]

    with pytest.raises(AssertionError):
        torch.testing.assert_close(first_step(0.505), first_step(0.5), **FORM_TOLERANCE)


def test_the_coalesced_fused_case_is_the_mixed_list_torch_refuses():
    """Without mentor_fn's first step apart, torch's fused SGD raises on this very group."""
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, fused=True)
    train_step_plain = lambda: (
        optimizer.zero_grad(),
        nn.functional.mse_loss(model(BATCHES[0][0]), BATCHES[0][1]).backward(),
        optimizer.step(),
    )
    train_step_plain()
    for parameter in model[2].parameters():
        optimizer.state.pop(parameter)  # fresh state for a re-activated layer
    with pytest.raises(TypeError):
        train_step_plain()


def test_reactivated_parameters_get_the_for_loop_first_step_exactly():
    """SGD with dampening: the first step's buffer is the undamped gradient, as for a new parameter."""
    curriculum = mf.Curriculum(
        make_model(),
        LR,
        optimizer=torch.optim.SGD,
        optimizer_kwargs={"momentum": 0.9, "dampening": 0.5, "fused": True},
        coalesce=True,
    )
    curriculum.build()
    train_step(curriculum, BATCHES[0])
    curriculum.freeze("2")
    train_step(curriculum, BATCHES[1])
    curriculum.unfreeze("2")
    weight = curriculum.model[2].weight
    assert not curriculum.optimizer.state.get(weight)
    train_step(curriculum, BATCHES[2])
    assert torch.equal(curriculum.optimizer.state[weight]["momentum_buffer"], weight.grad)
    # The split lasts one step: the groups are the derived ones again, and hooks are gone.
    assert [group["layers"] for group in curriculum.optimizer.param_groups] == [("0", "2", "4"), ()]
    assert not curriculum.optimizer._optimizer_step_post_hooks
    train_step(curriculum, BATCHES[3])


def test_a_step_that_raises_leaves_no_split_behind():
    curriculum = mf.Curriculum(
        make_model(),
        LR,
        optimizer=torch.optim.SGD,
        optimizer_kwargs={"momentum": 0.9, "fused": True},
        coalesce=True,
    )
    curriculum.build()
    train_step(curriculum, BATCHES[0])
    curriculum.freeze("2")
    curriculum.unfreeze("2")

    def failing_closure() -> None:
        raise ArithmeticError("the loss could not be computed")

    with pytest.raises(ArithmeticError):
        curriculum.optimizer.step(failing_closure)
    curriculum.freeze("0")  # any entry point puts the groups back first
    assert [group["layers"] for group in curriculum.optimizer.param_groups] == [("0", "2", "4"), ()]
    train_step(curriculum, BATCHES[1])


def test_closures_see_every_parameter_during_the_split_step():
    curriculum = mf.Curriculum(
        make_model(),
        LR,
        optimizer=torch.optim.SGD,
        optimizer_kwargs={"momentum": 0.9, "fused": True},
        coalesce=True,
    )
    curriculum.build()
    train_step(curriculum, BATCHES[0])
    curriculum.freeze("2")
    curriculum.unfreeze("2")
    model, optimizer = curriculum.model, curriculum.optimizer
    inputs, targets = BATCHES[1]
    model[2].weight.grad = torch.ones_like(model[2].weight)  # stale: zero_grad must clear it

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    # The re-activated layer's buffer is this step's own gradient, not stale + new.
    assert torch.equal(optimizer.state[model[2].weight]["momentum_buffer"], model[2].weight.grad)


@pytest.mark.parametrize("path", list(PATHS))
def test_saved_between_the_unfreeze_and_its_first_step_resumes_bit_for_bit(path):
    """The resumed run steps the re-activated layer apart too, as the saving run does."""

    def make() -> mf.Curriculum:
        return mf.Curriculum(
            make_model(),
            LR,
            optimizer=torch.optim.SGD,
            optimizer_kwargs={"momentum": 0.9, "dampening": 0.5, "fused": True},
            coalesce=True,
        )

    original = make()
    original.build()
    train_step(original, BATCHES[0])
    if path == "patch":
        original.freeze("2")
        train_step(original, BATCHES[1])
        original.unfreeze("2")
    else:
        original.freeze("2")
        original.build()
        train_step(original, BATCHES[1])
        original.unfreeze("2", reset_optimizer_if_needed=True)
    buffer = io.BytesIO()
    torch.save({"curriculum": original.state_dict(), "model": original.model.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = make()
    resumed.model.load_state_dict(saved["model"])
    resumed.load_state_dict(saved["curriculum"])
    for batch in BATCHES[2:]:
        train_step(original, batch)
        train_step(resumed, batch)
    for a, b in zip(original.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
