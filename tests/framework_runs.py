"""Helpers shared by the framework adapters' tests (Lightning, transformers) and their
workers; importing this module changes nothing (no warning filters, no framework)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset


def assert_same_run(first: Any, second: Any) -> None:
    """Two adapters' callbacks hold the same run: parameters, optimizer state and
    layout, scheduler state and cursor, bit for bit."""
    one, two = first.curriculum, second.curriculum
    assert one is not None and two is not None
    for (name, value), other in zip(one.model.named_parameters(), two.model.parameters()):
        assert torch.equal(value, other), name
    saved, resumed = one.optimizer.state_dict(), two.optimizer.state_dict()
    assert saved["param_groups"] == resumed["param_groups"]
    assert saved["state"].keys() == resumed["state"].keys()
    for index, values in saved["state"].items():
        for key, value in values.items():
            assert torch.equal(value, resumed["state"][index][key]), (index, key)
    assert one.scheduler.state_dict() == two.scheduler.state_dict()
    assert first.runner.cursor == second.runner.cursor
    assert one.state == two.state


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
