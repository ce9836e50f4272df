"""OptimizerRecipe: validation, plain-data round trips, class resolution."""

from __future__ import annotations

import pytest
import torch

from mentor_fn._wrapper.optimizer_recipe import OptimizerRecipe


class MyAdam(torch.optim.Adam):
    pass


def test_round_trip_through_plain_data_and_weights_only_loading(tmp_path):
    recipe = OptimizerRecipe(torch.optim.AdamW, 3e-4, {"weight_decay": 0.05, "betas": (0.9, 0.95)})
    path = tmp_path / "recipe.pt"
    torch.save(recipe.to_dict(), path)
    loaded = OptimizerRecipe.from_dict(torch.load(path, weights_only=True))
    assert loaded == recipe
    assert loaded.optimizer_class is torch.optim.AdamW
    assert recipe.to_dict() == {
        "optimizer": "torch.optim.adamw.AdamW",
        "optimizer_kwargs": {"weight_decay": 0.05, "betas": (0.9, 0.95)},
        "lr": 3e-4,
        "coalesce": False,
    }


def test_kwargs_are_a_read_only_copy():
    kwargs = {"momentum": 0.9}
    recipe = OptimizerRecipe(torch.optim.SGD, 0.1, kwargs)
    kwargs["momentum"] = 0.0
    assert recipe.kwargs["momentum"] == 0.9
    with pytest.raises(TypeError):
        recipe.kwargs["momentum"] = 0.5  # type: ignore[index]


def test_with_lr_keeps_everything_else():
    recipe = OptimizerRecipe(torch.optim.SGD, 0.1, {"momentum": 0.9}, coalesce=True)
    assert recipe.with_lr(0.01) == OptimizerRecipe(torch.optim.SGD, 0.01, {"momentum": 0.9}, True)


def test_a_class_outside_torch_optim_must_be_passed_again():
    data = OptimizerRecipe(MyAdam, 0.1).to_dict()
    with pytest.raises(ValueError, match=r"not a class of torch\.optim"):
        OptimizerRecipe.from_dict(data)
    assert OptimizerRecipe.from_dict(data, optimizer_class=MyAdam).optimizer_class is MyAdam
    with pytest.raises(ValueError, match=r"names optimizer .*MyAdam.*torch\.optim\.sgd\.SGD"):
        OptimizerRecipe.from_dict(data, optimizer_class=torch.optim.SGD)


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ((torch.nn.Linear, 0.1), TypeError, "Optimizer subclass"),
        ((torch.optim.SGD, -1.0), ValueError, "lr must be finite and >= 0"),
        ((torch.optim.SGD, "0.1"), TypeError, "lr must be a real number"),
        ((torch.optim.SGD, 0.1, {"lr": 0.2}), ValueError, "global lr"),
        ((torch.optim.SGD, 0.1, {"params": []}), ValueError, "params"),
        ((torch.optim.SGD, 0.1, [("momentum", 0.9)]), TypeError, "mapping"),
        ((torch.optim.SGD, 0.1, {}, 1), TypeError, "coalesce must be a bool"),
    ],
)
def test_bad_values_are_refused(arguments, error, match):
    with pytest.raises(error, match=match):
        OptimizerRecipe(*arguments)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"lr": "0.01"}, "'lr' must be a number"),
        ({"lr": True}, "'lr' must be a number"),
        ({"lr": float("nan")}, "lr must be finite"),
        ({"optimizer": 3}, "must be a class name"),
        ({"optimizer": "os.system"}, "not a class of torch.optim"),
        ({"optimizer_kwargs": "x"}, "'optimizer_kwargs' must be a dict"),
        ({"coalesce": "yes"}, "'coalesce' must be a bool"),
        ({"extra": 1}, "unknown keys"),
    ],
)
def test_malformed_plain_data_is_a_value_error_naming_the_field(change, match):
    data = {**OptimizerRecipe(torch.optim.SGD, 0.1).to_dict(), **change}
    with pytest.raises(ValueError, match=match):
        OptimizerRecipe.from_dict(data)


def test_missing_fields_and_non_mappings_are_value_errors():
    with pytest.raises(ValueError, match="lacks 'lr'"):
        OptimizerRecipe.from_dict(
            {"optimizer": "torch.optim.sgd.SGD", "optimizer_kwargs": {}, "coalesce": False}
        )
    with pytest.raises(ValueError, match="must be a mapping"):
        OptimizerRecipe.from_dict("x")  # type: ignore[arg-type]
