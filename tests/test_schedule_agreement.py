"""A schedule's state and the curriculum's agree as a whole, or a resume is refused.

``ScheduleRunner.load_state_dict``, ``check_state``, ``moved_to``, a saved
file's schedule and ``Mentee.fit``'s refusal of hand changes all compare the
whole :class:`CurriculumState`: each layer's frozen flag and coefficient, the
norm policy, and the layer kinds. A difference in any one field is named.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mentor_fn as mf
from mentor_fn import CurriculumState
from mentor_fn._schedules.saved_schedule import check_agreement

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYERS = ("body", "body.0", "body.1", "head")
BASE = CurriculumState(LAYERS, parameter_owners=LAYERS[1:], norm_layers=["body.1"])
PHASE = mf.Phase("only", mf.freeze("body"))

# One state differing from BASE in exactly one field, for every field but the
# layers (another model: check_same_layers refuses it before any comparison).
ONE_FIELD_CHANGED = {
    "frozen": (BASE.freeze("head"), "'head': the schedule has frozen=False"),
    "coefficients": (
        BASE.set_lr_coefficient(0.5, "body.0"),
        "coefficient=1, the curriculum frozen=False coefficient=0.5",
    ),
    "norm_policy": (
        BASE.set_norm_policy("eval"),
        "the norm policy: the schedule has 'stats', the curriculum 'eval'",
    ),
    "parameter_owners": (
        BASE.with_layer_kinds(parameter_owners=LAYERS, norm_layers=["body.1"]),
        "parameter_owners",
    ),
    "norm_layers": (BASE.with_layer_kinds(parameter_owners=LAYERS[1:]), "norm_layers"),
}


def test_every_field_of_the_state_is_compared():
    fields = set(BASE.to_dict()) - {"format", "version", "layers"}
    assert set(ONE_FIELD_CHANGED) == fields  # a new field needs its case here
    check_agreement(BASE, CurriculumState.from_dict(BASE.to_dict()), PHASE)
    for field, (changed, message) in ONE_FIELD_CHANGED.items():
        assert changed != BASE, field
        with pytest.raises(ValueError, match="is not the schedule's state") as raised:
            check_agreement(BASE, changed, PHASE)
        assert message in str(raised.value), field


def model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


SCHEDULE = mf.Schedule(
    [
        mf.Phase("stats", mf.freeze("0|1"), until=mf.after_steps(1)),
        mf.Phase("eval", mf.set_norm_policy("eval")),  # the only change: the norm policy
    ]
)


def test_a_runner_saved_one_step_after_the_curriculum_is_refused(tmp_path):
    network = model()
    curriculum = mf.Curriculum(network, 0.01)
    runner = mf.ScheduleRunner(curriculum, SCHEDULE)
    runner.start()
    curriculum.build()
    curriculum_saved = curriculum.state_dict()  # in phase "stats"
    network(torch.randn(8, 3)).sum().backward()
    curriculum.optimizer.step()
    runner.step()
    assert runner.phase.name == "eval" and curriculum.state.norm_policy == "eval"
    runner_saved = runner.state_dict()  # one step later, in phase "eval"

    resumed_model = model()
    resumed_model.load_state_dict(network.state_dict())
    resumed = mf.Curriculum(resumed_model, 0.01)
    resumed.load_state_dict(curriculum_saved)
    resumed_runner = mf.ScheduleRunner(resumed, SCHEDULE)
    with pytest.raises(
        ValueError, match=r"the norm policy differs.*'eval', the curriculum 'stats'"
    ):
        resumed_runner.load_state_dict(runner_saved)
    assert resumed_runner.cursor is None and resumed.state.norm_policy == "stats"
    # The statistics of the frozen BatchNorm keep updating, as "stats" says:
    # nothing was passed off as the "eval" phase.
    before = resumed_model[1].running_mean.clone()
    resumed_model.train()
    resumed_model(torch.randn(8, 3))
    assert not torch.equal(resumed_model[1].running_mean, before)


def test_check_state_and_moved_to_compare_the_norm_policy():
    curriculum = mf.Curriculum(model(), 0.01)
    runner = mf.ScheduleRunner(curriculum, SCHEDULE)
    runner.start()
    curriculum.build()
    curriculum.update(curriculum.state.set_norm_policy("train"), reset_optimizer_if_needed=True)
    with pytest.raises(ValueError, match="the norm policy differs"):
        runner.check_state()
    other = mf.Curriculum(curriculum.model, 0.01, state=curriculum.state)
    with pytest.raises(ValueError, match="the norm policy differs"):
        runner.moved_to(other)


class Net(mf.Mentee):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        self.head = nn.Linear(4, 2)
        self.trainer = mf.Classifier()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_fit_refuses_a_norm_policy_changed_by_hand():
    data = [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))]
    schedule = mf.Schedule(
        [
            mf.Phase("head", mf.freeze("body"), until=mf.after_epochs(1)),
            mf.Phase("all", mf.unfreeze("body")),
        ]
    )
    net = Net()
    net.fit(data, epochs=1, schedule=schedule, progress=False)
    net.curriculum.update(net.curriculum_state.set_norm_policy("eval"))
    with pytest.raises(ValueError, match="the norm policy differs"):
        net.fit(data, epochs=1, progress=False)
    assert net.epoch == 1
