"""The norm policy end to end: which norm layers train, and running statistics that stay.

``"stats"`` (the default) changes nothing for existing users; ``"eval"``
keeps the running statistics of norm modules inside frozen layers where they
are, whatever ``train()``/``eval()``, forward passes, transitions and
save/resume do; ``"train"`` trains the norm layers' affine parameters inside
frozen subtrees, at their layer's coefficient. Checked on real modules and
optimizers, with mentor_fn.testing's invariant checks.
"""

from __future__ import annotations

import copy
import io
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from torch import nn
from torch_features import needs_dynamo_explain

import mentor_fn as mf
from mentor_fn._core.state import NORM_POLICIES
from mentor_fn._core.wrappers import bare_named_modules
from mentor_fn.testing import (
    INPUT_WIDTH,
    CurriculumMachine,
    check_flags,
    check_partition,
    models,
    transitions,
)

LR = 0.1
BATCH = 8


def make_model(seed: int = 0) -> nn.Module:
    """A backbone with BatchNorm (one without affine parameters) and a LayerNorm, a head."""
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module(
        "backbone",
        nn.Sequential(
            nn.Linear(4, 6),
            nn.BatchNorm1d(6),
            nn.ReLU(),
            nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6, affine=False), nn.LayerNorm(6)),
        ),
    )
    model.add_module("head", nn.Sequential(nn.Linear(6, 3), nn.BatchNorm1d(3)))
    return model


LAYERS = (
    "backbone",
    "backbone.0",
    "backbone.1",
    "backbone.3",
    "backbone.3.0",
    "backbone.3.2",
    "head",
    "head.0",
    "head.1",
)
NORM_LAYERS = frozenset({"backbone.1", "backbone.3.2", "head.1"})
# Modules with running statistics, each with the layer that governs it (the
# BatchNorm without parameters is no layer: its parent is).
STATISTICS = {"backbone.1": "backbone.1", "backbone.3.1": "backbone.3", "head.1": "head.1"}


def statistics(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """Every running-statistics module's buffers (cloned), by module path."""
    modules = dict(bare_named_modules(model))
    return {
        path: {name: buffer.clone() for name, buffer in modules[path].named_buffers()}
        for path in STATISTICS
    }


def moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(before[name], after[name]) for name in before)


def forward(model: nn.Module) -> torch.Tensor:
    return model(torch.randn(BATCH, 4))


# Layer kinds ---------------------------------------------------------------------------------

NORMS_WITH_PARAMETERS = [
    nn.BatchNorm1d(4),
    nn.BatchNorm2d(4),
    nn.BatchNorm3d(4),
    nn.SyncBatchNorm(4),
    nn.InstanceNorm1d(4, affine=True),
    nn.InstanceNorm2d(4, affine=True),
    nn.InstanceNorm3d(4, affine=True),
    nn.LayerNorm(4),
    nn.GroupNorm(2, 4),
    nn.RMSNorm(4),
]


def test_from_model_records_the_norm_layers_by_type():
    assert mf.CurriculumState.from_model(make_model()).norm_layers == NORM_LAYERS
    model = nn.Sequential(nn.Linear(4, 4), *NORMS_WITH_PARAMETERS, nn.LocalResponseNorm(2))
    state = mf.CurriculumState.from_model(model)
    # Every norm type with parameters; LocalResponseNorm has none, so it is no layer.
    assert state.norm_layers == {str(i) for i in range(1, len(NORMS_WITH_PARAMETERS) + 1)}
    assert str(len(NORMS_WITH_PARAMETERS) + 1) not in state.layers


def test_parameters_of_a_root_norm_are_layers_of_their_own_not_norm_layers():
    state = mf.CurriculumState.from_model(nn.LayerNorm(4))
    assert state.layers == ("weight", "bias")
    assert state.norm_layers == frozenset()


def test_a_curriculum_fills_the_norm_layers_of_a_state_made_by_hand():
    model = make_model()
    curriculum = mf.Curriculum(model, LR, state=mf.CurriculumState(LAYERS))
    assert curriculum.state.norm_layers == NORM_LAYERS
    assert mf.Curriculum(make_model(), LR).state.norm_layers == NORM_LAYERS


def test_bare_named_modules_spell_paths_as_layers_do_through_wrappers():
    model = make_model()
    expected = [(path, module) for path, module in model.named_modules() if path]
    assert list(bare_named_modules(model)) == expected
    assert list(bare_named_modules(nn.DataParallel(model))) == expected
    holder = nn.Sequential(nn.DataParallel(model))
    assert [path for path, _ in bare_named_modules(holder)][:3] == [
        "0",
        "0.backbone",
        "0.backbone.0",
    ]


# "stats", the default --------------------------------------------------------------------------


def test_the_default_policy_lets_frozen_statistics_update_as_before():
    model = make_model()
    curriculum = mf.Curriculum(model, LR)
    assert curriculum.state.norm_policy == "stats"
    curriculum.freeze("backbone")
    curriculum.build()
    before = statistics(model)
    forward(model.train())
    after = statistics(model)
    assert all(moved(before[path], after[path]) for path in STATISTICS)
    assert not any(module._forward_pre_hooks for module in model.modules())


# "eval" ---------------------------------------------------------------------------------------------


def test_eval_keeps_frozen_statistics_and_normalizes_with_them():
    model = make_model()
    curriculum = mf.Curriculum(model, LR)
    curriculum.update(mf.chain(mf.freeze("backbone"), mf.set_norm_policy("eval")))
    curriculum.build()
    forward(model.eval())  # statistics that differ from the batch's own
    before = statistics(model)
    inputs = torch.randn(BATCH, 4)
    trained = model.train().backbone(inputs)
    after = statistics(model)
    assert not moved(before["backbone.1"], after["backbone.1"])
    assert not moved(before["backbone.3.1"], after["backbone.3.1"])
    assert torch.equal(trained, model.eval().backbone(inputs))
    # train() is what the user asked for, and state_dict keys are untouched.
    assert all(module.training for module in model.train().modules())
    assert list(model.state_dict()) == list(make_model().state_dict())


def test_eval_on_a_frozen_head_and_unfreezing_makes_statistics_update_again():
    model = make_model()
    curriculum = mf.Curriculum(model, LR, optimizer=torch.optim.SGD)
    curriculum.build()
    assert (
        curriculum.update(mf.chain(mf.set_norm_policy("eval"), mf.freeze("head"))) == mf.NoChange()
    )
    before = statistics(model)
    forward(model.train())
    after = statistics(model)
    assert not moved(before["head.1"], after["head.1"])
    assert moved(before["backbone.1"], after["backbone.1"])
    assert curriculum.unfreeze("head") == mf.Patch(reactivated=("head.0", "head.1"))
    before = statistics(model)
    forward(model)
    assert moved(before["head.1"], statistics(model)["head.1"])


def test_eval_follows_transitions_that_change_a_few_layers():
    """Once the policy is set, a transition reads only the layers it changed: the
    hooks' record is updated for those, the others stay as they were."""
    model = make_model()
    curriculum = mf.Curriculum(model, LR, optimizer=torch.optim.SGD)
    curriculum.build()
    curriculum.update(mf.set_norm_policy("eval"))

    def moving() -> set[str]:
        before = statistics(model)
        forward(model.train())
        after = statistics(model)
        return {path for path in STATISTICS if moved(before[path], after[path])}

    assert moving() == set(STATISTICS)
    assert curriculum.freeze("head") == mf.NoChange()
    assert moving() == {"backbone.1", "backbone.3.1"}
    assert curriculum.freeze("backbone.3") == mf.NoChange()
    assert moving() == {"backbone.1"}
    assert curriculum.unfreeze("head") == mf.Patch(reactivated=("head.0", "head.1"))
    assert moving() == {"backbone.1", "head.1"}
    assert curriculum.set_lr_coefficient(0.5, "backbone") != mf.NoChange()  # no flag changes
    assert moving() == {"backbone.1", "head.1"}


def test_eval_hooks_follow_the_newest_curriculum_of_a_model():
    model = make_model()
    mf.Curriculum(model, LR).update(mf.chain(mf.freeze("backbone"), mf.set_norm_policy("eval")))
    # A new phase: a new Curriculum on the same model, under "stats".
    mf.Curriculum(model, LR, state=mf.CurriculumState.from_model(model).freeze("backbone"))
    before = statistics(model)
    forward(model.train())
    assert moved(before["backbone.1"], statistics(model)["backbone.1"])


class EvalPolicyMachine(RuleBasedStateMachine):
    """Random runs: under "eval", statistics in frozen layers never move.

    Rules: transitions (any kind, the norm policy included, always allowed to
    rebuild), optimizer steps, forward passes in train or eval mode, new
    phases, and save/resume into a fresh model and Curriculum. Every forward
    pass checks each running-statistics module against the live state: frozen
    under "eval", or in eval mode: unchanged; otherwise: updated. The flags
    and the partition (invariants 1 and 2) hold after every step.
    """

    def __init__(self) -> None:
        super().__init__()
        self.curriculum = mf.Curriculum(make_model(), LR, optimizer=torch.optim.SGD)
        self.built = False

    @property
    def model(self) -> nn.Module:
        return self.curriculum.model

    @rule(transition=transitions(make_model()))
    def transition(self, transition):
        self.curriculum.update(transition, reset_optimizer_if_needed=True)

    @rule(policy=st.sampled_from(NORM_POLICIES), patterns=st.sampled_from(LAYERS))
    def freeze_under_policy(self, policy, patterns):
        self.curriculum.update(
            mf.chain(mf.set_norm_policy(policy), mf.freeze(patterns)),
            reset_optimizer_if_needed=True,
        )

    @rule(training=st.booleans())
    def forward_pass(self, training):
        state = self.curriculum.state
        before = statistics(self.model)
        self.model.train(training)
        output = forward(self.model)
        after = statistics(self.model)
        for path, layer in STATISTICS.items():
            stays = not training or (state.norm_policy == "eval" and state.is_frozen(layer))
            assert moved(before[path], after[path]) != stays, (path, state, training)
        if self.built and output.requires_grad:
            self.curriculum.optimizer.zero_grad()
            output.pow(2).mean().backward()
            self.curriculum.optimizer.step()

    @rule()
    def new_phase(self):
        self.curriculum.build()
        self.built = True

    @rule()
    def save_and_resume(self):
        buffer = io.BytesIO()
        torch.save(
            {"model": self.model.state_dict(), "curriculum": self.curriculum.state_dict()}, buffer
        )
        buffer.seek(0)
        saved = torch.load(buffer, weights_only=True)
        model = make_model(seed=1)
        model.load_state_dict(saved["model"])
        resumed = mf.Curriculum(model, LR, optimizer=torch.optim.SGD)
        resumed.load_state_dict(saved["curriculum"])
        assert resumed.state == self.curriculum.state
        self.curriculum = resumed

    @invariant()
    def flags_and_partition_hold(self):
        check_flags(self.curriculum.state, self.model)
        if self.curriculum.optimizer is not None:
            check_partition(self.curriculum.optimizer, self.curriculum.state, self.model)


TestEvalPolicy = EvalPolicyMachine.TestCase
TestEvalPolicy.settings = settings(max_examples=20, stateful_step_count=12)


# "train" ------------------------------------------------------------------------------------------


def test_train_keeps_norm_layers_training_inside_frozen_layers_at_their_coefficient():
    model = make_model()
    curriculum = mf.Curriculum(model, LR, optimizer=torch.optim.SGD)
    curriculum.update(
        mf.chain(
            mf.set_norm_policy("train"),
            mf.freeze("backbone"),
            mf.set_lr_coefficient(0.5, "backbone"),
        )
    )
    optimizer = curriculum.build()
    flags = mf.requires_grad_map(curriculum.state, model)
    assert [name for name, trains in flags.items() if trains] == [
        "backbone.1.weight",
        "backbone.1.bias",
        "backbone.3.2.weight",
        "backbone.3.2.bias",
        "head.0.weight",
        "head.0.bias",
        "head.1.weight",
        "head.1.bias",
    ]
    lrs = {group["layers"]: group["lr"] for group in optimizer.param_groups}
    assert lrs == {
        ("backbone.1",): LR * 0.5,
        ("backbone.3.2",): LR * 0.5,
        ("head.0",): LR,
        ("head.1",): LR,
        (): LR,
    }
    check_flags(curriculum.state, model)
    check_partition(optimizer, curriculum.state, model)
    before = {name: parameter.clone() for name, parameter in model.named_parameters()}
    forward(model.train()).pow(2).mean().backward()
    optimizer.step()
    for name, parameter in model.named_parameters():
        if not flags[name] or name.startswith(("backbone.1.", "backbone.3.2.")):
            assert torch.equal(before[name], parameter) != flags[name], name


def test_switching_to_train_after_build_needs_groups_then_reactivates_inert_ones():
    model = make_model()
    curriculum = mf.Curriculum(model, LR)
    curriculum.freeze("backbone")
    curriculum.build()
    with pytest.raises(RuntimeError, match=r"no optimizer group: backbone\.1, backbone\.3\.2"):
        curriculum.update(mf.set_norm_policy("train"))
    assert curriculum.state.norm_policy == "stats"
    decision = curriculum.update(mf.set_norm_policy("train"), reset_optimizer_if_needed=True)
    assert isinstance(decision, mf.Rebuild)
    check_partition(curriculum.optimizer, curriculum.state, model)
    forward(model.train()).pow(2).mean().backward()
    curriculum.optimizer.step()
    # Back to "stats": the norm groups stay, inert; "train" again re-activates
    # them with fresh optimizer state, on the fast path.
    assert curriculum.update(mf.set_norm_policy("stats")) == mf.NoChange()
    assert not model.backbone[1].weight.requires_grad
    assert model.backbone[1].weight.grad is None
    assert curriculum.update(mf.set_norm_policy("train")) == mf.Patch(
        reactivated=("backbone.1", "backbone.3.2")
    )
    assert model.backbone[1].weight not in curriculum.optimizer.state
    check_flags(curriculum.state, model)
    check_partition(curriculum.optimizer, curriculum.state, model)


def test_train_on_a_state_made_by_hand_finds_the_norms_in_the_model():
    model = make_model()
    state = mf.CurriculumState(LAYERS).freeze("backbone").set_norm_policy("train")
    assert state.norm_layers == frozenset()
    flags = mf.requires_grad_map(state, model)
    assert flags["backbone.1.weight"] and flags["backbone.3.2.bias"]
    assert not flags["backbone.0.weight"]
    groups = mf.param_groups(state, model, LR)
    assert [group["layers"] for group in groups][:2] == [("backbone.1",), ("backbone.3.2",)]
    mf.apply_requires_grad(state, model)
    assert model.backbone[1].weight.requires_grad
    assert not model.backbone[0].weight.requires_grad


# Wrappers --------------------------------------------------------------------------------------------


@pytest.fixture
def one_process_world():
    """A 1-process gloo world (FileStore), torn down after the test."""
    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    if dist.is_initialized():
        pytest.skip("a process group is already initialized")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with tempfile.TemporaryDirectory() as folder:
        store = dist.FileStore(os.path.join(folder, "store"), 1)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()


def run_phases(forward_model: nn.Module, curriculum: mf.Curriculum) -> dict[str, object]:
    """Eval and train policies on a wrapped or bare model: what they leave behind."""
    curriculum.update(mf.chain(mf.freeze("backbone"), mf.set_norm_policy("eval")))
    curriculum.build()
    torch.manual_seed(3)
    forward_model.train()
    for _ in range(2):
        curriculum.optimizer.zero_grad()
        forward_model(torch.randn(BATCH, 4)).pow(2).mean().backward()
        curriculum.optimizer.step()
    curriculum.update(mf.set_norm_policy("train"), reset_optimizer_if_needed=True)
    curriculum.optimizer.zero_grad()
    forward_model(torch.randn(BATCH, 4)).pow(2).mean().backward()
    curriculum.optimizer.step()
    return {
        "groups": [(g["layers"], g["lr"]) for g in curriculum.optimizer.param_groups],
        "model": {k: v.clone() for k, v in mf.unwrap_model(forward_model).state_dict().items()},
    }


def assert_same_run(first: dict[str, object], second: dict[str, object]) -> None:
    assert first["groups"] == second["groups"]
    for name, value in first["model"].items():  # type: ignore[union-attr]
        assert torch.equal(value, second["model"][name]), name  # type: ignore[index]


def test_ddp_does_not_change_the_policies(one_process_world):
    reference = run_phases(model := make_model(), mf.Curriculum(model, LR))
    wrapped = mf.wrap_ddp(make_model())
    assert_same_run(reference, run_phases(wrapped, mf.Curriculum(wrapped, LR)))


def test_compile_does_not_change_the_policies(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    torch._dynamo.reset()
    try:
        reference = run_phases(model := make_model(), mf.Curriculum(model, LR))
        compiled = torch.compile(make_model(), backend="eager")
        assert_same_run(reference, run_phases(compiled, mf.Curriculum(compiled, LR)))
    finally:
        torch._dynamo.reset()


def test_copies_of_a_model_are_hooked_apart():
    model = make_model()
    mf.Curriculum(model, LR).update(mf.chain(mf.freeze("backbone"), mf.set_norm_policy("eval")))
    twin = copy.deepcopy(model)
    before = statistics(twin)
    forward(twin.train())
    # The copy has no curriculum: its hooks (copied with it) find none and do nothing.
    assert moved(before["backbone.1"], statistics(twin)["backbone.1"])


# The invariant machine on split groups ---------------------------------------------------------


class SplitGroupsMachine(CurriculumMachine):
    """mentor_fn.testing's machine on drawn models (norm layers among them), groups split
    by weight decay: every policy, transition, step, new phase and resume keeps the
    invariant with two halves per layer."""

    optimizer_class = torch.optim.AdamW
    example_input = torch.randn(4, INPUT_WIDTH)

    def model_strategy(self):
        return models()

    def new_curriculum(self, model):
        return mf.Curriculum(
            model,
            self.lr,
            optimizer=self.optimizer_class,
            coalesce=self.coalesce,
            weight_decay=0.1,
            no_weight_decay=("1d",),
        )


@pytest.mark.parametrize("coalesce", [False, True], ids=["per_layer", "coalesced"])
def test_the_invariant_holds_with_split_groups(coalesce):
    machine = type("SplitGroups", (SplitGroupsMachine,), {"coalesce": coalesce})
    run_state_machine_as_test(
        machine, settings=settings(max_examples=8, stateful_step_count=20, deadline=None)
    )


@needs_dynamo_explain
def test_compiled_eval_hooks_guard_on_their_own_record_not_on_a_registry(tmp_path, monkeypatch):
    """dynamo traces the hooks: their guards must not index a registry of models.

    A guard like ``list(registry.keys())[12]`` broke (IndexError while
    creating guards) when other hooked models died during a compilation; the
    hooks read only a record they hold, so no guard names the registry.
    """
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    torch._dynamo.reset()
    try:
        others = [make_model(seed) for seed in range(3)]  # hooked models besides this one
        for other in others:
            mf.Curriculum(other, LR).update(
                mf.chain(mf.freeze("backbone"), mf.set_norm_policy("eval"))
            )
        model = make_model()
        curriculum = mf.Curriculum(model, LR)
        curriculum.update(mf.chain(mf.freeze("backbone"), mf.set_norm_policy("eval")))
        explained = torch._dynamo.explain(model.train())(torch.randn(BATCH, 4))
        assert explained.graph_break_count == 0
        assert not [guard.name for guard in explained.out_guards if "_norm_hooks" in guard.name]
        compiled = torch.compile(model, backend="eager")
        before = statistics(model)
        compiled(torch.randn(BATCH, 4))
        after = statistics(model)
        assert not moved(before["backbone.1"], after["backbone.1"])
        assert moved(before["head.1"], after["head.1"])
        curriculum.unfreeze("backbone")  # what is lowered changes: recompiled
        before = statistics(model)
        compiled(torch.randn(BATCH, 4))
        assert moved(before["backbone.1"], statistics(model)["backbone.1"])
    finally:
        torch._dynamo.reset()
