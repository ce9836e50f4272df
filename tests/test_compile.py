"""torch.compile: bare names in the state and in checkpoints, both directions."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import mentor_fn as mf


@pytest.fixture(autouse=True)
def compile_tmpdir(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def make_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("backbone", nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8)))
    model.add_module("head", nn.Linear(8, 2))
    return model


class WithCompiledChild(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        inner = make_model()
        self.body = torch.compile(inner.backbone, backend="eager")
        self.head = inner.head

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(inputs))


BATCH = torch.randn(5, 4)


def steps(curriculum: mf.Curriculum, forward: nn.Module, count: int) -> None:
    for _ in range(count):
        curriculum.optimizer.zero_grad()
        forward(BATCH).pow(2).mean().backward()
        curriculum.optimizer.step()


def round_trip(value):
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def run_and_save(forward: nn.Module, curriculum: mf.Curriculum) -> dict:
    curriculum.freeze("backbone")
    curriculum.build()
    steps(curriculum, forward, 2)
    curriculum.unfreeze("backbone", reset_optimizer_if_needed=True)
    steps(curriculum, forward, 2)
    return round_trip(
        {
            "model": mf.unwrap_model(curriculum.model).state_dict(),
            "curriculum": curriculum.state_dict(),
        }
    )


def resume(saved: dict, model: nn.Module, forward: nn.Module) -> mf.Curriculum:
    mf.unwrap_model(model).load_state_dict(saved["model"])
    curriculum = mf.Curriculum(model, 0.1)
    curriculum.load_state_dict(saved["curriculum"])
    steps(curriculum, forward, 2)
    return curriculum


def test_compiled_run_resumes_into_uncompiled_model():
    compiled = torch.compile(make_model(), backend="eager")
    curriculum = mf.Curriculum(compiled, 0.1)
    assert curriculum.state.layers == mf.layer_names(make_model())
    saved = run_and_save(compiled, curriculum)
    assert "backbone.0.weight" in saved["model"]
    names = {
        name
        for group in saved["curriculum"]["optimizer"]["param_groups"]
        for name in group["params"]
    }
    assert names == {name for name, _ in make_model().named_parameters()}
    assert not any("_orig_mod" in name for name in names)

    plain = make_model()
    resumed = resume(saved, plain, plain)
    steps(curriculum, compiled, 2)
    for a, b in zip(mf.unwrap_model(compiled).parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    assert resumed.state == curriculum.state


def test_uncompiled_run_resumes_into_compiled_model_and_compiled_child():
    plain = make_model()
    curriculum = mf.Curriculum(plain, 0.1)
    saved = run_and_save(plain, curriculum)

    compiled = torch.compile(make_model(), backend="eager")
    resume(saved, compiled, compiled)

    child = WithCompiledChild()
    # Same names as the bare model, through the compiled child.
    assert mf.layer_names(child) == ("body", "body.0", "body.2", "head")
    child_state = mf.Curriculum(child, 0.1).state
    assert child_state.layers == ("body", "body.0", "body.2", "head")

    steps(curriculum, plain, 2)
    for a, b in zip(plain.parameters(), mf.unwrap_model(compiled).parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_phase_changes_on_a_compiled_model_train_the_right_layers():
    compiled = torch.compile(make_model(), backend="eager")
    curriculum = mf.Curriculum(compiled, 0.1)
    curriculum.build()
    bare = mf.unwrap_model(compiled)
    for phase in ("backbone", "head"):
        curriculum.unfreeze(["backbone", "head"])
        curriculum.freeze(phase)
        frozen = {
            name: p.detach().clone()
            for name, p in bare.named_parameters()
            if name.startswith(phase)
        }
        steps(curriculum, compiled, 2)
        for name, value in frozen.items():
            assert torch.equal(bare.get_parameter(name), value), name


class CompiledNet(mf.Mentee):
    def __init__(self) -> None:
        super().__init__()
        inner = make_model()
        self.backbone = inner.backbone
        self.head = inner.head
        self.trainer = mf.Regressor()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(inputs))


def test_mentee_compiled_in_place_checkpoint_resumes_uncompiled_and_back(tmp_path):
    data = [(BATCH, torch.zeros(5, 2))] * 2
    model = CompiledNet()
    model.compile(backend="eager")  # in place: names unchanged
    model.freeze("backbone").create_train_objects(lr=0.1)
    model.fit(data, epochs=1, progress=False, checkpoint_path=tmp_path / "compiled.pt")
    saved = torch.load(tmp_path / "compiled.pt", weights_only=True)
    assert set(saved["model"]) == {name for name, _ in CompiledNet().state_dict().items()}

    plain, _, _ = CompiledNet.resume_training(tmp_path / "compiled.pt")
    assert plain._compiled_call_impl is None  # really uncompiled
    model.fit(data, epochs=1, progress=False)
    plain.fit(data, epochs=1, progress=False, checkpoint_path=tmp_path / "plain.pt")
    for a, b in zip(model.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)

    again, _, _ = CompiledNet.resume_training(tmp_path / "plain.pt")
    again.compile(backend="eager")
    again.fit(data, epochs=1, progress=False)
    assert again.epoch == 3 and again.curriculum_state.is_frozen("backbone")
