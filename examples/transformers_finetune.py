"""transformers: a curriculum schedule in the Trainer (pip install 'mentor_fn[transformers]').

A tiny BERT built from a config (with a real checkpoint:
``BertForSequenceClassification.from_pretrained(...)``) is fine-tuned in
three phases: the classifier alone; the top encoder layer, warming up, until
the evaluation loss stops improving; then everything with layer-wise lr decay.
Halfway, training resumes from the Trainer's own checkpoint.
"""

import tempfile

import torch
from torch.utils.data import Dataset
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainingArguments,
    get_linear_schedule_with_warmup,
)

import mentor_fn as mf
from mentor_fn.integrations.transformers import CurriculumCallback

torch.set_num_threads(1)  # a tiny model: more threads only wait on each other


class Tokens(Dataset):
    """Sequences of 8 tokens; the label says whether token 7 appears in them."""

    def __init__(self, size, seed):
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 32, (size, 8), generator=generator)
        self.labels = (self.ids == 7).any(dim=1).long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        return {"input_ids": self.ids[index], "labels": self.labels[index]}


schedule = mf.Schedule(
    [
        mf.Phase("classifier", mf.freeze("bert"), until=mf.after_epochs(1)),
        mf.Phase(
            "top layer",
            mf.unfreeze([r"bert\.encoder\.layer\.1", "bert.pooler"]),
            until=mf.any_of(mf.plateau("eval_loss", patience=1), mf.after_epochs(3)),
            warmup_steps=8,
        ),
        mf.Phase(
            "all",
            mf.chain(
                mf.unfreeze("bert"),
                # one rank per block, lowest first: embeddings, each encoder layer, classifier
                mf.layerwise_lr_decay(
                    0.5,
                    groups=[
                        r"bert\.embeddings",
                        r"bert\.encoder\.layer\.0",
                        r"bert\.encoder\.layer\.1",
                        "classifier",
                    ],
                ),
            ),
        ),
    ]
)


def run(folder, epochs):
    """A Trainer whose optimizer and scheduler are a curriculum's, driven by the schedule."""
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=32,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=2,
    )
    model = BertForSequenceClassification(config)
    curriculum = mf.Curriculum(
        model,
        lr=3e-3,
        optimizer=torch.optim.AdamW,
        optimizer_kwargs={"weight_decay": 0.01},
        scheduler=lambda optimizer: get_linear_schedule_with_warmup(optimizer, 4, 96),
    )
    callback = CurriculumCallback(curriculum, schedule)
    arguments = TrainingArguments(
        output_dir=folder,
        num_train_epochs=epochs,
        per_device_train_batch_size=32,
        eval_strategy="epoch",
        logging_strategy="epoch",
        save_strategy="epoch",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=Tokens(256, seed=1),
        eval_dataset=Tokens(64, seed=2),
        optimizers=callback.optimizers(),  # the curriculum's, as handles
        callbacks=[callback],
    )
    return trainer, callback


with tempfile.TemporaryDirectory() as folder:
    trainer, callback = run(folder, epochs=3)
    trainer.train()
    print(f"after epoch 3: phase {callback.runner.phase.name!r}")

    # A new Trainer resumes from the last checkpoint in the folder: optimizer.pt
    # holds the curriculum (layout, optimizer state by parameter name,
    # scheduler) and the schedule's cursor.
    trainer, callback = run(folder, epochs=6)
    trainer.train(resume_from_checkpoint=True)
    loss = trainer.state.log_history[-2]["eval_loss"]
    print(f"after epoch 6: phase {callback.runner.phase.name!r}, eval_loss {loss:.3f}")
