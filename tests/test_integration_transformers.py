"""mentor_fn.integrations.transformers: a curriculum run through the transformers Trainer.

Real Trainers (accelerate underneath) on a tiny BERT built from a config:
resume from the Trainer's checkpoints equals the uninterrupted run bit for
bit, frozen layers never move, the invariant holds at every step, and the
Trainer's references reach the curriculum's current optimizer through every
phase change. Also the optimizer and scheduler handles on their own.
"""

from __future__ import annotations

import functools
import gc
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from framework_runs import Tokens, assert_same_run
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    get_linear_schedule_with_warmup,
)
from transformers.utils import logging as transformers_logging

import mentor_fn as mf
from mentor_fn.integrations.transformers import CurriculumCallback, CurriculumTrainer

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

STEPS = 40  # the linear schedule's length: longer than any run here


@pytest.fixture(scope="module", autouse=True)
def _collections_of_test_objects_only():
    # accelerate runs a full gc.collect() at each train() (0.3-0.4 s in a test
    # process holding torch, Lightning and transformers): with the objects
    # that exist before these tests frozen, it scans what the tests create.
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(autouse=True)
def _quiet(one_torch_thread):
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    yield
    transformers_logging.enable_progress_bar()


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


# The ranks of layer-wise lr decay, lowest first: one per block of the tiny BERT.
BLOCKS = [r"bert\.embeddings", r"bert\.encoder\.layer\.0", r"bert\.encoder\.layer\.1", "classifier"]


def linear_warmup(optimizer: torch.optim.Optimizer) -> lr_scheduler.LambdaLR:
    return get_linear_schedule_with_warmup(optimizer, 2, STEPS)


def phased_schedule() -> mf.Schedule:
    """The head until eval_loss plateaus; the top encoder layer with a warmup (a
    rebuild); then everything with layer-wise decay on a fresh optimizer."""
    return mf.Schedule(
        [
            mf.Phase(
                "head",
                mf.freeze("bert"),
                until=mf.plateau("eval_loss", patience=1, min_delta=0.01),
            ),
            mf.Phase(
                "top", mf.unfreeze("bert.encoder.layer.1"), until=mf.after_steps(5), warmup_steps=3
            ),
            mf.Phase(
                "all",
                mf.chain(
                    mf.unfreeze("bert"),
                    # one rank per block: the embeddings, each encoder layer, the head
                    mf.layerwise_lr_decay(0.5, groups=BLOCKS),
                ),
                optimizer="fresh",
                warmup_steps=4,
            ),
        ]
    )


def train(
    folder: Path,
    epochs: int,
    *,
    schedule: mf.Schedule,
    resume: Path | None = None,
    probes: Callable[[CurriculumCallback], list[TrainerCallback]] = lambda callback: [],
    curriculum_trainer: bool = False,
    **arguments: Any,
) -> tuple[BertForSequenceClassification, CurriculumCallback, Trainer, list[TrainerCallback]]:
    """Train the tiny BERT (4 batches of 8 per epoch) with ``schedule``; ``probes`` run
    after the curriculum's callback. ``curriculum_trainer``: a CurriculumTrainer, which
    takes the optimizers from the callback, instead of Trainer(optimizers=...)."""
    model = tiny_bert()
    curriculum = mf.Curriculum(
        model,
        1e-2,
        optimizer=torch.optim.AdamW,
        optimizer_kwargs={"weight_decay": 0.01},
        scheduler=linear_warmup,
    )
    callback = CurriculumCallback(curriculum, schedule)
    extra = probes(callback)
    settings: dict[str, Any] = {
        "output_dir": str(folder),
        "num_train_epochs": epochs,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 8,
        "eval_strategy": "epoch",
        "logging_strategy": "epoch",
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "use_cpu": True,
        "seed": 0,
        **arguments,
    }
    data = {"train_dataset": Tokens(32, 1), "eval_dataset": Tokens(8, 2)}
    if curriculum_trainer:
        trainer: Trainer = CurriculumTrainer(
            model=model, args=TrainingArguments(**settings), callbacks=[callback, *extra], **data
        )
    else:
        trainer = Trainer(
            model=model,
            args=TrainingArguments(**settings),
            optimizers=callback.optimizers(),
            callbacks=[callback, *extra],
            **data,
        )
    trainer.remove_callback(PrinterCallback)
    trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
    return model, callback, trainer, extra


# Importing -------------------------------------------------------------------------------------


def test_without_transformers_the_import_error_names_the_extra(monkeypatch):
    # `import mentor_fn` importing neither framework is checked in a fresh
    # interpreter by test_integration_lightning.py.
    monkeypatch.setitem(sys.modules, "transformers", None)  # an uninstalled package
    monkeypatch.delitem(sys.modules, "mentor_fn.integrations.transformers")
    with pytest.raises(
        ImportError,
        match=r"pip install 'transformers>=4\.40' \(the 'transformers' extra of mentor_fn\)",
    ):
        import mentor_fn.integrations.transformers  # noqa: F401


# Resume ----------------------------------------------------------------------------------------


def test_resumed_runs_equal_the_uninterrupted_run_bit_for_bit(tmp_path):
    schedule = phased_schedule()
    _, whole, _, _ = train(tmp_path, 6, schedule=schedule, save_strategy="epoch")
    assert whole.runner.phase.name == "all"  # type: ignore[union-attr]
    # 4 steps per epoch, a checkpoint at each epoch's end: mid-plateau (its
    # best value saved in the cursor), and in the fresh phase, mid-warmup,
    # after a rebuild and a fresh optimizer and scheduler.
    for step in (4, 16):
        _, resumed, _, _ = train(
            tmp_path / "resumed", 6, schedule=schedule, resume=tmp_path / f"checkpoint-{step}"
        )
        assert_same_run(whole, resumed)


def test_curriculum_trainer_trains_as_the_trainer_given_the_callbacks_optimizers(tmp_path):
    schedule = phased_schedule()
    _, plain, _, _ = train(tmp_path / "plain", 5, schedule=schedule, save_strategy="epoch")
    _, ours, trainer, _ = train(
        tmp_path / "ours", 5, schedule=schedule, curriculum_trainer=True, save_strategy="epoch"
    )
    assert isinstance(trainer, CurriculumTrainer) and trainer.curriculum_callback is ours
    assert ours.runner.phase.name == "all"  # type: ignore[union-attr]
    assert_same_run(plain, ours)
    # and it resumes from its own checkpoints (the run travels in optimizer.pt)
    _, resumed, _, _ = train(
        tmp_path / "resumed",
        5,
        schedule=schedule,
        curriculum_trainer=True,
        resume=tmp_path / "ours" / "checkpoint-12",
    )
    assert_same_run(ours, resumed)


def test_step_checkpoints_resume_exactly_also_at_an_epoch_end(tmp_path):
    # Logging, evaluation and saving on steps, two batches per optimizer step
    # (2 steps per epoch): checkpoint-6 is written at epoch 3's last step,
    # before the Trainer's epoch end, which the resumed run then applies.
    options = {
        "eval_strategy": "steps",
        "eval_steps": 2,
        "logging_strategy": "steps",
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": 3,
        "gradient_accumulation_steps": 2,
    }
    schedule = phased_schedule()
    _, whole, _, _ = train(tmp_path, 5, schedule=schedule, **options)
    for step in (3, 6):  # mid-epoch; at an epoch's last step
        _, resumed, _, _ = train(
            tmp_path / "resumed",
            5,
            schedule=schedule,
            resume=tmp_path / f"checkpoint-{step}",
            **options,
        )
        assert_same_run(whole, resumed)


def test_a_checkpoint_missing_the_epoch_end_metrics_the_schedule_needs_is_refused(tmp_path):
    # Evaluated per epoch but saved on steps: checkpoint-2 is written at epoch
    # 1's last step, before the epoch's evaluation, which the resumed Trainer
    # never runs; the plateau cannot decide that epoch end as the run did.
    options = {"save_strategy": "steps", "save_steps": 2, "gradient_accumulation_steps": 2}
    schedule = mf.Schedule(
        [
            mf.Phase("head", mf.freeze("bert"), until=mf.plateau("eval_loss", patience=5)),
            mf.Phase("all", mf.unfreeze("bert")),
        ]
    )
    train(tmp_path, 2, schedule=schedule, **options)
    with pytest.raises(
        ValueError, match=r"eval_strategy='epoch'.*'eval_loss'.*save_strategy='epoch'"
    ):
        train(
            tmp_path / "resumed", 2, schedule=schedule, resume=tmp_path / "checkpoint-2", **options
        )


# Frozen layers, the invariant, the Trainer's references -------------------------------------------


class InvariantProbe(TrainerCallback):
    """After every optimizer step and epoch end (after the curriculum's callback): the
    invariant, against one flat group with the same optimizer and scheduler stepped
    alongside; and the parameters at each phase's start."""

    def __init__(self, callback: CurriculumCallback) -> None:
        self.callback = callback
        self.checks = 0
        self.flat = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-2)
        self.flat_scheduler = linear_warmup(self.flat)
        self.at_phase: dict[str, dict[str, torch.Tensor]] = {}

    def check(self, model: nn.Module) -> None:
        from mentor_fn.testing import check_flags, check_lrs, check_partition

        curriculum = self.callback.curriculum
        assert curriculum.optimizer is not None
        check_flags(curriculum.state, model)
        check_partition(curriculum.optimizer, curriculum.state, model)
        check_lrs(curriculum, self.flat.param_groups[0])
        self.checks += 1

    def on_step_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any):
        name = self.callback.runner.phase.name  # type: ignore[union-attr]
        if name not in self.at_phase:
            self.at_phase[name] = {k: v.detach().clone() for k, v in model.named_parameters()}

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any):
        self.flat.step()  # no gradient: only keeps the scheduler's step order
        self.flat_scheduler.step()  # the Trainer stepped the scheduler before this event
        self.check(model)

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any):
        self.check(model)


def test_frozen_layers_never_move_and_the_invariant_holds_at_every_step(tmp_path):
    # AdamW with weight decay and gradient clipping: a frozen parameter that any
    # of them touched would move. The embeddings never train; the classifier
    # trains, then is frozen while the encoder goes on at decayed lrs.
    schedule = mf.Schedule(
        [
            mf.Phase("head", mf.freeze("bert"), until=mf.after_epochs(1)),
            mf.Phase(
                "encoder",
                mf.chain(
                    mf.unfreeze("bert.encoder"),
                    mf.freeze("classifier"),
                    mf.layerwise_lr_decay(0.5, groups=BLOCKS[1:3]),
                ),
                until=mf.after_steps(3),
                warmup_steps=2,
            ),
            mf.Phase("head again", mf.unfreeze("classifier")),
        ]
    )
    initial = {k: v.detach().clone() for k, v in tiny_bert().named_parameters()}
    model, callback, _, (probe,) = train(
        tmp_path,
        3,
        schedule=schedule,
        probes=lambda callback: [InvariantProbe(callback)],
        max_grad_norm=0.5,
        eval_strategy="no",
    )
    assert callback.runner.phase.name == "head again"  # type: ignore[union-attr]
    assert probe.checks == 3 * 4 + 3  # every step and every epoch end
    final = dict(model.named_parameters())
    embeddings = [name for name in final if name.startswith("bert.embeddings.")]
    assert embeddings
    for name in embeddings:
        assert torch.equal(final[name], initial[name]), name
        assert final[name].grad is None
    for name in ("classifier.weight", "classifier.bias"):
        before, after = probe.at_phase["encoder"][name], probe.at_phase["head again"][name]
        assert torch.equal(before, after), name  # frozen in between
        assert not torch.equal(after, final[name])  # and training again


class LoggedLrs(TrainerCallback):
    """What the Trainer logs as lrs, and the live groups' lrs at each step (read where the
    Trainer reads the lr it logs: after the optimizer step, before the scheduler's)."""

    def __init__(self, callback: CurriculumCallback) -> None:
        self.callback = callback
        self.logged: list[dict[str, float]] = []
        self.groups: list[list[dict[str, Any]]] = []

    def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
        self.first_optimizer = self.callback.curriculum.optimizer

    def on_optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        optimizer = self.callback.curriculum.optimizer
        assert optimizer is not None
        self.groups.append(
            [
                {
                    "lr": g["lr"],
                    "layers": g["layers"],
                    "trains": any(p.requires_grad for p in g["params"]),
                }
                for g in optimizer.param_groups
            ]
        )

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any):
        if logs and "learning_rate" in logs:
            self.logged.append({k: v for k, v in logs.items() if k.startswith("learning_rate")})


def test_the_trainer_reaches_the_new_optimizer_and_scheduler_after_a_fresh_phase(tmp_path):
    _, callback, trainer, (logged,) = train(
        tmp_path, 6, schedule=phased_schedule(), probes=lambda c: [LoggedLrs(c)]
    )
    curriculum = callback.curriculum
    assert curriculum.optimizer is not None
    assert callback.runner.phase.name == "all"  # type: ignore[union-attr]
    assert curriculum.optimizer is not logged.first_optimizer  # the fresh phase made new objects
    # accelerate's AcceleratedOptimizer wraps the handle, which reaches the live optimizer
    assert trainer.optimizer.optimizer is callback.optimizers()[0]
    assert trainer.optimizer.param_groups is curriculum.optimizer.param_groups
    assert trainer.optimizer.state is curriculum.optimizer.state
    # the scheduler handle reports the run's lr: the reference group's, last
    assert trainer.lr_scheduler.get_last_lr() == [curriculum.optimizer.param_groups[-1]["lr"]]


def test_the_run_lr_is_logged_as_learning_rate_and_each_layers_under_its_own_key(tmp_path):
    # A callback before the curriculum's sees what the Trainer itself logged;
    # one after it, and the Trainer's history, also the layers' keys.
    _, _, trainer, (after,) = train(
        tmp_path,
        6,
        schedule=phased_schedule(),
        probes=lambda c: [LoggedLrs(c)],
        logging_strategy="steps",
        logging_steps=1,
    )
    history = [
        {k: v for k, v in entry.items() if k.startswith("learning_rate")}
        for entry in trainer.state.log_history
        if "learning_rate" in entry
    ]
    assert history == after.logged and len(history) == len(after.groups) == 24
    decayed = 0
    for logs, groups in zip(after.logged, after.groups):
        reference = groups[-1]
        assert reference["layers"] == ()  # the reference group: the run's lr
        assert logs["learning_rate"] == reference["lr"]
        training = {layer: g["lr"] for g in groups if g["trains"] for layer in g["layers"]}
        rules = [key.removeprefix("learning_rate/") for key in logs if key != "learning_rate"]
        for rule in rules:
            # the layers whose nearest logged rule is this one train at its lr
            covered = [lr for layer, lr in training.items() if nearest(layer, rules) == rule]
            assert covered, (rule, logs, sorted(training))
            for lr in covered:
                assert lr == pytest.approx(logs[f"learning_rate/{rule}"], rel=1e-12)
        # and every other training layer at the run's lr
        for layer, lr in training.items():
            if nearest(layer, rules) is None:
                assert lr == pytest.approx(logs["learning_rate"], rel=1e-12), layer
        decayed += "learning_rate/bert.embeddings" in logs
    # the layer-wise decayed phase: the embeddings at 0.5**3 of the run's lr,
    # under their own key, while learning_rate stays the run's
    assert decayed > 0
    last = after.logged[-1]
    assert last["learning_rate/bert.embeddings"] == pytest.approx(last["learning_rate"] * 0.5**3)


def nearest(layer: str, rules: list[str]) -> str | None:
    """The longest rule that is ``layer`` or one of its ancestors."""
    matches = [rule for rule in rules if layer == rule or layer.startswith(f"{rule}.")]
    return max(matches, key=len, default=None)


def test_the_trainer_logs_the_run_lr_before_any_callback_sees_it(tmp_path):
    model = tiny_bert()
    callback = CurriculumCallback(
        mf.Curriculum(model, 1e-2), mf.Schedule([mf.Phase("decayed", LLRD)])
    )
    first = LoggedLrs(callback)
    arguments = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        per_device_train_batch_size=8,
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=Tokens(32, 1),
        optimizers=callback.optimizers(),
        callbacks=[first, callback],  # `first` is called before the curriculum's callback
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    assert len(first.logged) == 3
    for logs, groups in zip(first.logged, first.groups):
        # group 0 (the embeddings, at 0.5**3) is not what the Trainer logs
        assert groups[0]["lr"] != groups[-1]["lr"]
        assert logs == {"learning_rate": groups[-1]["lr"]}


LLRD = mf.layerwise_lr_decay(0.5, groups=BLOCKS)


def test_the_trainer_must_be_given_the_curriculum_optimizers(tmp_path):
    model = tiny_bert()
    callback = CurriculumCallback(mf.Curriculum(model, 1e-2))
    arguments = TrainingArguments(
        output_dir=str(tmp_path), max_steps=1, report_to="none", use_cpu=True, disable_tqdm=True
    )
    trainer = Trainer(model=model, args=arguments, train_dataset=Tokens(8, 1), callbacks=[callback])
    with pytest.raises(RuntimeError, match=r"optimizers=callback.optimizers\(\)"):
        trainer.train()


# Epoch ends, misuse, the Trainer's own settings ---------------------------------------------------


def epoch_schedule() -> mf.Schedule:
    return mf.Schedule(
        [
            mf.Phase("head", mf.freeze("bert"), until=mf.after_epochs(1)),
            mf.Phase(
                "top",
                mf.unfreeze(r"bert\.encoder\.layer\.1"),
                until=mf.after_epochs(1),
                warmup_steps=2,
            ),
            mf.Phase("all", mf.unfreeze("bert")),
        ]
    )


class StopAt(TrainerCallback):
    """Early stopping's way of ending training: control.should_training_stop."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            control.should_training_stop = True


@pytest.mark.parametrize("stop", ["max_steps", "should_training_stop"])
def test_a_stop_in_the_middle_of_an_epoch_is_not_an_epoch_end(tmp_path, stop):
    # 4 steps per epoch; stopped at step 6, in the middle of "top"'s epoch. The
    # Trainer still calls on_epoch_end and, with save_strategy="epoch", writes
    # checkpoint-6 right after: the resumed run must go on in "top".
    schedule = epoch_schedule()
    _, whole, _, _ = train(tmp_path / "whole", 3, schedule=schedule, eval_strategy="no")
    options: dict[str, Any] = {"max_steps": 6} if stop == "max_steps" else {}
    _, stopped, _, _ = train(
        tmp_path,
        3,
        schedule=schedule,
        eval_strategy="no",
        save_strategy="epoch",
        probes=lambda callback: [] if stop == "max_steps" else [StopAt(6)],
        **options,
    )
    runner = stopped.runner
    assert runner is not None and runner.phase is not None
    assert (runner.phase.name, runner.cursor.epochs, runner.cursor.steps) == ("top", 0, 2)
    assert sorted(path.name for path in tmp_path.glob("checkpoint-*")) == [
        "checkpoint-4",
        "checkpoint-6",
    ]
    _, resumed, _, _ = train(
        tmp_path / "resumed",
        3,
        schedule=schedule,
        eval_strategy="no",
        resume=tmp_path / "checkpoint-6",
    )
    assert_same_run(whole, resumed)


def test_handles_given_to_a_trainer_without_the_callback_refuse_to_step(tmp_path):
    model = tiny_bert()
    initial = {k: v.detach().clone() for k, v in model.named_parameters()}
    callback = CurriculumCallback(mf.Curriculum(model, 1e-2), epoch_schedule())
    arguments = TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, report_to="none", use_cpu=True, disable_tqdm=True
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=Tokens(16, 1),
        optimizers=callback.optimizers(),  # and no callbacks=[callback]
    )
    with pytest.raises(RuntimeError, match=r"callbacks=\[callback\]"):
        trainer.train()
    for name, value in model.named_parameters():
        assert torch.equal(value, initial[name]), name


def trainer_with(tmp_path: Path, **arguments: Any) -> Trainer:
    model = tiny_bert()
    callback = CurriculumCallback(mf.Curriculum(model, 1e-2), epoch_schedule())
    settings = {"output_dir": str(tmp_path), "report_to": "none", "use_cpu": True, **arguments}
    return Trainer(
        model=model,
        args=TrainingArguments(**settings),
        train_dataset=Tokens(16, 1),
        optimizers=callback.optimizers(),
        callbacks=[callback],
    )


def test_the_trainers_own_optimizer_settings_are_named_when_they_would_be_ignored(tmp_path):
    with pytest.warns(UserWarning, match="CurriculumCallback") as caught:
        trainer_with(
            tmp_path,
            learning_rate=1e-3,
            weight_decay=0.1,
            lr_scheduler_type="cosine",
            warmup_steps=3,
        )
    (message,) = [str(w.message) for w in caught if "CurriculumCallback" in str(w.message)]
    for setting in ("learning_rate=0.001", "weight_decay=0.1", "'cosine'", "warmup_steps=3"):
        assert setting in message
    assert "scheduler factory" in message and "Adam, lr 0.01" in message
    with warnings.catch_warnings(record=True) as defaults:
        warnings.simplefilter("always")
        trainer_with(tmp_path, max_grad_norm=0.5, num_train_epochs=2)  # not optimizer settings
    assert not [w for w in defaults if "CurriculumCallback" in str(w.message)]


def test_a_model_sharded_at_load_time_with_tensor_parallelism_is_refused(tmp_path):
    from transformers.distributed import DistributedConfig

    model = tiny_bert()
    # what from_pretrained(..., distributed_config=...) records on the model
    model.config.distributed_config = DistributedConfig(tp_size=2, fsdp_size=1)
    callback = CurriculumCallback(mf.Curriculum(model, 1e-2), epoch_schedule())
    arguments = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match=r"DistributedConfig\(tp_size=2\).*fsdp_size"):
        Trainer(
            model=model,
            args=arguments,
            train_dataset=Tokens(16, 1),
            optimizers=callback.optimizers(),
            callbacks=[callback],
        )


def test_checkpoints_of_a_model_sharded_at_load_time_are_refused(tmp_path):
    # The Trainer saves no optimizer state for such a model (it refuses unless
    # save_only_model=True), and its resume fails loading the saved weights into
    # the DTensor model (measured in a 2-process world): the run could not resume.
    from transformers.distributed import DistributedConfig

    model = tiny_bert()
    # what from_pretrained(..., distributed_config=...) records on the model
    model.config.distributed_config = DistributedConfig(fsdp_size=2)
    callback = CurriculumCallback(mf.Curriculum(model, 1e-2), epoch_schedule())
    for save, refused in (("steps", True), ("no", False)):
        arguments = TrainingArguments(
            output_dir=str(tmp_path),
            report_to="none",
            use_cpu=True,
            save_strategy=save,
            save_only_model=True,
        )

        build = functools.partial(
            Trainer,
            model=model,
            args=arguments,
            train_dataset=Tokens(16, 1),
            optimizers=callback.optimizers(),
            callbacks=[callback],
        )
        if refused:
            with pytest.raises(ValueError, match=r"fsdp_size=2.*cannot be resumed") as error:
                build()
            assert "save_strategy='no'" in str(error.value)
            assert "save_distributed_checkpoint" in str(error.value)
        else:
            build()


ZERO2 = {"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {"stage": 2}}


def test_deepspeed_under_the_plain_trainer_is_refused_naming_curriculum_trainer(
    tmp_path, monkeypatch
):
    pytest.importorskip("deepspeed")
    # accelerate records the plugin in the environment: keep it to this test
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    # the Trainer would build its own optimizer over every parameter, silently
    with pytest.raises(ValueError, match=r"under DeepSpeed .* #38753.*CurriculumTrainer"):
        trainer_with(tmp_path, deepspeed=ZERO2)


def curriculum_trainer_with(tmp_path: Path, **arguments: Any) -> CurriculumTrainer:
    model = tiny_bert()
    callback = CurriculumCallback(mf.Curriculum(model, 1e-2), epoch_schedule())
    settings = {"output_dir": str(tmp_path), "report_to": "none", "use_cpu": True, **arguments}
    return CurriculumTrainer(
        model=model,
        args=TrainingArguments(**settings),
        train_dataset=Tokens(16, 1),
        callbacks=[callback],
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # "auto" values are the Trainer's to fill: it would build an optimizer
        # (and a scheduler) of its own for DeepSpeed from TrainingArguments
        ({"optimizer": {"type": "AdamW", "params": {"lr": "auto"}}}, "'optimizer' section"),
        ({"scheduler": {"type": "WarmupLR", "params": {"warmup_max_lr": "auto"}}}, "'scheduler'"),
        (
            {"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}},
            "offload_param",
        ),
        ({"zero_optimization": {"stage": 0}}, "zero_optimization.stage is 0"),
    ],
)
def test_deepspeed_configurations_that_cannot_work_are_refused_when_the_trainer_is_built(
    tmp_path, monkeypatch, change, expected
):
    pytest.importorskip("deepspeed")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    with pytest.raises(ValueError, match="CurriculumCallback: DeepSpeed config") as error:
        curriculum_trainer_with(tmp_path, deepspeed={**ZERO2, **change})
    assert expected in str(error.value)


def test_curriculum_trainer_refuses_what_would_replace_the_curriculums_optimizers(tmp_path):
    model = tiny_bert()
    callback = CurriculumCallback(mf.Curriculum(model, 1e-2), epoch_schedule())
    arguments = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="leave optimizers= and optimizer_cls_and_kwargs= out"):
        CurriculumTrainer(
            model=model, args=arguments, callbacks=[callback], optimizers=callback.optimizers()
        )
    with pytest.raises(ValueError, match="exactly one CurriculumCallback"):
        CurriculumTrainer(model=model, args=arguments)
    # accelerate's FSDP: the Trainer refuses it in one process before the callback
    # sees it; under torchrun the callback's refusal reads the same arguments
    from mentor_fn.integrations._trainer_arguments import unsupported_configuration

    fsdp = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, fsdp="full_shard")
    assert "accelerate's FSDP" in unsupported_configuration(fsdp, model)
    assert "DistributedConfig(fsdp_size=...)" in unsupported_configuration(fsdp, model)


# The handles on their own ---------------------------------------------------------------------------


def small_run(schedule: mf.Schedule | None = None) -> tuple[nn.Module, CurriculumCallback]:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    curriculum = mf.Curriculum(
        model, 0.1, scheduler=lambda o: lr_scheduler.StepLR(o, 1, 0.5), state=None
    )
    return model, CurriculumCallback(curriculum, schedule)


def test_the_handles_follow_every_new_optimizer_and_keep_their_step_hooks():
    model, callback = small_run()
    optimizer, scheduler = callback.optimizers()
    callback._run.attach()  # what the callback does at on_train_begin
    calls: list[str] = []
    optimizer.register_step_post_hook(lambda *args: calls.append("post"))
    curriculum = callback.curriculum
    curriculum.freeze("0")
    curriculum.build()  # a fresh phase: new optimizer and scheduler objects
    assert optimizer.param_groups is curriculum.optimizer.param_groups  # type: ignore[union-attr]
    model(torch.randn(2, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    assert calls == ["post"]
    assert curriculum.scheduler.get_last_lr() == [0.05, 0.05]  # the layer's group, the reference
    assert scheduler.get_last_lr() == [0.05]  # the run's lr: what the Trainer logs
    assert scheduler.last_epoch == 1


def test_the_handles_refuse_what_they_cannot_do():
    model, callback = small_run()
    optimizer, scheduler = callback.optimizers()
    with pytest.raises(TypeError, match="derives the param groups"):
        optimizer.add_param_group({"params": [nn.Parameter(torch.zeros(1))]})
    plain = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match="saved without the curriculum callback"):
        optimizer.load_state_dict(plain.state_dict())
    with pytest.raises(ValueError, match="run without the curriculum callback"):
        scheduler.load_state_dict(lr_scheduler.StepLR(plain, 1).state_dict())
    _, unbuilt = small_run()
    with pytest.raises(RuntimeError, match="no optimizer yet"):
        unbuilt._run.optimizer.zero_grad()


def test_a_run_saved_with_a_schedule_does_not_load_into_one_without():
    _, scheduled = small_run(mf.Schedule([mf.Phase("head", mf.freeze("0"))]))
    _, plain = small_run()
    saved = scheduled.optimizers()[0].state_dict()
    with pytest.raises(ValueError, match="saved with a schedule and this run has none"):
        plain.optimizers()[0].load_state_dict(saved)
