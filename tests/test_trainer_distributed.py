"""The transformers Trainer with a curriculum on 2 processes: DDP (accelerate's wrapper,
without unused-parameter detection), FSDP2 (the model sharded at load time), and
DeepSpeed ZeRO 2 and 3 (CurriculumTrainer, accelerate building the engine).

One world runs every scenario (tests/trainer_workers.py): the schedule goes
through every transition kind (freeze, unfreeze with a rebuild, a warmup,
layer-wise decay, a coefficient change); both ranks must hold the same
parameters after every step and equal the single process trained on the
combined batches; the embeddings, frozen throughout, never move; under
DeepSpeed the engine's ZeRO groups hold exactly the trainable parameters, at
their curriculum group's lr, after every step; and under DDP and DeepSpeed,
runs resumed from the Trainer's own checkpoints equal the uninterrupted run
bit for bit.

Tolerance against the single process: ``rtol=1e-5, atol=1e-6``. The two
differ only in the order of the gradient sums (two half-batch means averaged
across ranks, by DDP's all-reduce or ZeRO's reduce-scatter, against one mean
over the whole batch) and of the gradient norm the clipping divides by:
float32 rounding, about 1e-9 per step here (measured: at most 3.7e-9 over the
12 steps, under DDP and both ZeRO stages alike), and SGD keeps an error in a
gradient an error of that size in the parameters.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import trainer_workers as workers
from distributed_harness import run_world, skip_reason

needs_deepspeed = pytest.mark.skipif(not workers.HAS_DEEPSPEED, reason="needs deepspeed")
ENGINES = ["whole", "fsdp", pytest.param("zero2", marks=needs_deepspeed)]
ENGINES.append(pytest.param("zero3", marks=needs_deepspeed))

pytestmark = [
    pytest.mark.distributed,  # 2-process worlds: python -m pytest -m distributed
    pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason())),
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]

TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("trainer_world")
    weights = str(folder / "weights")
    workers.save_tiny_bert(weights)
    reference = workers.train(None, str(folder / "reference"), weights=weights)
    results = run_world(workers.trainer_runs, str(folder), weights, deadline=360.0)
    return {"reference": reference, "ranks": results, "initial": workers.tiny_bert()}


def assert_ranks_equal_reference(first: dict, second: dict, reference: dict) -> None:
    assert first["phases"] == second["phases"] == reference["phases"]
    assert first["lrs"] == second["lrs"] == reference["lrs"]
    assert len(first["parameters"]) == len(reference["parameters"]) == 12
    for step, expected in enumerate(reference["parameters"]):
        for name, value in expected.items():
            # a parameter is the same on both ranks after every step
            assert torch.equal(first["parameters"][step][name], second["parameters"][step][name])
            torch.testing.assert_close(first["parameters"][step][name], value, **TOLERANCE)


def of_engine(result: dict, engine: str) -> dict:
    """The uninterrupted run under ``engine`` ("whole" is DDP's)."""
    return result[engine]["whole"] if engine.startswith("zero") else result[engine]


@pytest.mark.parametrize("engine", ENGINES)
def test_ranks_stay_equal_and_equal_one_process_through_every_transition(runs, engine):
    first, second = (of_engine(result, engine) for result in runs["ranks"])
    reference = runs["reference"]
    assert reference["phases"] == ["head"] * 3 + ["top"] * 2 + ["decay"] * 2 + ["all"] * 5
    assert_ranks_equal_reference(first, second, reference)


@pytest.mark.parametrize("engine", ENGINES)
def test_frozen_embeddings_never_move(runs, engine):
    initial = dict(runs["initial"].named_parameters())
    embeddings = [name for name in initial if name.startswith("bert.embeddings.")]
    assert embeddings
    for result in runs["ranks"]:
        final = of_engine(result, engine)["parameters"][-1]
        for name in embeddings:
            assert torch.equal(final[name], initial[name].detach()), name


def test_ddp_follows_the_phases_without_unused_parameter_detection(runs):
    for result in runs["ranks"]:
        whole = result["whole"]
        assert whole["wrapper"] == "DistributedDataParallel"
        assert whole["find_unused_parameters"] is False
        # once at the first forward (found after accelerate wrapped it), then
        # at each change of the trainable set: top, decay, all
        assert whole["reducer_rebuilds"] == 4
        assert result["fsdp"]["wrapper"] == "FSDPBertForSequenceClassification"


@pytest.mark.parametrize("engine", ["ddp", *ENGINES[2:]])
def test_runs_resumed_from_the_trainers_checkpoints_equal_the_uninterrupted_run(runs, engine):
    for result in runs["ranks"]:
        whole, resumed_runs = (
            (result["whole"], result["resumed"])
            if engine == "ddp"
            else (result[engine]["whole"], result[engine]["resumed"])
        )
        assert resumed_runs
        for step, resumed in resumed_runs.items():
            assert resumed["phases"] == whole["phases"][step:]
            assert resumed["lrs"] == whole["lrs"][step:]
            for after, parameters in enumerate(resumed["parameters"]):
                for name, value in parameters.items():
                    assert torch.equal(value, whole["parameters"][step + after][name]), (step, name)


@pytest.mark.parametrize("engine", ["whole", *ENGINES[2:]])
def test_the_run_lr_and_each_layers_lr_are_logged_on_every_rank(runs, engine):
    reference = runs["reference"]["logged"]
    assert any("learning_rate/classifier" in entry for entry in reference)
    assert any("learning_rate/bert.encoder.layer.0" in entry for entry in reference)
    for result in runs["ranks"]:
        assert of_engine(result, engine)["logged"] == reference


@pytest.mark.parametrize("engine", ENGINES[2:])
def test_the_zero_groups_hold_the_trainable_parameters_at_their_groups_lr(runs, engine):
    for result in runs["ranks"]:
        run = of_engine(result, engine)
        assert run["processes"] == 2  # accelerate split the batches between the ranks
        assert run["zero_groups_follow"] == [True] * 12
        for resumed in result[engine]["resumed"].values():
            assert resumed["zero_groups_follow"] and all(resumed["zero_groups_follow"])
