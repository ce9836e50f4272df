"""mentor_fn.integrations.transformers: a curriculum run through the transformers Trainer.

Real Trainers (accelerate underneath) on a tiny BERT built from a config:
resume from the Trainer's checkpoints equals the uninterrupted run bit for
bit, frozen layers never move, the invariant holds at every step, and the
Trainer's references reach the curriculum's current optimizer through every
phase change. Also the optimizer and scheduler handles on their own.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler
from torch.utils.data import Dataset

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from framework_runs import assert_same_run
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
from mentor_fn.integrations.transformers import CurriculumCallback

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


class Tokens(Dataset):
    """Random token sequences; the label says whether the first token is in the top half."""

    def __init__(self, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 50, (size, 8), generator=generator)
        self.labels = (self.ids[:, 0] >= 25).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.ids[index],
            "attention_mask": torch.ones(8, dtype=torch.long),
            "labels": self.labels[index],
        }


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
                    mf.layerwise_lr_decay(
                        0.5,
                        patterns=[r"bert\.embeddings", r"bert\.encoder\.layer\.\d", "classifier"],
                    ),
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
    **arguments: Any,
) -> tuple[BertForSequenceClassification, CurriculumCallback, Trainer, list[TrainerCallback]]:
    """Train the tiny BERT (4 batches of 8 per epoch) with ``schedule``; ``probes`` run
    after the curriculum's callback."""
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
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**settings),
        train_dataset=Tokens(32, 1),
        eval_dataset=Tokens(8, 2),
        optimizers=callback.optimizers(),
        callbacks=[callback, *extra],
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
    with pytest.raises(ImportError, match=r"pip install 'mentor_fn\[transformers\]'"):
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
                    mf.layerwise_lr_decay(0.5, patterns=r"bert\.encoder\.layer\.\d"),
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


def test_the_trainer_reaches_the_new_optimizer_and_scheduler_after_a_fresh_phase(tmp_path):
    class Logged(TrainerCallback):
        def __init__(self, callback: CurriculumCallback) -> None:
            self.callback = callback
            self.learning_rates: list[tuple[float, float]] = []

        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            self.first_optimizer = self.callback.curriculum.optimizer

        def on_optimizer_step(self, *args: Any, **kwargs: Any) -> None:
            # The Trainer reads the lr it logs here: after the step, before the scheduler's.
            self.stepped_with = self.callback.curriculum.optimizer.param_groups[0]["lr"]  # type: ignore[union-attr]

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any):
            if logs and "learning_rate" in logs:
                self.learning_rates.append((logs["learning_rate"], self.stepped_with))

    _, callback, trainer, (logged,) = train(
        tmp_path, 6, schedule=phased_schedule(), probes=lambda c: [Logged(c)]
    )
    curriculum = callback.curriculum
    assert curriculum.optimizer is not None
    assert callback.runner.phase.name == "all"  # type: ignore[union-attr]
    assert curriculum.optimizer is not logged.first_optimizer  # the fresh phase made new objects
    # accelerate's AcceleratedOptimizer wraps the handle, which reaches the live optimizer
    assert trainer.optimizer.optimizer is callback.optimizers()[0]
    assert trainer.optimizer.param_groups is curriculum.optimizer.param_groups
    assert trainer.optimizer.state is curriculum.optimizer.state
    assert trainer.lr_scheduler.get_last_lr() == curriculum.scheduler.get_last_lr()
    # the lr the Trainer logged was the live first group's (through the scheduler handle)
    assert logged.learning_rates and all(a == b for a, b in logged.learning_rates)


def test_the_trainer_must_be_given_the_curriculum_optimizers(tmp_path):
    model = tiny_bert()
    callback = CurriculumCallback(mf.Curriculum(model, 1e-2))
    arguments = TrainingArguments(
        output_dir=str(tmp_path), max_steps=1, report_to="none", use_cpu=True, disable_tqdm=True
    )
    trainer = Trainer(model=model, args=arguments, train_dataset=Tokens(8, 1), callbacks=[callback])
    with pytest.raises(RuntimeError, match=r"optimizers=callback.optimizers\(\)"):
        trainer.train()


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
    assert scheduler.get_last_lr() == curriculum.scheduler.get_last_lr() == [0.05, 0.05]
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
