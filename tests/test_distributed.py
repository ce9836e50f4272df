"""Curriculum phases under DDP and FSDP2 on a real 2-process gloo world.

Each scenario runs the same phase changes (head first; unfreeze the backbone
with a rebuild; freeze the head, leaving an inert group; patch a coefficient;
unfreeze the head on the fast path) on 2 ranks with half a batch each, and in
one process on the whole batch: all ranks must be identical and equal to that
reference.
"""

from __future__ import annotations

import distributed_workers as workers
import pytest
import torch
import torch.distributed as dist
from distributed_harness import run_world
from torch_features import needs_fsdp2, needs_fsdp2_reduction_of_torch_2_13

pytestmark = [
    pytest.mark.distributed,  # 2-process worlds: python -m pytest -m distributed
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable"),
]


@pytest.fixture(scope="module")
def reference():
    return workers.reference_phases()


def assert_ranks_equal_reference(results, reference):
    first, second = results
    for name, expected in reference["parameters"].items():
        # Ranks are bit-identical; the reference differs by reduction order only.
        assert torch.equal(first["parameters"][name], second["parameters"][name]), name
        torch.testing.assert_close(first["parameters"][name], expected, rtol=1e-5, atol=1e-6)
    assert first["lrs"] == pytest.approx(reference["lrs"], rel=1e-12)


def test_ddp_phase_changes_keep_ranks_identical_and_equal_to_single_process(reference):
    results = run_world(workers.ddp_phases)
    assert_ranks_equal_reference(results, reference)
    for result in results:
        # No unused-parameter search: the reducer was rebuilt at the unfreeze
        # (a rebuild), the head's freeze and the fast-path unfreeze; the
        # coefficient patch left the trainable set alone.
        assert result["find_unused_parameters"] is False
        assert result["rebuilds"] == 3


def test_a_plain_ddp_built_with_frozen_layers_follows_the_phases(reference):
    results = run_world(workers.ddp_adopted)
    assert_ranks_equal_reference(results, reference)
    # adopted with unknown flags: rebuilt at the first forward, then at each change
    assert [result["rebuilds"] for result in results] == [4, 4]


def test_ddp_wrappers_whose_reducer_cannot_be_rebuilt_are_refused():
    messages = run_world(workers.ddp_refused)[0]
    assert "static_graph=True" in messages["static_graph"]
    assert "mentor_fn.wrap_ddp" in messages["static_graph"]
    assert "static_graph=True" in messages["wrap_static_graph"]


@needs_fsdp2
@needs_fsdp2_reduction_of_torch_2_13
def test_fsdp2_phase_changes_with_mixed_units_equal_single_process(reference):
    assert_ranks_equal_reference(run_world(workers.fsdp_phases), reference)


@needs_fsdp2
def test_optimizer_built_before_fully_shard_is_refused_on_update_and_step():
    messages = run_world(workers.fsdp_stale_optimizer)[0]
    for key in ("update", "step"):
        assert "no longer one of the model's" in messages[key]
        assert "Call build() again" in messages[key]
    assert messages["recovered"] == "True"


@needs_fsdp2
def test_distributed_checkpoint_of_sharded_run_with_frozen_layer_resumes_exactly(tmp_path):
    results = run_world(workers.fsdp_checkpoint, str(tmp_path / "checkpoint"))
    for result in results:
        assert result["extra"] == {"step": 5}
        assert result["state_equal"]
        assert result["layout"] == result["original_layout"]
        assert result["layout"][0] == ("backbone.0",)  # the inert group survived
        # The frozen layer's optimizer state was loaded, not dropped.
        assert result["frozen_state"].keys() == result["loaded_frozen_state"].keys()
        for key, value in result["frozen_state"].items():
            assert torch.equal(value, result["loaded_frozen_state"][key]), key
        for name, value in result["original"].items():
            assert torch.equal(value, result["resumed"][name]), name
        assert result["lrs"][0] == result["lrs"][1]
    assert (tmp_path / "checkpoint" / "curriculum.pt").is_file()
    loaded = torch.load(tmp_path / "checkpoint" / "curriculum.pt", weights_only=True)
    assert loaded["curriculum"]["optimizer"]["state"] == {}
    assert "backbone.0.weight" in loaded["curriculum"]["optimizer_state_keys"]


@needs_fsdp2
def test_mentee_fit_under_ddp_and_fsdp2_equals_single_process(tmp_path):
    reference = workers.mentee_phases(None)
    for worker in (workers.mentee_ddp, workers.mentee_fsdp):
        first, second = run_world(worker, str(tmp_path))
        for name, expected in reference["parameters"].items():
            assert torch.equal(first["parameters"][name], second["parameters"][name]), name
            torch.testing.assert_close(first["parameters"][name], expected, rtol=1e-5, atol=1e-6)
        assert first["history_lrs"] == reference["history_lrs"]
    assert "save_distributed_checkpoint" in first["saved_error"]
    # Under DDP only rank 0 wrote the per-epoch checkpoint; it resumes as a plain model.
    resumed = workers.DistNet.resume(tmp_path / "mentee.pt")
    assert resumed.epoch == 2 and resumed.curriculum_state.is_frozen("backbone")
