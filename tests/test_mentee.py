"""Mentee: the seed's object API, run as the seed document writes it.

Every code example of SEED-curriculum_learning.md runs here as a test, with
``from mentor_fn import ...`` for ``from mentor import ...`` and a tiny model
of ResNet-50's shape (``backbone`` of conv1, bn1, layer1..layer4, pooling;
``head``) for torchvision's. Then: subclassing and constructor recording,
resume / resume_training (bit-for-bit continuation), create_train_objects,
fit, and the Classifier / Regressor metrics checked against hand computations.
"""

from __future__ import annotations

import io
import math
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler
from torch.utils.data import DataLoader, TensorDataset

import mentor_fn
from mentor_fn import (
    CheckpointError,
    Classifier,
    CurriculumState,
    Mentee,
    Regressor,
    load_checkpoint,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
WIDTH = 4  # channels of the tiny backbone

# Models -----------------------------------------------------------------------------


class Block(nn.Module):
    """A residual block with ResNet's ``conv1`` / ``bn1`` names, tiny."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn1(self.conv1(x)))


def tiny_backbone() -> nn.Sequential:
    """ResNet-50's ``backbone`` shape: conv1, bn1, relu, layer1..layer4, pooling."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, WIDTH, 3, padding=1, bias=False),
            bn1=nn.BatchNorm2d(WIDTH),
            relu=nn.ReLU(),
            layer1=Block(WIDTH),
            layer2=Block(WIDTH),
            layer3=Block(WIDTH),
            layer4=Block(WIDTH),
            avgpool=nn.AdaptiveAvgPool2d(1),
        )
    )


class MyResNet(Mentee):
    """The seed's MyResNet with a tiny backbone in place of resnet50."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.backbone = tiny_backbone()
        self.head = nn.Linear(WIDTH, num_classes)
        self.trainer = Classifier()

    def forward(self, x):
        return self.head(self.backbone(x).flatten(1))


class WithNeck(Mentee):
    def __init__(self):
        super().__init__()
        self.backbone = tiny_backbone()
        self.neck = nn.Linear(WIDTH, WIDTH)
        self.head = nn.Linear(WIDTH, 3)
        self.trainer = Classifier()

    def forward(self, x):
        return self.head(torch.relu(self.neck(self.backbone(x).flatten(1))))


class Positional(Mentee):
    """Constructor arguments, positional and keyword, recorded automatically."""

    def __init__(self, inputs, hidden, outputs=2, *, scale=1.0):
        super().__init__()
        self.body = nn.Linear(inputs, hidden)
        self.head = nn.Linear(hidden, outputs)
        self.scale = scale
        self.trainer = Classifier()

    def forward(self, x):
        return self.head(torch.relu(self.body(x))) * self.scale


class Explicit(Mentee):
    """torch_mentor style: the arguments are passed to Mentee explicitly."""

    def __init__(self, num_classes=10):
        super().__init__(num_classes=num_classes)
        self.body = nn.Linear(4, 6)
        self.head = nn.Linear(6, num_classes)
        self.trainer = Classifier()

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


class WideExplicit(Explicit):
    """A subclass with its own signature, of a class that passes its arguments explicitly."""

    def __init__(self, width):
        super().__init__(num_classes=width + 1)
        self.width = width


class NoInit(Positional):
    """A subclass that writes no __init__ at all."""


class NetOfFour(Mentee):
    def __init__(self):
        super().__init__()
        self.net = nn.Module()
        self.net.conv1 = nn.Conv2d(1, 2, 1)
        self.net.conv2 = nn.Conv2d(2, 2, 1)
        self.net.fc1 = nn.Linear(2, 2)
        self.net.fc2 = nn.Linear(2, 2)
        self.trainer = Classifier()

    def forward(self, x):
        return x


class Identity3(Mentee):
    """A Linear with identity weights: outputs == inputs (logits chosen by hand)."""

    def __init__(self, features=3, regression=False):
        super().__init__()
        self.fc = nn.Linear(features, features)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(features))
            self.fc.bias.zero_()
        self.trainer = Regressor() if regression else Classifier()

    def forward(self, x):
        return self.fc(x)


class OwnSteps(Mentee):
    """No trainer: the subclass writes training_step / validation_step itself."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 1)

    def forward(self, x):
        return self.fc(x)

    def training_step(self, batch):
        x, y = batch
        return nn.functional.l1_loss(self(x), y)

    def validation_step(self, batch):
        x, y = batch
        return {"loss": nn.functional.l1_loss(self(x), y), "bias": self.fc.bias.item()}


# Helpers ----------------------------------------------------------------------------


def images(n: int = 16, seed: int = 1, num_classes: int = 10) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 6, 6, generator=generator)
    y = torch.randint(0, num_classes, (n,), generator=generator)
    return TensorDataset(x, y)


def as_batches(dataset: TensorDataset, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = dataset.tensors
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def group_of(model: Mentee, layer: str) -> dict:
    groups = [g for g in model.optimizer.param_groups if layer in g["layers"]]
    assert len(groups) == 1, f"{layer} is in {len(groups)} groups"
    return groups[0]


def lr_of(model: Mentee, layer: str) -> float:
    return group_of(model, layer)["lr"]


def reference_lr(model: Mentee) -> float:
    reference = model.optimizer.param_groups[-1]
    assert reference["layers"] == () and reference["params"] == []
    return reference["lr"]


def owned(model: Mentee, prefix: str) -> dict[str, torch.Tensor]:
    """Parameters whose name is under ``prefix`` (the subtree's parameters)."""
    return {
        name: parameter
        for name, parameter in model.named_parameters()
        if name == prefix or name.startswith(prefix + ".")
    }


def owner_layers(model: Mentee, prefix: str) -> list[str]:
    """Layers under ``prefix`` that own parameters directly (they get groups)."""
    return [
        layer
        for layer in model.select_layers([rf"{prefix}(\..*)?"])
        if any(True for _ in model.get_submodule(layer).parameters(recurse=False))
    ]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def train_step(model: Mentee, batch=None) -> None:
    x, y = batch if batch is not None else images(8).tensors
    model.optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    model.optimizer.step()


def layout(model: Mentee) -> list[tuple]:
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    return [
        (
            tuple(group["layers"]),
            group["coefficient"],
            group["lr"],
            tuple(names[id(parameter)] for parameter in group["params"]),
        )
        for group in model.optimizer.param_groups
    ]


BACKBONE_LAYERS = [
    "backbone",
    "backbone.conv1",
    "backbone.bn1",
    *(
        name
        for i in range(1, 5)
        for name in (f"backbone.layer{i}", f"backbone.layer{i}.conv1", f"backbone.layer{i}.bn1")
    ),
]


# 1. The seed's examples ---------------------------------------------------------------
# Layer inspection


def test_layer_names_lists_parameter_bearing_modules_in_traversal_order():
    model = MyResNet()
    print(model.layer_names)  # the seed's line runs as written
    assert isinstance(model.layer_names, list)
    assert model.layer_names == [*BACKBONE_LAYERS, "head"]
    assert model.layer_names[:3] == ["backbone", "backbone.conv1", "backbone.bn1"]
    # modules without parameters (relu, avgpool) are not layers
    assert "backbone.relu" not in model.layer_names
    assert "backbone.avgpool" not in model.layer_names


def test_select_layers_exact_regex_and_layer_order():
    model = MyResNet()
    assert model.select_layers(["backbone"]) == ["backbone"]  # exact match
    assert model.select_layers([r"backbone\.layer[34]"]) == [
        "backbone.layer3",
        "backbone.layer4",
    ]  # regex, fullmatch: not backbone.layer3.conv1
    assert model.select_layers(["head", "backbone"]) == ["backbone", "head"]  # layer order
    assert model.select_layers(["head", "head", r"hea."]) == ["head"]  # deduplicated
    assert model.select_layers("head") == ["head"]
    assert model.select_layers([]) == []
    with pytest.raises(ValueError, match="neck"):
        model.select_layers(["neck"])  # the API reference: no match raises


# Freezing and unfreezing


def frozen_names(model: Mentee) -> set[str]:
    return {name for name, parameter in model.named_parameters() if not parameter.requires_grad}


def test_freeze_unfreeze_basic_usage_sequence():
    model = MyResNet()
    backbone = set(owned(model, "backbone"))
    layer4 = set(owned(model, "backbone.layer4"))

    assert model.freeze("backbone") is model  # freeze entire backbone
    assert frozen_names(model) == backbone
    assert model._frozen_modules == {"backbone"}

    model.freeze([r"backbone\.layer[12]"])  # already frozen: no change
    assert frozen_names(model) == backbone

    assert model.unfreeze("backbone.layer4") is model  # unfreeze one sub-layer
    assert frozen_names(model) == backbone - layer4
    assert model._frozen_modules == {
        "backbone.conv1",
        "backbone.bn1",
        "backbone.layer1",
        "backbone.layer2",
        "backbone.layer3",
    }

    model.unfreeze(["backbone"])  # unfreeze whole subtree
    assert frozen_names(model) == set()
    assert model._frozen_modules == frozenset()


def test_freeze_with_regex_freezes_only_the_matched_subtrees():
    model = MyResNet()
    model.freeze([r"backbone\.layer[12]"])  # freeze first two layer groups
    assert frozen_names(model) == set(owned(model, "backbone.layer1")) | set(
        owned(model, "backbone.layer2")
    )
    assert model._frozen_modules == {"backbone.layer1", "backbone.layer2"}


def test_freeze_chains():
    model = WithNeck()
    assert model.freeze("backbone").freeze("neck") is model
    assert frozen_names(model) == set(owned(model, "backbone")) | set(owned(model, "neck"))
    assert model._frozen_modules == {"backbone", "neck"}
    # every control returns self
    assert model.unfreeze("neck").set_lr_coefficient(0.5, "head").unfreeze("backbone") is model
    assert frozen_names(model) == set()
    assert dict(model._lr_coefficients) == {"head": 0.5}


def test_unknown_pattern_changes_nothing():
    model = MyResNet()
    with pytest.raises(ValueError, match="bakbone"):
        model.freeze(["head", "bakbone"])
    assert frozen_names(model) == set()
    with pytest.raises(TypeError):
        model.freeze([3])


# Optimizer interaction


def test_frozen_after_build_fast_path_parameters_live_again_with_fresh_adam_state():
    model = MyResNet()
    model.create_train_objects(lr=1e-3)
    optimizer = model.optimizer
    groups_before = layout(model)
    for _ in range(2):
        train_step(model)
    backbone = owned(model, "backbone")
    assert all(optimizer.state[p]["step"] == 2 for p in backbone.values())

    model.freeze("backbone")
    assert model.optimizer is optimizer and layout(model) == groups_before  # groups untouched
    assert all(p.grad is None and not p.requires_grad for p in backbone.values())
    frozen_values = {name: p.detach().clone() for name, p in backbone.items()}
    head_before = model.head.weight.detach().clone()
    train_step(model)  # Adam skips parameters whose gradient is None
    assert all(torch.equal(backbone[name], value) for name, value in frozen_values.items())
    assert not torch.equal(model.head.weight, head_before)

    model.unfreeze("backbone")  # fast path — group already exists
    assert model.optimizer is optimizer and layout(model) == groups_before
    assert all(p.requires_grad for p in backbone.values())
    # Adam initialises their state on the first gradient step: none is kept
    assert all(not optimizer.state.get(p) for p in backbone.values())
    train_step(model)
    assert all(optimizer.state[p]["step"] == 1 for p in backbone.values())
    assert optimizer.state[model.head.weight]["step"] == 4
    assert all(not torch.equal(backbone[n], v) for n, v in frozen_values.items())


def test_frozen_before_build_needs_a_rebuild_raises_by_default():
    model = MyResNet()
    model.freeze("backbone")
    model.create_train_objects(lr=1e-3)  # optimizer built without backbone
    optimizer = model.optimizer
    in_groups = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in in_groups for p in owned(model, "backbone").values())
    assert id(model.head.weight) in in_groups
    train_step(model)
    head_state = optimizer.state[model.head.weight]
    before = layout(model)

    with pytest.raises(RuntimeError, match="reset_optimizer_if_needed"):
        model.unfreeze("backbone")  # raise if reset_optimizer_if_needed=False (default)
    # nothing changed
    assert model.optimizer is optimizer and layout(model) == before
    assert model._frozen_modules == {"backbone"}
    assert frozen_names(model) == set(owned(model, "backbone"))

    model.unfreeze("backbone", reset_optimizer_if_needed=True)  # triggers rebuild
    assert model.optimizer is optimizer  # rebuilt in place: new groups and state inside
    assert frozen_names(model) == set()
    for layer in owner_layers(model, "backbone"):
        assert lr_of(model, layer) == 1e-3
    # the rebuild keeps the state of layers that stay trainable (docs/design.md)
    assert model.optimizer.state[model.head.weight]["step"] == head_state["step"]
    values = snapshot(model)
    train_step(model)
    assert not torch.equal(model.backbone.conv1.weight, values["backbone.conv1.weight"])


def test_typical_fine_tuning_workflow(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_data = DataLoader(images(16, seed=1), batch_size=8, shuffle=True)
    val_data = as_batches(images(8, seed=2), 4)

    model = MyResNet(num_classes=10).to(DEVICE)
    # Phase 1 — train head only
    model.freeze("backbone")
    model.create_train_objects(lr=1e-3)
    backbone_before = {n: p.detach().clone() for n, p in owned(model, "backbone").items()}
    head_before = model.head.weight.detach().clone()
    model.fit(train_data, val_data, epochs=2, checkpoint_path="phase1.pt")
    assert (tmp_path / "phase1.pt").exists()
    assert all(torch.equal(p, backbone_before[n]) for n, p in owned(model, "backbone").items())
    assert not torch.equal(model.head.weight, head_before)
    assert model.epoch == 2 and [r["epoch"] for r in model.history] == [1, 2]
    assert set(model.history[0]["lr"]) == {"head"}
    assert "backbone.conv1" in model.history[0]["frozen"]

    # Phase 2 — fine-tune everything with a lower global LR
    model.unfreeze("backbone", reset_optimizer_if_needed=True)
    model.create_train_objects(lr=1e-4)
    assert all(
        group["lr"] == 1e-4 for group in model.optimizer.param_groups
    )  # a fresh phase at the new lr
    assert not model.optimizer.state
    model.fit(train_data, val_data, epochs=1, checkpoint_path="phase2.pt")
    assert all(not torch.equal(p, backbone_before[n]) for n, p in owned(model, "backbone").items())
    assert model.epoch == 3 and model.history[-1]["frozen"] == []
    assert model.history[-1]["lr"]["backbone.layer1.conv1"] == 1e-4

    phase1 = load_checkpoint("phase1.pt")
    assert phase1["epoch"] == 2
    resumed = Mentee.resume("phase2.pt")
    assert type(resumed) is MyResNet and resumed.epoch == 3
    assert all(
        torch.equal(resumed.state_dict()[k].cpu(), v.cpu()) for k, v in model.state_dict().items()
    )


# Per-layer learning rate coefficients


def test_coefficient_examples_before_the_optimizer_exists():
    model = MyResNet()
    model.set_lr_coefficient(0.1, "backbone")  # 10x lower than global LR
    assert dict(model._lr_coefficients) == {"backbone": 0.1}
    model.set_lr_coefficient(0.0, "backbone.layer1")  # zero out one sub-layer
    assert dict(model._lr_coefficients) == {"backbone": 0.1, "backbone.layer1": 0.0}
    model.set_lr_coefficient(1.0, "backbone")  # restore default (removes entry)
    assert dict(model._lr_coefficients) == {}
    model.set_lr_coefficient(0.1, [r"backbone\..*"])  # regex — all backbone sub-layers
    state = model.curriculum_state
    assert all(state.coefficient(layer) == 0.1 for layer in BACKBONE_LAYERS[1:])
    assert state.coefficient("backbone") == 1.0 and state.coefficient("head") == 1.0

    model.create_train_objects(lr=1e-3)
    for layer in owner_layers(model, "backbone"):
        assert lr_of(model, layer) == 1e-3 * 0.1
        assert group_of(model, layer)["coefficient"] == 0.1
    assert lr_of(model, "head") == 1e-3


def test_coefficient_examples_on_a_live_optimizer():
    model = MyResNet()
    model.create_train_objects(lr=1e-3)
    optimizer = model.optimizer
    model.set_lr_coefficient(0.1, "backbone")  # in place
    model.set_lr_coefficient(0.0, "backbone.layer1")
    assert model.optimizer is optimizer
    for layer in owner_layers(model, "backbone"):
        expected = 0.0 if layer.startswith("backbone.layer1") else 1e-3 * 0.1
        assert lr_of(model, layer) == pytest.approx(expected, rel=1e-12, abs=0)
    assert lr_of(model, "head") == 1e-3

    # layer1 goes 0.0 -> 1.0: the ratio is undefined, so a rebuild is needed
    before = layout(model)
    with pytest.raises(RuntimeError, match="coefficient 0"):
        model.set_lr_coefficient(1.0, "backbone")
    assert layout(model) == before and model.optimizer is optimizer
    assert dict(model._lr_coefficients) == {"backbone": 0.1, "backbone.layer1": 0.0}
    model.set_lr_coefficient(1.0, "backbone", reset_optimizer_if_needed=True)
    assert dict(model._lr_coefficients) == {}
    assert all(group["lr"] == 1e-3 for group in model.optimizer.param_groups)


@pytest.mark.parametrize("built_first", [False, True])
def test_ancestor_inheritance_with_override(built_first):
    model = MyResNet()
    if built_first:
        model.create_train_objects(lr=1e-3)
    model.set_lr_coefficient(0.01, "backbone")  # all of backbone at 1% LR
    model.set_lr_coefficient(0.1, "backbone.layer4")  # layer4 overrides to 10%
    if not built_first:
        model.create_train_objects(lr=1e-3)
    assert dict(model._lr_coefficients) == {"backbone": 0.01, "backbone.layer4": 0.1}
    for layer in owner_layers(model, "backbone"):
        coefficient = 0.1 if layer.startswith("backbone.layer4") else 0.01
        assert group_of(model, layer)["coefficient"] == coefficient
        assert lr_of(model, layer) == pytest.approx(1e-3 * coefficient, rel=1e-12)
    assert lr_of(model, "head") == 1e-3


def test_setting_before_the_optimizer_exists():
    model = MyResNet()
    model.set_lr_coefficient(0.01, "backbone")  # stored only; no optimizer yet
    assert model.optimizer is None and model.lr_scheduler is None
    model.create_train_objects(lr=1e-3)  # optimizer built with 0.01 x 1e-3 for backbone
    for layer in owner_layers(model, "backbone"):
        assert lr_of(model, layer) == 0.01 * 1e-3
    assert lr_of(model, "head") == 1e-3


def test_live_update_scales_by_ratio_preserving_scheduler_decay_and_propagates():
    model = MyResNet()
    model.create_train_objects(lr=1e-3, step_size=1, gamma=0.5)
    optimizer = model.optimizer
    deep = "backbone.layer1.conv1"
    for _ in range(2):
        train_step(model)
        model.lr_scheduler.step()
    decayed = lr_of(model, deep)
    assert decayed == pytest.approx(1e-3 * 0.25, rel=1e-12)

    model.set_lr_coefficient(0.1, "backbone")
    assert model.optimizer is optimizer  # in place
    # group["lr"] *= new_coefficient / old_coefficient, on every descendant group
    assert lr_of(model, deep) == decayed * (0.1 / 1.0)
    for layer in owner_layers(model, "backbone"):
        assert lr_of(model, layer) == pytest.approx(2.5e-4 * 0.1, rel=1e-12)
    assert lr_of(model, "head") == decayed

    before = lr_of(model, deep)
    model.set_lr_coefficient(0.4, "backbone")
    assert lr_of(model, deep) == before * (0.4 / 0.1)
    # the scheduler keeps decaying from there; the coefficient stays applied
    model.lr_scheduler.step()
    assert lr_of(model, deep) == pytest.approx(1e-3 * 0.125 * 0.4, rel=1e-12)
    assert lr_of(model, "head") == pytest.approx(reference_lr(model), rel=1e-12)
    assert lr_of(model, deep) == pytest.approx(reference_lr(model) * 0.4, rel=1e-12)


def test_rebuild_path_examples_on_per_layer_groups():
    model = MyResNet()
    # Explicit rebuild (always safe)
    model.set_lr_coefficient(0.1, "backbone")
    model.create_train_objects(lr=1e-3)
    optimizer = model.optimizer
    # per-layer groups: both other forms are in-place updates, no error
    model.set_lr_coefficient(0.1, "backbone", reset_optimizer_if_needed=True)
    model.set_lr_coefficient(0.1, "backbone")  # RuntimeError if rebuild needed
    assert model.optimizer is optimizer
    for layer in owner_layers(model, "backbone"):
        assert lr_of(model, layer) == 1e-4


def test_rebuild_path_flat_group_raises_or_rebuilds():
    model = MyResNet()
    model.create_train_objects(lr=1e-3, coalesce=True)  # a single flat group of all layers
    optimizer = model.optimizer
    assert len(optimizer.param_groups) == 2  # the flat group and the reference group
    train_step(model)
    before = layout(model)
    with pytest.raises(RuntimeError, match="split"):
        model.set_lr_coefficient(0.1, "backbone")  # RuntimeError if rebuild needed
    assert layout(model) == before and model.optimizer is optimizer
    assert dict(model._lr_coefficients) == {}

    # Automatic rebuild on demand
    model.set_lr_coefficient(0.1, "backbone", reset_optimizer_if_needed=True)
    assert model.optimizer is optimizer  # rebuilt in place: new groups and state inside
    for layer in owner_layers(model, "backbone"):
        assert lr_of(model, layer) == pytest.approx(1e-4, rel=1e-12)
    assert lr_of(model, "head") == 1e-3
    # the rebuild keeps the optimizer state of layers that stay trainable (docs/design.md)
    assert model.optimizer.state[model.head.weight]["step"] == 1


def test_rebuild_path_zero_to_nonzero():
    model = MyResNet()
    model.set_lr_coefficient(0.0, "backbone.layer1")
    model.create_train_objects(lr=1e-3)
    assert lr_of(model, "backbone.layer1.conv1") == 0.0
    optimizer = model.optimizer
    with pytest.raises(RuntimeError, match="undefined"):
        model.set_lr_coefficient(0.5, "backbone.layer1")
    assert model.optimizer is optimizer and lr_of(model, "backbone.layer1.conv1") == 0.0
    model.set_lr_coefficient(0.5, "backbone.layer1", reset_optimizer_if_needed=True)
    assert model.optimizer is optimizer  # rebuilt in place: new groups and state inside
    assert lr_of(model, "backbone.layer1.conv1") == 0.5e-3
    assert lr_of(model, "backbone.layer1.bn1") == 0.5e-3


def test_layerwise_lr_decay_loop():
    model = MyResNet()
    layers = model.layer_names  # ordered from input to output
    n = len(layers)
    decay = 0.9
    for i, layer in enumerate(layers):
        coeff = decay ** (n - 1 - i)  # highest LR at output, lowest at input
        model.set_lr_coefficient(coeff, layer)
    model.create_train_objects(lr=1e-3)

    state = model.curriculum_state
    for i, layer in enumerate(layers):
        assert state.coefficient(layer) == decay ** (n - 1 - i)
    for i, layer in enumerate(layers):
        if layer in owner_layers(model, layer.split(".")[0]):
            assert group_of(model, layer)["coefficient"] == decay ** (n - 1 - i)
            assert lr_of(model, layer) == pytest.approx(1e-3 * decay ** (n - 1 - i), rel=1e-12)
    assert lr_of(model, "head") == 1e-3
    assert lr_of(model, "backbone.conv1") < lr_of(model, "backbone.layer4.bn1")


def test_coefficient_zero_pauses_a_layer_without_freezing_it():
    model = MyResNet()
    model.create_train_objects(lr=1e-3)
    model.set_lr_coefficient(0.0, "backbone.layer1")
    paused = owned(model, "backbone.layer1")
    assert all(p.requires_grad for p in paused.values())  # requires_grad is unchanged
    before = snapshot(model)
    train_step(model)
    # gradients still flow ...
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in paused.values())
    # ... the layer just receives no parameter update
    assert all(torch.equal(p, before[n]) for n, p in paused.items())
    assert not torch.equal(
        model.backbone.layer2.conv1.weight, before["backbone.layer2.conv1.weight"]
    )
    assert not torch.equal(model.head.weight, before["head.weight"])


def test_combining_freeze_and_coefficients():
    model = MyResNet()
    model.set_lr_coefficient(0.01, "backbone")
    model.freeze("backbone")
    # ... train head only ...
    model.create_train_objects(lr=1e-3)
    before = snapshot(model)
    model.fit(as_batches(images(8), 4), epochs=1, progress=False)
    assert all(torch.equal(p, before[n]) for n, p in owned(model, "backbone").items())
    assert dict(model._lr_coefficients) == {"backbone": 0.01}  # kept while frozen

    # a coefficient set on a frozen layer without a group is stored, no rebuild needed
    model.set_lr_coefficient(0.01, "backbone.layer4")
    model.unfreeze("backbone", reset_optimizer_if_needed=True)
    # backbone is now trainable at 0.01 x global_lr, as stored in _lr_coefficients
    for layer in owner_layers(model, "backbone"):
        assert lr_of(model, layer) == pytest.approx(0.01 * reference_lr(model), rel=1e-12)
        assert group_of(model, layer)["coefficient"] == 0.01
    assert reference_lr(model) == 1e-3
    train_step(model)
    assert not torch.equal(model.backbone.conv1.weight, before["backbone.conv1.weight"])


def test_optimizer_argument_must_be_the_models_own():
    model = MyResNet()
    model.create_train_objects(lr=1e-3)
    assert model.freeze("head", optimizer=model.optimizer) is model
    stranger = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="optimizer"):
        model.unfreeze("head", optimizer=stranger)
    assert model._frozen_modules == {"head"}


# 2. Subclassing, recorded constructors, resume ---------------------------------------


def test_subclass_without_trainer_or_steps_cannot_fit():
    class Bare(Mentee):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x)

    model = Bare()
    model.create_train_objects(lr=1e-3)
    with pytest.raises(TypeError, match="trainer"):
        model.fit([(torch.randn(2, 2), torch.tensor([0, 1]))], progress=False)


def test_subclass_may_override_training_and_validation_steps():
    model = OwnSteps()
    model.create_train_objects(lr=0.1)
    data = [(torch.randn(4, 2), torch.randn(4, 1)) for _ in range(3)]
    bias = model.fc.bias.item()
    model.fit(data, data[:1], epochs=2, progress=False)
    assert model.fc.bias.item() != bias
    assert set(model.history[-1]["val"]) == {"loss", "bias"}
    assert model.history[-1]["val"]["bias"] == model.fc.bias.item()
    # without a trainer the best epoch is the one with the lowest (validation) loss
    losses = [record["val"]["loss"] for record in model.history]
    assert model.best["metric"] == "loss"
    assert model.best["epoch"] == 1 + losses.index(min(losses))


def test_constructor_arguments_are_recorded_and_resume_rebuilds(tmp_path):
    model = Positional(3, 5, outputs=4, scale=2.0)
    model.freeze("body").set_lr_coefficient(0.5, "head")
    model.save(tmp_path / "m.pt")
    for cls in (Mentee, Positional):  # on the base class and on the subclass
        resumed = cls.resume(tmp_path / "m.pt")
        assert type(resumed) is Positional
        assert resumed.body.in_features == 3 and resumed.head.out_features == 4
        assert resumed.scale == 2.0
        assert resumed.curriculum_state == model.curriculum_state
        assert resumed._frozen_modules == {"body"}
        assert not resumed.body.weight.requires_grad
        assert all(torch.equal(resumed.state_dict()[k], v) for k, v in model.state_dict().items())
        assert resumed.optimizer is None


def test_constructor_recorded_for_subclass_without_init(tmp_path):
    model = NoInit(2, 3)
    model.save(tmp_path / "m.pt")
    resumed = Mentee.resume(tmp_path / "m.pt")
    assert type(resumed) is NoInit and resumed.body.out_features == 3


def test_explicit_constructor_arguments_torch_mentor_style(tmp_path):
    model = Explicit(num_classes=7)
    model.save(tmp_path / "m.pt")
    resumed = Mentee.resume(tmp_path / "m.pt")
    assert type(resumed) is Explicit and resumed.head.out_features == 7
    assert torch.equal(resumed.head.weight, model.head.weight)


def test_subclass_of_an_explicit_class_resumes_with_its_own_arguments(tmp_path):
    model = WideExplicit(4)  # its base passes num_classes=5 to Mentee explicitly
    model.save(tmp_path / "m.pt")
    for cls in (Mentee, WideExplicit):
        resumed = cls.resume(tmp_path / "m.pt")
        assert type(resumed) is WideExplicit and resumed.width == 4
        assert resumed.head.out_features == 5
        assert torch.equal(resumed.head.weight, model.head.weight)


def test_resume_with_the_wrong_class_is_a_checkpoint_error(tmp_path):
    Positional(3, 5).save(tmp_path / "m.pt")
    with pytest.raises(CheckpointError):
        MyResNet.resume(tmp_path / "m.pt")


def test_frozen_modules_and_lr_coefficients_are_read_only_views():
    model = NetOfFour()
    model.freeze("net")
    model.unfreeze("net.conv1")
    assert model._frozen_modules == {"net.conv2", "net.fc1", "net.fc2"}
    assert "net" not in model._frozen_modules
    assert isinstance(model._frozen_modules, frozenset)
    model.set_lr_coefficient(0.5, "net").set_lr_coefficient(0.1, "net.fc2")
    coefficients = model._lr_coefficients
    assert dict(coefficients) == {"net": 0.5, "net.fc2": 0.1}
    with pytest.raises(TypeError):
        coefficients["net"] = 1.0
    assert isinstance(model.curriculum_state, CurriculumState)
    assert model.curriculum_state == (
        CurriculumState.from_model(model)
        .freeze("net")
        .unfreeze("net.conv1")
        .set_lr_coefficient(0.5, "net")
        .set_lr_coefficient(0.1, "net.fc2")
    )


def test_optimizer_and_scheduler_are_none_before_create_train_objects():
    model = MyResNet()
    assert model.optimizer is None and model.lr_scheduler is None


def run_phase_changes(model: Mentee, data, val, epochs: int) -> None:
    """The continued run: one fast-path unfreeze of an inert group, then train."""
    model.unfreeze("backbone.layer1")  # needs the inert group kept by the checkpoint
    model.fit(data, val, epochs=epochs, progress=False)


def test_resume_training_continues_bit_for_bit(tmp_path):
    data, val = images(12, seed=3), images(6, seed=4)
    model = MyResNet(num_classes=10)
    model.create_train_objects(lr=1e-2, step_size=1, gamma=0.5)
    model.fit(data, val, epochs=1, batch_size=4, progress=False)
    # after the build: an inert group of a frozen layer, and a live coefficient
    model.freeze("backbone.layer1")
    model.set_lr_coefficient(0.5, "head")
    model.fit(
        data, val, epochs=1, batch_size=4, checkpoint_path=tmp_path / "mid.pt", progress=False
    )
    saved_layout = layout(model)

    run_phase_changes(model, data, val, 2)  # the uninterrupted run
    expected, expected_layout = snapshot(model), layout(model)

    resumed, optimizer, scheduler = Mentee.resume_training(tmp_path / "mid.pt", device=None)
    assert type(resumed) is MyResNet
    assert optimizer is resumed.optimizer and scheduler is resumed.lr_scheduler
    assert isinstance(optimizer, torch.optim.Adam)
    assert isinstance(scheduler, lr_scheduler.StepLR) and scheduler.last_epoch == 2
    assert layout(resumed) == saved_layout  # exact layout, inert group included
    assert resumed._frozen_modules == {"backbone.layer1"}
    assert resumed.epoch == 2 and len(resumed.history) == 2

    run_phase_changes(resumed, data, val, 2)
    assert resumed.epoch == 4
    actual = snapshot(resumed)
    assert actual.keys() == expected.keys()
    assert all(torch.equal(actual[k], expected[k]) for k in expected)
    assert layout(resumed) == expected_layout
    assert [r["train"] for r in resumed.history] == [r["train"] for r in model.history]
    assert [r["lr"] for r in resumed.history] == [r["lr"] for r in model.history]


def test_resume_training_restores_every_random_number_generator(tmp_path):
    # Augmentation drawing from numpy or Python's random, dropout from torch's:
    # all continue as in the uninterrupted run.
    import random

    import numpy

    model = Positional(2, 3)
    model.create_train_objects(lr=1e-3)
    numpy.random.seed(5)
    numpy.random.standard_normal()  # leaves a cached Gaussian in numpy's state
    random.seed(6)
    torch.manual_seed(7)
    model.save(tmp_path / "rng.pt")

    def draws() -> tuple[list[float], float, float, list[float]]:
        return (
            numpy.random.random(3).tolist(),
            float(numpy.random.standard_normal()),
            random.random(),
            torch.rand(3).tolist(),
        )

    expected = draws()
    numpy.random.seed(99)
    random.seed(99)
    torch.manual_seed(99)
    Positional.resume_training(tmp_path / "rng.pt")
    assert draws() == expected


def test_resume_training_on_the_subclass_and_without_optimizer(tmp_path):
    model = Positional(2, 3)
    model.save(tmp_path / "plain.pt")
    assert Positional.resume_training(tmp_path / "plain.pt")[1:] == (None, None)
    model.create_train_objects(lr=1e-3)
    model.save(tmp_path / "built.pt")
    resumed, optimizer, scheduler = Positional.resume_training(tmp_path / "built.pt", device="cpu")
    assert type(resumed) is Positional and isinstance(optimizer, torch.optim.Adam)
    assert isinstance(scheduler, lr_scheduler.StepLR)


# 3. create_train_objects ------------------------------------------------------------


def test_create_train_objects_defaults_adam_and_steplr():
    model = MyResNet()
    objects = model.create_train_objects()
    assert set(objects) == {"optimizer", "lr_scheduler"}
    optimizer, scheduler = objects["optimizer"], objects["lr_scheduler"]
    assert type(optimizer) is torch.optim.Adam and optimizer is model.optimizer
    assert type(scheduler) is lr_scheduler.StepLR and scheduler is model.lr_scheduler
    assert scheduler.step_size == 10 and scheduler.gamma == 0.1
    assert all(group["lr"] == 1e-3 for group in optimizer.param_groups)
    # one group per trainable layer that owns parameters, then the reference group
    owners = [layer for layer in model.layer_names if model.get_submodule(layer)._parameters]
    assert [tuple(g["layers"]) for g in optimizer.param_groups] == [
        *((layer,) for layer in owners),
        (),
    ]


def test_create_train_objects_positional_arguments():
    model = MyResNet()
    model.create_train_objects(1e-2, 3, 0.5)
    assert reference_lr(model) == 1e-2
    assert model.lr_scheduler.step_size == 3 and model.lr_scheduler.gamma == 0.5


def test_create_train_objects_optimizer_and_scheduler_are_replaceable(tmp_path):
    model = MyResNet()
    objects = model.create_train_objects(
        lr=0.1,
        optimizer=torch.optim.SGD,
        optimizer_kwargs={"momentum": 0.9},
        scheduler=lr_scheduler.ExponentialLR,
        scheduler_kwargs={"gamma": 0.5},
    )
    assert type(objects["optimizer"]) is torch.optim.SGD
    assert objects["optimizer"].param_groups[0]["momentum"] == 0.9
    assert type(objects["lr_scheduler"]) is lr_scheduler.ExponentialLR
    model.fit(as_batches(images(4), 2), epochs=2, progress=False)
    assert reference_lr(model) == pytest.approx(0.1 * 0.25, rel=1e-12)
    # the class recipe is saved: resume_training needs nothing more
    model.save(tmp_path / "m.pt")
    resumed, optimizer, scheduler = Mentee.resume_training(tmp_path / "m.pt")
    assert type(optimizer) is torch.optim.SGD and type(scheduler) is lr_scheduler.ExponentialLR
    assert reference_lr(resumed) == reference_lr(model)

    # a factory
    objects = model.create_train_objects(
        lr=0.1, scheduler=lambda opt: lr_scheduler.LambdaLR(opt, lambda epoch: 1.0 / (1 + epoch))
    )
    assert type(objects["lr_scheduler"]) is lr_scheduler.LambdaLR
    model.set_lr_coefficient(0.5, "head")
    train_step(model)
    model.lr_scheduler.step()
    assert lr_of(model, "head") == pytest.approx(0.1 * 0.5 * 0.5, rel=1e-12)


def test_create_train_objects_is_a_fresh_start():
    model = MyResNet()
    model.create_train_objects(lr=1e-2, step_size=1, gamma=0.5)
    model.fit(as_batches(images(8), 4), epochs=2, progress=False)
    old_optimizer, old_scheduler = model.optimizer, model.lr_scheduler
    assert old_optimizer.state and old_scheduler.last_epoch == 2
    assert reference_lr(model) == pytest.approx(2.5e-3)

    objects = model.create_train_objects(lr=1e-2, step_size=1, gamma=0.5)
    assert objects["optimizer"] is not old_optimizer
    assert objects["lr_scheduler"] is not old_scheduler
    assert not model.optimizer.state  # empty state
    assert model.lr_scheduler.last_epoch == 0  # scheduler at epoch 0
    assert all(group["lr"] == 1e-2 for group in model.optimizer.param_groups)
    assert model.epoch == 2  # the model's epoch count is not the scheduler's


# 4. fit --------------------------------------------------------------------------------


def test_epochs_is_the_number_this_call_runs():
    model = MyResNet()
    model.create_train_objects(lr=1e-3)
    data = as_batches(images(8), 4)
    assert model.fit(data, epochs=2, progress=False) is model  # torch_mentor: fit returns self
    assert [r["epoch"] for r in model.history] == [1, 2]
    model.fit(data, epochs=2, progress=False)
    assert model.epoch == 4
    assert [r["epoch"] for r in model.history] == [1, 2, 3, 4]
    assert model.fit(data, epochs=0, progress=False) is model and model.epoch == 4


@pytest.mark.parametrize(
    "kind, steps",
    [("dataloader", 2), ("dataset", 3), ("list", 4), ("tuple", 4)],  # 10 samples
)
def test_fit_accepts_dataloader_dataset_and_batch_lists(kind, steps):
    dataset = images(10)
    data = {
        "dataloader": DataLoader(dataset, batch_size=5),
        "dataset": dataset,  # batched with batch_size=4
        "list": as_batches(dataset, 3),
        "tuple": tuple(as_batches(dataset, 3)),
    }[kind]
    model = MyResNet()
    model.create_train_objects(lr=1e-3)
    before = model.head.weight.detach().clone()
    model.fit(data, epochs=1, batch_size=4, progress=False)
    assert model.optimizer.state[model.head.weight]["step"] == steps
    assert not torch.equal(model.head.weight, before)


def test_fit_dataset_is_shuffled_with_torchs_rng():
    # Same seed, same order; the first batch of a shuffled epoch is not the first 4 samples.
    seen = []

    class Recorder(Identity3):
        def training_step(self, batch):
            seen.append(batch[0][:, 0].tolist())
            return super().training_step(batch)

    x = torch.arange(12.0).repeat(3, 1).T.contiguous()
    dataset = TensorDataset(x, torch.zeros(12, dtype=torch.long))
    model = Recorder()
    model.create_train_objects(lr=0.0)
    model.fit(dataset, epochs=2, batch_size=4, progress=False)
    first_epoch = sorted(value for batch in seen[:3] for value in batch)
    assert first_epoch == [float(i) for i in range(12)]  # every sample once per epoch
    assert seen[:3] != [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert seen[:3] != seen[3:]  # a new order each epoch


def test_fit_rejects_a_one_shot_iterator_for_several_epochs():
    model = MyResNet()
    model.create_train_objects(lr=1e-3)
    with pytest.raises(TypeError, match="iterator"):
        model.fit(iter(as_batches(images(4), 2)), epochs=2, progress=False)


def test_fit_moves_nested_batches_to_the_models_device():
    devices = []

    class Nested(Identity3):
        def training_step(self, batch):
            devices.append((batch["x"].device, batch["y"].device, batch["tag"]))
            return self.trainer.training_step(self, (batch["x"], batch["y"]))

    model = Nested().to(DEVICE)
    model.create_train_objects(lr=1e-3)
    batch = {"x": torch.randn(2, 3), "y": torch.tensor([0, 2]), "tag": "a"}
    model.fit([batch], epochs=1, progress=False)
    device = next(model.parameters()).device
    assert devices == [(device, device, "a")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_moves_cpu_batches_to_a_cuda_model():
    model = MyResNet().to("cuda")
    model.create_train_objects(lr=1e-3)
    model.fit(as_batches(images(4), 2), as_batches(images(4), 2), epochs=1, progress=False)
    assert model.history[-1]["val"]["loss"] > 0


def test_fit_validates_each_epoch_with_the_epochs_final_weights():
    model = MyResNet()
    model.create_train_objects(lr=1e-2)
    val = as_batches(images(6, seed=5), 4)  # batches of 4 and 2
    records = model.fit(as_batches(images(8), 4), val, epochs=2, progress=False).history
    assert model.training  # fit leaves the module in the mode it found it in
    assert all(set(r["val"]) == {"loss", "accuracy"} for r in records)
    model.eval()
    with torch.no_grad():
        x, y = images(6, seed=5).tensors
        logits = model(x)
    assert records[-1]["val"]["loss"] == pytest.approx(
        nn.functional.cross_entropy(logits, y).item(), rel=1e-5
    )
    assert records[-1]["val"]["accuracy"] == pytest.approx(
        (logits.argmax(1) == y).float().mean().item()
    )
    assert records[0]["val"] != records[1]["val"]


class CheckpointWatcher(MyResNet):
    """Looks at the checkpoint file from inside training: no callback machinery needed."""

    def __init__(self, path=None):
        super().__init__(num_classes=10)
        self.path = path
        self.seen: list = []

    def training_step(self, batch):
        exists = self.path is not None and self.path.exists()
        self.seen.append((self.epoch, load_checkpoint(self.path)["epoch"] if exists else None))
        return super().training_step(batch)


def test_fit_saves_a_checkpoint_every_epoch(tmp_path):
    path = tmp_path / "run" / "ckpt.pt"
    model = CheckpointWatcher(path)
    model.create_train_objects(lr=1e-3)
    model.fit(as_batches(images(4), 2), epochs=3, checkpoint_path=path, progress=False)
    # (model epochs done, epoch in the file) at each training step
    assert model.seen == [(0, None), (0, None), (1, 1), (1, 1), (2, 2), (2, 2)]
    assert load_checkpoint(path)["epoch"] == 3
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]  # no temp files left


def test_fit_without_checkpoint_path_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = MyResNet()
    model.create_train_objects(lr=1e-3)
    model.fit(as_batches(images(4), 2), epochs=1, progress=False)
    assert list(tmp_path.iterdir()) == []


def set_weights(model: Identity3, weight) -> None:
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor(weight))
        model.fc.bias.zero_()


def test_best_epoch_is_max_accuracy_for_a_classifier_not_min_loss(tmp_path):
    # Two samples, logits = W @ x. A: both right with a small margin (high loss).
    # B: one very confidently right, one wrong by a small margin (lower loss).
    data = [(torch.eye(2), torch.tensor([0, 1]))]
    weights_a = [[0.1, 0.0], [0.0, 0.1]]
    weights_b = [[10.0, 0.1], [0.0, 0.0]]
    model = Identity3(features=2)
    model.create_train_objects(lr=0.0)  # lr 0: fit never moves the weights we set
    for weights in (weights_a, weights_b, weights_a):
        set_weights(model, weights)
        model.fit(data, data, epochs=1, progress=False)
    val = [r["val"] for r in model.history]
    assert [v["accuracy"] for v in val] == [1.0, 0.5, 1.0]
    assert val[1]["loss"] < val[0]["loss"]  # loss alone would pick epoch 2
    assert model.best == {
        "epoch": 1,
        "metric": "accuracy",
        "mode": "max",
        "value": 1.0,
    }  # ties keep the first
    assert model.load_best_weights() is model
    assert torch.equal(model.fc.weight, torch.tensor(weights_a))
    # the best epoch and its weights are in the checkpoint
    model.save(tmp_path / "m.pt")
    resumed = Mentee.resume(tmp_path / "m.pt")
    set_weights(resumed, weights_b)
    assert resumed.best["epoch"] == 1
    assert torch.equal(resumed.load_best_weights().fc.weight, torch.tensor(weights_a))


def test_best_epoch_is_min_rmse_for_a_regressor():
    data = [(torch.ones(2, 1), torch.ones(2, 1))]
    model = Identity3(features=1, regression=True)
    model.create_train_objects(lr=0.0)
    for weight in (3.0, 1.5, 2.0):  # errors 2, 0.5, 1
        set_weights(model, [[weight]])
        model.fit(data, data, epochs=1, progress=False)
    assert [r["val"]["rmse"] for r in model.history] == [2.0, 0.5, 1.0]
    assert model.best["epoch"] == 2 and model.best["metric"] == "rmse"
    assert model.best["mode"] == "min" and model.best["value"] == 0.5
    model.load_best_weights()
    assert model.fc.weight.item() == 1.5


def test_best_epoch_uses_training_metrics_without_validation_data():
    model = Identity3(features=1, regression=True)
    model.create_train_objects(lr=0.0)
    data = [(torch.ones(2, 1), torch.zeros(2, 1))]
    for weight in (2.0, 1.0, 3.0):
        set_weights(model, [[weight]])
        model.fit(data, epochs=1, progress=False)
    assert all(r["val"] == {} for r in model.history)
    assert model.best["epoch"] == 2 and model.best["value"] == 1.0


def test_load_best_weights_before_fit_raises():
    with pytest.raises(RuntimeError, match="fit"):
        MyResNet().load_best_weights()


def test_progress_bars_can_be_switched_off(capsys):
    model = MyResNet()
    model.create_train_objects(lr=1e-3)
    data = as_batches(images(4), 2)
    model.fit(data, data, epochs=2, progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""

    model.fit(data, data, epochs=1)  # progress bars by default, on stderr
    captured = capsys.readouterr()
    assert "epoch 3 train" in captured.err and "epoch 3 val" in captured.err
    assert captured.out == ""


class CountedBatches:
    """An iterable of batches that counts how often it is iterated, as a DataLoader
    reshuffles (and starts its workers) at each ``iter()``."""

    def __init__(self, batches):
        self.batches, self.iterations = batches, 0

    def __iter__(self):
        self.iterations += 1
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


@pytest.mark.parametrize("progress", [True, False])
def test_fit_iterates_the_data_once_per_epoch(progress, capsys):
    model = MyResNet()
    model.create_train_objects(lr=1e-3)
    train, val = CountedBatches(as_batches(images(4), 2)), CountedBatches(as_batches(images(4), 2))
    model.fit(train, val, epochs=3, progress=progress)
    assert (train.iterations, val.iterations) == (3, 3)


def test_scheduler_steps_once_per_epoch():
    model = MyResNet()
    model.set_lr_coefficient(0.1, "backbone")
    model.create_train_objects(lr=1e-3, step_size=1, gamma=0.5)
    model.fit(as_batches(images(8), 4), epochs=3, progress=False)
    heads = [r["lr"]["head"] for r in model.history]  # the lr each epoch trained with
    assert heads == pytest.approx([1e-3, 5e-4, 2.5e-4], rel=1e-12)
    convs = [r["lr"]["backbone.conv1"] for r in model.history]
    assert convs == pytest.approx([1e-4, 5e-5, 2.5e-5], rel=1e-12)
    assert reference_lr(model) == pytest.approx(1.25e-4, rel=1e-12)
    assert model.lr_scheduler.last_epoch == 3


def test_reduce_lr_on_plateau_gets_the_validation_loss():
    # Validation labels are the opposite of the training labels: as training
    # improves, the validation loss gets worse, so the plateau scheduler reduces.
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 2, generator=generator)
    y = (x[:, 0] > 0).long()
    model = Identity3(features=2)
    model.create_train_objects(
        lr=0.1,
        scheduler=lr_scheduler.ReduceLROnPlateau,
        scheduler_kwargs={"mode": "min", "factor": 0.5, "patience": 0},
    )
    model.fit([(x, y)], [(x, 1 - y)], epochs=3, progress=False)
    train = [r["train"]["loss"] for r in model.history]
    val = [r["val"]["loss"] for r in model.history]
    assert train[0] > train[1] > train[2] and val[0] < val[1] < val[2]
    scheduler = model.lr_scheduler
    assert scheduler.best == val[0]  # it saw exactly the validation losses
    assert [r["lr"]["fc"] for r in model.history] == pytest.approx([0.1, 0.1, 0.05])
    assert reference_lr(model) == pytest.approx(0.025)


def test_history_records_metrics_lrs_frozen_layers_and_time():
    model = MyResNet()
    model.freeze(r"backbone\.layer[12]").set_lr_coefficient(0.5, "head")
    model.create_train_objects(lr=1e-3)
    model.fit(as_batches(images(8), 4), as_batches(images(4, seed=9), 4), epochs=1, progress=False)
    (record,) = model.history
    assert set(record) == {"epoch", "train", "val", "lr", "frozen", "time"}
    assert set(record["train"]) == {"loss", "accuracy"} and set(record["val"]) == {
        "loss",
        "accuracy",
    }
    assert record["lr"]["head"] == 5e-4 and record["lr"]["backbone.conv1"] == 1e-3
    trainable = [
        layer
        for layer in [*owner_layers(model, "backbone"), "head"]
        if not layer.startswith(("backbone.layer1", "backbone.layer2"))
    ]
    assert set(record["lr"]) == set(trainable)
    assert sorted(record["frozen"]) == [
        "backbone.layer1.bn1",
        "backbone.layer1.conv1",
        "backbone.layer2.bn1",
        "backbone.layer2.conv1",
    ]
    assert record["time"] > 0
    # a freeze after the build (inert group) shows in the next epoch's record
    model.freeze("head")
    record = model.fit(as_batches(images(8), 4), epochs=1, progress=False).history[-1]
    assert "head" in record["frozen"] and "head" not in record["lr"]


# 5. Classifier and Regressor -----------------------------------------------------------

LOGITS = [[2.0, 1.0, 0.1], [0.5, 2.5, 0.3], [1.2, 0.2, 3.0], [0.1, 0.2, 0.3]]
LABELS = [0, 1, 0, 1]  # predictions 0, 1, 2, 2: two right


def hand_cross_entropy(logits, label) -> float:
    return math.log(sum(math.exp(z) for z in logits)) - logits[label]


def test_classifier_loss_and_accuracy_on_a_fixed_batch():
    model = Identity3()
    batch = (torch.tensor(LOGITS), torch.tensor(LABELS))
    output = Classifier().training_step(model, batch)
    expected = sum(hand_cross_entropy(z, y) for z, y in zip(LOGITS, LABELS)) / 4
    assert output["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert output["loss"].requires_grad
    assert output["accuracy"] == 0.5
    validation = Classifier().validation_step(model, batch)
    assert validation["loss"].item() == pytest.approx(expected, rel=1e-6)


def test_classifier_epoch_metrics_are_sample_weighted():
    model = Identity3()
    model.create_train_objects(lr=0.0)
    x, y = torch.tensor(LOGITS), torch.tensor(LABELS)
    batches = [(x[:3], y[:3]), (x[3:], y[3:])]  # accuracies 2/3 and 0/1
    (record,) = model.fit(batches, batches, epochs=1, progress=False).history
    losses = [hand_cross_entropy(z, label) for z, label in zip(LOGITS, LABELS)]
    for metrics in (record["train"], record["val"]):
        assert metrics["accuracy"] == pytest.approx(0.5)  # not (2/3 + 0) / 2
        assert metrics["loss"] == pytest.approx(sum(losses) / 4, rel=1e-6)


def test_regressor_loss_is_mse_and_rmse_is_the_root_of_the_epochs_mean():
    model = Identity3(features=1, regression=True)  # outputs == inputs
    output = Regressor().training_step(model, (torch.tensor([[1.0], [2.0]]), torch.zeros(2, 1)))
    assert output["loss"].item() == pytest.approx((1 + 4) / 2)

    model.create_train_objects(lr=0.0)
    batches = [
        (torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[0.0], [1.0], [2.0]])),  # errors 1
        (torch.tensor([[5.0]]), torch.tensor([[2.0]])),  # error 3
    ]
    (record,) = model.fit(batches, batches, epochs=1, progress=False).history
    for metrics in (record["train"], record["val"]):
        assert metrics["loss"] == pytest.approx((3 * 1 + 9) / 4)
        # sqrt(3), not the mean of batch roots (2) nor their weighted mean (1.5)
        assert metrics["rmse"] == pytest.approx(math.sqrt(3.0))


# 6. torch_mentor drop-in ----------------------------------------------------------------


class PassesSome(Mentee):
    """torch_mentor style, passing only some of its arguments explicitly."""

    def __init__(self, num_classes=10, dropout=0.5):
        super().__init__(num_classes=num_classes)
        self.body = nn.Linear(4, 6)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(6, num_classes)

    def forward(self, x):
        return self.head(self.drop(self.body(x)))


class PassesOthers(Mentee):
    """Passes explicit arguments that differ from the ones it received."""

    def __init__(self, num_classes=3):
        super().__init__(num_classes=num_classes * 2)
        self.head = nn.Linear(4, num_classes * 2)

    def forward(self, x):
        return self.head(x)


class TakesAModule(Mentee):
    """Receives a module (not plain data): its explicit plain arguments are the fallback."""

    def __init__(self, backbone=None, num_classes=2):
        super().__init__(num_classes=num_classes)
        self.backbone = backbone if backbone is not None else nn.Linear(4, 4)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.head(self.backbone(x))


class TakesAModuleOnly(TakesAModule):
    def __init__(self, backbone):
        super().__init__(backbone)


def test_recorded_arguments_win_over_explicit_ones(tmp_path):
    model = PassesSome(num_classes=4, dropout=0.1)
    model.save(tmp_path / "some.pt")
    resumed = Mentee.resume(tmp_path / "some.pt")
    assert resumed.drop.p == 0.1 and resumed.head.out_features == 4  # not dropout 0.5

    other = PassesOthers(num_classes=3)
    other.save(tmp_path / "others.pt")
    resumed = Mentee.resume(tmp_path / "others.pt")  # PassesOthers(num_classes=3) again
    assert resumed.head.out_features == 6
    assert torch.equal(resumed.head.weight, other.head.weight)


def test_defaults_are_recorded_so_a_changed_default_cannot_change_the_model(tmp_path):
    model = PassesSome()
    assert model._mentee_constructor.kwargs == {"num_classes": 10, "dropout": 0.5}
    model.save(tmp_path / "defaults.pt")
    assert load_checkpoint(tmp_path / "defaults.pt")["constructor"]["kwargs"] == {
        "num_classes": 10,
        "dropout": 0.5,
    }


def test_explicit_arguments_are_the_fallback_when_the_received_ones_are_not_plain(tmp_path):
    backbone = nn.Linear(4, 4)
    model = TakesAModule(backbone, num_classes=3)
    model.save(tmp_path / "module.pt")
    assert load_checkpoint(tmp_path / "module.pt")["constructor"] == {
        "args": [],
        "kwargs": {"num_classes": 3},
    }
    resumed = Mentee.resume(tmp_path / "module.pt")
    assert torch.equal(resumed.backbone.weight, backbone.weight)  # weights from the file
    # A subclass's explicit arguments are its base's signature: no fallback there.
    TakesAModuleOnly(nn.Linear(4, 4)).save(tmp_path / "only.pt")
    with pytest.raises(CheckpointError, match="not plain data"):
        Mentee.resume(tmp_path / "only.pt")


class Sized(Mentee):
    """Records the device of every build: resume must not build for real before it checks."""

    builds: list[str] = []

    def __init__(self, hidden=4):
        super().__init__()
        self.body = nn.Linear(3, hidden)
        self.head = nn.Linear(hidden, 2)
        Sized.builds.append(self.body.weight.device.type)

    def forward(self, x):
        return self.head(self.body(x))


@pytest.mark.parametrize("hidden", [10**11, 10**6])
def test_absurd_constructor_arguments_are_refused_before_any_real_allocation(tmp_path, hidden):
    Sized().save(tmp_path / "sized.pt")
    contents = torch.load(tmp_path / "sized.pt", weights_only=True)
    contents["constructor"]["kwargs"]["hidden"] = hidden  # 10**11: 1.2 TB of float32
    torch.save(contents, tmp_path / "absurd.pt")
    Sized.builds.clear()
    for resume in (Mentee.resume, Sized.resume_training):
        with pytest.raises(CheckpointError, match=r"shapes differ: body\.weight"):
            resume(tmp_path / "absurd.pt")
    assert Sized.builds == ["meta", "meta"]


class NotOnMeta(Mentee):
    """A constructor that reads a value (impossible on the meta device)."""

    def __init__(self, hidden=3):
        super().__init__()
        self.body = nn.Linear(2, hidden)
        self.scale = float(self.body.weight.abs().sum().item() > -1)

    def forward(self, x):
        return self.body(x) * self.scale


def test_a_constructor_that_cannot_run_on_meta_still_resumes(tmp_path):
    model = NotOnMeta(hidden=5)
    model.save(tmp_path / "m.pt")
    resumed = Mentee.resume(tmp_path / "m.pt")
    assert resumed.body.out_features == 5 and torch.equal(resumed.body.weight, model.body.weight)


class TupleSteps(Mentee):
    """torch_mentor's steps: (loss, metrics) from training, metrics with loss from validation."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 1)

    def forward(self, x):
        return self.fc(x)

    def training_step(self, batch):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        return loss, {"loss": loss.item(), "mae": (self(x) - y).abs().mean().item()}

    def validation_step(self, batch):
        loss, metrics = self.training_step(batch)
        return loss, metrics


class TupleTrainer(Regressor):
    def training_step(self, model, batch):
        output = super().training_step(model, batch)
        return output["loss"], {"seen": float(len(batch[0]))}


def test_steps_may_return_torch_mentors_loss_and_metrics_tuple():
    data = [(torch.randn(4, 2), torch.randn(4, 1)) for _ in range(2)]
    model = TupleSteps().fit(data, data, epochs=2, progress=False)
    assert set(model.history[-1]["train"]) == {"loss", "mae"}
    assert model.history[1]["train"]["loss"] < model.history[0]["train"]["loss"]
    assert model.best["metric"] == "loss"

    trained = Identity3(features=1, regression=True)
    trained.trainer = TupleTrainer()
    trained.fit([(torch.ones(2, 1), torch.zeros(2, 1))], epochs=1, progress=False)
    assert trained.history[-1]["train"]["seen"] == 2.0


@pytest.mark.parametrize(
    "output, named",
    [
        ({"accuracy": 1.0}, "without 'loss'"),
        ((1.0, {}), "tuple of float, dict"),
        (None, "NoneType"),
    ],
)
def test_a_step_returning_something_else_is_a_type_error_naming_it(output, named):
    class Odd(Identity3):
        def training_step(self, batch):
            return output

    with pytest.raises(TypeError, match=named):
        Odd().fit([(torch.eye(3), torch.tensor([0, 1, 2]))], epochs=1, progress=False)


def test_fit_creates_the_training_objects_when_none_exist():
    data = as_batches(images(4), 2)
    model = MyResNet().fit(data, epochs=1, progress=False)
    assert isinstance(model.optimizer, torch.optim.Adam) and reference_lr(model) == 1e-3
    assert isinstance(model.lr_scheduler, lr_scheduler.StepLR)
    model = MyResNet().fit(data, epochs=1, lr=0.05, progress=False)
    assert model.curriculum.lr == 0.05
    model.fit(data, epochs=1, lr=0.05, progress=False)  # the same lr again is fine
    optimizer = model.optimizer
    with pytest.raises(ValueError, match="create_train_objects"):
        model.fit(data, epochs=1, lr=0.01, progress=False)
    assert model.optimizer is optimizer and model.epoch == 2  # nothing changed
    with pytest.raises(ValueError, match="lr"):
        MyResNet().fit(data, epochs=1, lr=-1.0, progress=False)


def test_save_to_a_binary_file_object_and_the_optimizer_arguments(tmp_path):
    model = MyResNet()
    model.create_train_objects(lr=1e-2)
    model.fit(as_batches(images(4), 2), epochs=1, progress=False)
    buffer = io.BytesIO()
    model.save(buffer, optimizer=model.optimizer, lr_scheduler=model.lr_scheduler)
    path = tmp_path / "from_buffer.pt"
    path.write_bytes(buffer.getvalue())
    model.save(tmp_path / "direct.pt")
    with open(tmp_path / "opened.pt", "wb") as handle:
        model.save(handle)
    for name in ("from_buffer.pt", "opened.pt"):
        resumed, optimizer, _ = Mentee.resume_training(tmp_path / name)
        assert optimizer is resumed.optimizer and resumed.epoch == 1
        assert layout(resumed) == layout(model)

    other = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="optimizer"):
        model.save(tmp_path / "x.pt", optimizer=other)
    with pytest.raises(ValueError, match="lr_scheduler"):
        model.save(tmp_path / "x.pt", lr_scheduler=lr_scheduler.StepLR(other, 1))
    with pytest.raises(TypeError, match="binary"):
        model.save(io.StringIO())
    assert not (tmp_path / "x.pt").exists()


def test_resume_with_model_class(tmp_path):
    Positional(3, 5).save(tmp_path / "m.pt")
    model = Mentee.resume(tmp_path / "m.pt", model_class=NoInit)  # same signature
    assert type(model) is NoInit and model.body.out_features == 5
    resumed, optimizer, scheduler = Mentee.resume_training(tmp_path / "m.pt", NoInit, "cpu")
    assert type(resumed) is NoInit and optimizer is None and scheduler is None
    with pytest.raises(CheckpointError, match=r"MyResNet\(3, 5, outputs=2, scale=1\.0\) failed"):
        Mentee.resume(tmp_path / "m.pt", model_class=MyResNet)
    with pytest.raises(TypeError, match="subclass of Positional"):
        Positional.resume(tmp_path / "m.pt", model_class=MyResNet)
    with pytest.raises(TypeError, match="device="):
        Positional.resume_training(tmp_path / "m.pt", "cpu")


def test_device_property():
    model = MyResNet()
    assert model.device == torch.device("cpu")
    model.to(DEVICE)
    assert model.device.type == torch.device(DEVICE).type

    class Settles(Mentee):  # a plain-nn.Module habit keeps working
        def __init__(self):
            super().__init__()
            self.device = "somewhere"

    assert Settles().device == "somewhere"


# Weight decay by kind and norm policy through the object API -------------------------


def no_decay_names(model: Mentee) -> set[str]:
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    return {
        names[id(parameter)]
        for group in model.optimizer.param_groups
        if group.get("applies_weight_decay") is False
        for parameter in group["params"]
    }


def test_create_train_objects_takes_weight_decay_by_kind_and_resume_keeps_it(tmp_path):
    model = MyResNet(num_classes=3)
    model.create_train_objects(
        lr=1e-2, optimizer=torch.optim.AdamW, weight_decay=0.05, no_weight_decay=("bias",)
    )
    biases = {name for name, _ in model.named_parameters() if name.endswith(".bias")}
    assert biases and no_decay_names(model) == biases
    decayed = [g for g in model.optimizer.param_groups if g.get("applies_weight_decay")]
    assert decayed and all(group["weight_decay"] == 0.05 for group in decayed)
    train_step(model, images(8, num_classes=3).tensors)
    path = tmp_path / "decay.ckpt"
    model.save(path)
    resumed, optimizer, _ = MyResNet.resume_training(path)
    assert optimizer is resumed.optimizer
    assert no_decay_names(resumed) == biases
    assert layout(resumed) == layout(model)


def is_bias(name, parameter, module) -> bool:
    return name.endswith("bias")


def test_a_callable_weight_decay_rule_is_passed_again_to_resume(tmp_path):
    model = MyResNet(num_classes=3)
    model.create_train_objects(lr=1e-2, optimizer=torch.optim.AdamW, no_weight_decay=(is_bias,))
    path = tmp_path / "callable.ckpt"
    model.save(path)
    with pytest.raises(CheckpointError, match="is_bias"):
        MyResNet.resume_training(path)
    resumed, _, _ = MyResNet.resume_training(path, no_weight_decay=(is_bias,))
    assert no_decay_names(resumed) == no_decay_names(model)


def test_the_norm_policy_survives_modules_added_before_the_first_optimizer():
    model = MyResNet(num_classes=3)
    model.curriculum.update(mentor_fn.set_norm_policy("eval"))
    model.freeze("backbone")
    model.extra = nn.Linear(3, 3)  # the layers change before any optimizer exists
    assert "extra" in model.curriculum_state.layers
    assert model.curriculum_state.norm_policy == "eval"
    assert model.curriculum_state.is_frozen("backbone")
