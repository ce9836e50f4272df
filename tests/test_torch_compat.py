"""What differs between torch versions is read from wherever this torch keeps it."""

from __future__ import annotations

import sys
import types

import pytest
import torch

import mentor_fn as mf
from mentor_fn._core.torch_compat import is_dtensor


class FakeDTensor(torch.Tensor):
    """Stands in for DTensor: a tensor subclass of a module found by name."""


def test_a_plain_tensor_is_no_dtensor():
    assert not is_dtensor(torch.zeros(2))


@pytest.mark.parametrize("home", ["torch.distributed.tensor", "torch.distributed._tensor"])
def test_dtensor_is_found_where_this_torch_keeps_it(home, monkeypatch):
    """torch 2.5+ keeps DTensor in torch.distributed.tensor, torch 2.4 in ._tensor."""
    for name in ("torch.distributed.tensor", "torch.distributed._tensor"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, home, types.SimpleNamespace(DTensor=FakeDTensor))
    assert is_dtensor(torch.zeros(2).as_subclass(FakeDTensor))
    assert not is_dtensor(torch.zeros(2))


def test_torch_24s_package_without_dtensor_is_not_read_as_one(monkeypatch):
    """torch 2.4's torch.distributed.tensor holds no DTensor: the check looks further
    instead of failing with an AttributeError."""
    monkeypatch.setitem(sys.modules, "torch.distributed.tensor", types.ModuleType("empty"))
    monkeypatch.setitem(
        sys.modules, "torch.distributed._tensor", types.SimpleNamespace(DTensor=FakeDTensor)
    )
    assert is_dtensor(torch.zeros(2).as_subclass(FakeDTensor))
    monkeypatch.delitem(sys.modules, "torch.distributed._tensor")
    assert not is_dtensor(torch.zeros(2).as_subclass(FakeDTensor))


def test_reading_torch_mentor_files_is_refused_up_front_on_an_older_torch(monkeypatch, tmp_path):
    """Below the torch measured to read them, the refusal names the version and the way
    out, before the file is even opened (a missing file gets the same refusal)."""
    from mentor_fn._files import torch_mentor_file

    monkeypatch.setattr(torch_mentor_file, "TORCH_RELEASE", (2, 5))
    with pytest.raises(mf.CheckpointError, match=r"needs torch 2\.13 or newer .*Convert it with"):
        mf.convert_torch_mentor_checkpoint(tmp_path / "never_opened.pt", tmp_path / "new.ckpt")
    assert list(tmp_path.iterdir()) == []
