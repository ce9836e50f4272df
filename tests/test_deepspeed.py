"""Curricula on DeepSpeed ZeRO stages 1, 2 and 3, on a real 2-process world.

One world (tests/deepspeed_workers.py) runs every scenario on every stage;
the tests below read its results. Each scenario also runs in one process on
the whole batch with a plain Curriculum: the reference.

Tolerance against the reference: ``rtol=1e-5, atol=1e-6``. The ranks average
the gradients of their half batches (DeepSpeed's reduce-scatter / all-reduce,
then a division by the world size), the reference takes the mean over the
whole batch: the same sum in another order, about 1e-7 relative in float32.
Adam divides the moments elementwise, which keeps an update's error at that
relative scale; over 13 steps the weights (of order 0.1 to 1) differed by at
most 1e-7 here, so the bound leaves a tenfold margin. Everything else is
compared bit for bit: ranks with each other, frozen parameters across steps,
a resumed run with the uninterrupted one, and the optimizer state a rebuild
carries (same machine, same computations).
"""

from __future__ import annotations

import json
import subprocess
import sys

import deepspeed_workers as workers
import pytest
import torch
from distributed_harness import on_cuda, run_world, skip_reason

import mentor_fn as mf

pytest.importorskip("deepspeed", reason="needs deepspeed: the 'deepspeed' extra")

from mentor_fn.integrations import deepspeed as mf_deepspeed

STAGES = workers.STAGES
# On CUDA the GPU kernels differ from the CPU reference's too (and reduce in
# another order again): a looser bound there.
RTOL, ATOL = (1e-4, 1e-5) if on_cuda() else (1e-5, 1e-6)

needs_world = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deepspeed")
    # Each rank also returns how long each scenario took ("seconds"), for reading.
    first, second = run_world(workers.everything, str(folder), deadline=420)
    return first, second


@pytest.fixture(scope="module")
def reference_transitions():
    return workers.reference_transitions()


@pytest.fixture(scope="module")
def reference_schedule():
    return workers.reference_schedule()


def assert_runs_agree(records, other_rank, reference):
    """After every step: ranks bit-identical, equal to the reference within the bound,
    frozen parameters unmoved, the curriculum's lrs the reference's."""
    assert len(records) == len(other_rank) == len(reference)
    previous = None
    for step, (mine, theirs, expected) in enumerate(
        zip(records, other_rank, reference, strict=True)
    ):
        assert mine["frozen"] == expected["frozen"], step
        for name, value in mine["parameters"].items():
            assert torch.equal(value, theirs["parameters"][name]), (step, name)
            torch.testing.assert_close(
                value, expected["parameters"][name], rtol=RTOL, atol=ATOL, msg=f"{step} {name}"
            )
            if previous is not None and name in mine["frozen"]:
                assert torch.equal(value, previous[name]), f"frozen {name} moved at step {step}"
        assert mine["lrs"] == pytest.approx(expected["lrs"], rel=1e-12), step
        previous = mine["parameters"]


def assert_zero_groups_follow(records):
    """Each ZeRO group holds exactly the trainable parameters of its curriculum group, at its lr."""
    for step, record in enumerate(records):
        placed = []
        for group in record["zero"]:
            assert group["lr"] == group["curriculum_lr"], step
            assert set(group["parameters"]) <= set(group["curriculum_trainable"]), step
            placed += group["parameters"]
        trainable = [name for name in record["parameters"] if name not in record["frozen"]]
        assert sorted(placed) == sorted(trainable), step  # each once, frozen ones in none


@pytest.mark.distributed
@needs_world
@pytest.mark.parametrize("stage", STAGES)
def test_every_transition_kind_equals_one_process(world, reference_transitions, stage):
    first, second = (rank[f"transitions{stage}"] for rank in world)
    assert reference_transitions["plans"] == [
        "Rebuild",
        "NoChange",
        "Patch",
        "Patch",
        "Patch",
        "NoChange",
    ]
    # A change of the trainable set re-initializes the ZeRO optimizer: a Rebuild.
    assert first["plans"] == ["Rebuild", "Rebuild", "Patch", "Rebuild", "Patch", "NoChange"]
    assert_runs_agree(first["records"], second["records"], reference_transitions["records"])
    assert_zero_groups_follow(first["records"])
    assert first["first_optimizer_freed"] and second["first_optimizer_freed"]


@pytest.mark.distributed
@needs_world
@pytest.mark.parametrize("stage", STAGES)
def test_a_rebuild_carries_master_weights_moments_and_step_exactly(world, stage):
    for rank in world:
        carried = rank[f"transitions{stage}"]["carried"]
        assert set(carried) == {"unfreeze", "freeze"}
        for change in carried.values():
            for name, before in change["before"].items():
                after = change["after"][name]
                assert before["step"] is not None and before["step"] == after["step"], name
                for key in ("fp32", "exp_avg", "exp_avg_sq"):
                    assert torch.equal(before[key], after[key]), (name, key)


@pytest.mark.distributed
@needs_world
@pytest.mark.parametrize("stage", STAGES)
def test_schedule_with_warmups_and_a_fresh_phase_equals_one_process(
    world, reference_schedule, stage
):
    first, second = (rank[f"schedule{stage}"] for rank in world)
    assert first["phases"] == reference_schedule["phases"]
    assert reference_schedule["phases"][-1] == "fresh"
    assert_runs_agree(first["records"], second["records"], reference_schedule["records"])
    assert_zero_groups_follow(first["records"])


@pytest.mark.distributed
@needs_world
def test_coalesced_groups_of_carried_and_fresh_parameters_split_on_the_engine(world):
    reference = workers.coalesced(None)
    first, second = (rank["coalesced"] for rank in world)
    assert_runs_agree(first["records"], second["records"], reference["records"])
    assert_zero_groups_follow(first["records"])
    # One curriculum group (coefficient 1.0) besides the reference group; two
    # ZeRO groups of it: the backbone's fresh Adam state (2 steps) and the head's (4).
    assert len(first["records"][-1]["lrs"]) == 2
    assert [group["source"] for group in first["records"][-1]["zero"]] == [0, 0]
    assert sorted(first["steps"]) == [2.0, 4.0]


@pytest.mark.distributed
@needs_world
def test_the_schedule_advances_at_accumulation_boundaries_only(world):
    for rank in world:
        result = rank["accumulation"]
        assert result["steps"] == 1  # 3 optimizer steps: 2 in "head", 1 in "top"
        assert result["phase"] == "top"
        assert result["plans"][0::2] == ["NoneType"] * 3  # micro-steps inside a step
        assert result["plans"][1::2] == ["NoneType", "Rebuild", "Patch"]  # warmup ramps


@pytest.mark.distributed
@needs_world
@pytest.mark.parametrize("stage", STAGES)
def test_resumed_run_continues_as_the_uninterrupted_one_bit_for_bit(world, stage):
    save_at = workers.SAVE_AT[stage]
    for rank in world:
        result = rank[f"schedule{stage}"]
        assert result["client_state"] == {"note": "mine"}
        assert result["loaded_lrs"] == result["saved_lrs"]
        assert result["resumed_phases"] == result["phases"][save_at:]
        assert result["resumed_cursor"] == result["cursor"]
        uninterrupted = result["records"][save_at:]
        for step, (resumed, original) in enumerate(
            zip(result["resumed_records"], uninterrupted, strict=True)
        ):
            assert resumed["lrs"] == original["lrs"], step
            for name, value in original["parameters"].items():
                assert torch.equal(resumed["parameters"][name], value), (step, name)
        # Beside DeepSpeed's files: plain data (loaded with weights_only=True in the worker).
        assert mf_deepspeed.CHECKPOINT_FILE in result["tag_files"]
        assert result["side_file_fields"] == [
            "client_state_keys",
            "curriculum",
            "format",
            "schedule",
            "version",
            "zero_groups",
        ]


@pytest.mark.distributed
@needs_world
@pytest.mark.parametrize("stage", STAGES)
def test_bf16_rebuild_carries_fp32_master_weights_exactly(world, stage):
    """The model is bf16; the rebuild moves the fp32 master weights themselves (rebuilt from
    the bf16 weights they would be rounded), the moments and the step."""
    for rank in world:
        result = rank[f"bf16_{stage}"]
        assert result["model_dtype"] == "torch.bfloat16"
        for name, before in result["before"].items():
            after = result["after"][name]
            assert before["step"] is not None and before["step"] == after["step"], name
            for key in ("fp32", "exp_avg", "exp_avg_sq"):
                assert torch.equal(before[key], after[key]), (name, key)
    first, second = (rank[f"bf16_{stage}"]["trained"] for rank in world)
    for name, value in first.items():
        assert torch.equal(value, second[name]), name


@pytest.mark.distributed
@needs_world
def test_fp16_rebuild_carries_state_and_an_overflow_skips_the_schedule(world):
    for rank in world:
        result = rank["fp16_2"]
        assert result["model_dtype"] == "torch.float16"
        for name, before in result["before"].items():
            for key in ("fp32", "exp_avg", "exp_avg_sq"):
                assert torch.equal(before[key], result["after"][name][key]), (name, key)
        overflow = rank["fp16_overflow"]
        assert overflow == {
            "applied": False,
            "plan": "None",
            "lrs_kept": True,
            "cursor_kept": True,
        }


@pytest.mark.distributed
@needs_world
def test_engines_that_cannot_follow_a_curriculum_are_refused(world):
    messages = world[0]["engine_checks"]
    assert "lr scheduler of its own (StepLR)" in messages["own_scheduler"]
    assert "lr_scheduler=run.lr_scheduler" in messages["own_scheduler"]
    assert "another model" in messages["other_model"]
    assert messages["plateau"].startswith(
        "ValueError: the curriculum's scheduler is a ReduceLROnPlateau"
    )
    assert "pipeline parallelism (PipelineEngine)" in messages["pipeline"]


@pytest.mark.distributed
@needs_world
def test_an_engine_built_with_another_optimizer_is_taken_over_and_guarded(world):
    messages = world[0]["engine_checks"]
    # head weight and bias (decay / no decay): the frozen backbone is in no group.
    assert messages["adopted_groups"] == [["head.weight"], ["head.bias"]]
    assert messages["unfollowed"].startswith("RuntimeError: the curriculum changed since")
    assert messages["synced"] == "Rebuild"
    assert messages["synced_groups"] == 6


@pytest.mark.distributed
@needs_world
def test_frozen_layers_hold_no_optimizer_memory(world):
    messages = world[0]["engine_checks"]
    used, trainable = messages["bytes"], messages["trainable"]
    # fp32 master weights and Adam's two moments: 12 bytes per trainable
    # parameter, partitioned over 2 ranks, each flat group padded to a
    # multiple of 2 elements per rank.
    for run in ("half", "everything"):
        assert 12 * trainable[run] / 2 <= used[run] <= 12 * (trainable[run] / 2 + 6 * 2)
    assert used["half"] / used["everything"] == pytest.approx(
        trainable["half"] / trainable["everything"], rel=0.1
    )


@pytest.mark.distributed
@needs_world
def test_the_example_runs_in_a_world(world):
    for rank in world:
        result = rank["example"]
        assert result["phase"] == result["resumed_phase"] == "all"
        assert result["zero_groups"] == 3  # encoder.0, encoder.2, head


# Refusals before anything starts (no world needed) ----------------------------------------------


BASE = {"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 2}}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"zero_optimization": {"stage": 0}}, "zero_optimization.stage is 0"),
        ({"zero_optimization": None}, "mentor_fn.wrap_ddp"),
        ({"optimizer": {"type": "AdamW"}}, "an 'optimizer' section (type 'AdamW')"),
        ({"scheduler": {"type": "WarmupLR"}}, "a 'scheduler' section (type 'WarmupLR')"),
        (
            {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}},
            "zero_optimization.offload_optimizer (device 'cpu'",
        ),
        (
            {"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme"}}},
            "zero_optimization.offload_param (device 'nvme'",
        ),
        ({"zero_optimization": {"stage": 2, "zenflow": {"topk_ratio": 0.1}}}, "zenflow"),
        ({"tensor_parallel": {"autotp_size": 2}}, "tensor_parallel.autotp_size is 2"),
        ({"compile": {"deepcompile": True}}, "compile.deepcompile"),
    ],
)
def test_configurations_that_cannot_work_are_refused(change, expected):
    config = {**BASE, **change}
    if config["zero_optimization"] is None:
        del config["zero_optimization"]
    with pytest.raises(ValueError, match="DeepSpeed config") as error:
        mf_deepspeed.check_config(config)
    assert expected in str(error.value)


def test_a_config_file_is_read_and_checked(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(BASE))
    mf_deepspeed.check_config(path)  # accepted
    path.write_text(json.dumps({**BASE, "optimizer": {"type": "Adam"}}))
    with pytest.raises(ValueError, match="'optimizer' section"):
        mf_deepspeed.check_config(str(path))
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a JSON object"):
        mf_deepspeed.check_config(path)
    with pytest.raises(TypeError, match="config must be"):
        mf_deepspeed.check_config(3)


def test_initialize_refuses_bad_arguments_before_starting_anything():
    curriculum = workers.new_curriculum(workers.make_model())
    with pytest.raises(TypeError, match="sets model, optimizer itself"):
        mf_deepspeed.initialize(curriculum, config=BASE, model=None, optimizer=None)
    with pytest.raises(ValueError, match="'scheduler' section"):
        mf_deepspeed.initialize(curriculum, config={**BASE, "scheduler": {"type": "OneCycle"}})
    assert curriculum.optimizer is None  # nothing was built
    with pytest.raises(TypeError, match=r"mentor_fn\.Curriculum"):
        mf_deepspeed.DeepSpeedCurriculum(object())
    with pytest.raises(RuntimeError, match="no DeepSpeed engine is attached"):
        mf_deepspeed.DeepSpeedCurriculum(curriculum).step()


def test_a_run_with_every_layer_frozen_is_refused():
    model = workers.make_model()
    state = mf.CurriculumState.from_model(model).freeze(("backbone", "head"))
    run = mf_deepspeed.DeepSpeedCurriculum(mf.Curriculum(model, 0.1, state=state))
    with pytest.raises(ValueError, match="no parameter is trainable"):
        run.client_optimizer()


def test_importing_mentor_fn_does_not_import_deepspeed():
    code = "import mentor_fn, mentor_fn.integrations, sys; assert 'deepspeed' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
