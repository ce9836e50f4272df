"""Public names have one import path, ``mentor_fn.X``, whatever the private layout.

Pickles and saved class paths name no private module, so they survive moves of
the layers; files written before the package moved into its layers still load.
"""

from __future__ import annotations

import pickle
import re
import types
from pathlib import Path

import torch
from torch import nn

import mentor_fn as mf
import mentor_fn.integrations
import mentor_fn.testing

DATA = Path(__file__).parent / "data"
PRIVATE_PATH = re.compile(rb"mentor_fn\._\w+")


def test_every_public_class_and_function_names_the_package_as_its_module():
    elsewhere = []
    for name in mf.__all__:
        value = getattr(mf, name)
        # A generic alias (Transition) is no class, though Python 3.10 says it is one.
        is_class = isinstance(value, type) and not isinstance(value, types.GenericAlias)
        is_class_or_function = is_class or hasattr(value, "__code__")
        if is_class_or_function and value.__module__ != "mentor_fn":
            elsewhere.append(f"{name}: {value.__module__}")
    assert elsewhere == []
    for name in mentor_fn.testing.__all__:
        value = getattr(mentor_fn.testing, name)
        if isinstance(value, type) or hasattr(value, "__code__"):
            assert value.__module__.startswith("mentor_fn.testing"), name


def every_kind_schedule() -> mf.Schedule:
    return mf.Schedule(
        [
            mf.Phase(
                "head",
                mf.chain(
                    mf.freeze("body"),
                    mf.set_lr_coefficient(0.5, "head"),
                    mf.set_norm_policy("eval"),
                ),
                until=mf.any_of(
                    mf.after_epochs(2), mf.all_of(mf.after_steps(3), mf.plateau("val_loss"))
                ),
            ),
            mf.Phase(
                "all",
                mf.chain(
                    mf.unfreeze("body"), mf.layerwise_lr_decay(0.5), mf.layerwise_lr_spread(0.1)
                ),
                warmup_steps=2,
            ),
        ]
    )


def test_pickles_of_public_values_name_no_private_module():
    model = nn.Sequential()
    model.add_module("body", nn.Linear(2, 2))
    model.add_module("head", nn.Linear(2, 1))
    state = mf.CurriculumState.from_model(model).freeze("body").set_lr_coefficient(0.1, "head")
    schedule = every_kind_schedule()
    values = [
        state,
        schedule,
        schedule.start(),
        *schedule.phases,
        mf.freeze("body"),
        mf.lp_ft("head", probe_epochs=1),
    ]
    for value in values:
        data = pickle.dumps(value)
        assert PRIVATE_PATH.findall(data) == [], value
        assert pickle.loads(data) == value


def test_a_checkpoint_written_before_the_layers_moved_still_resumes(tmp_path, one_torch_thread):
    """``digits_cnn_before_layout.ckpt`` was written by the flat layout (commit 95211a1):
    the demo's DigitsCNN, saved as ``mentor_fn._demo_model.DigitsCNN`` after two epochs
    of ``lp_ft("head", probe_epochs=1)`` on random 8x8 images."""
    from mentor_fn._app.demo.model import DigitsCNN

    path = DATA / "digits_cnn_before_layout.ckpt"
    contents = mf.load_checkpoint(path)
    assert contents["model_class"] == "mentor_fn._demo_model.DigitsCNN"

    model = mf.Mentee.resume(path)
    assert type(model) is DigitsCNN
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, contents["model"][name]), name

    model, optimizer, scheduler = mf.Mentee.resume_training(path)
    assert type(model) is DigitsCNN and optimizer is model.optimizer
    assert scheduler is model.lr_scheduler
    images = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(8) % 10
    before = model.head.weight.detach().clone()
    model.fit([(images, labels)], [(images, labels)], epochs=1)
    assert not torch.equal(model.head.weight, before)  # the resumed run trains on
    model.save(tmp_path / "after.ckpt")
    assert (
        mf.load_checkpoint(tmp_path / "after.ckpt")["model_class"]
        == "mentor_fn._app.demo.model.DigitsCNN"
    )
