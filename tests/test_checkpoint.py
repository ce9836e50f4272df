"""Checkpoint files: atomic writes, plain contents, safe loading, clear errors.

Every file here is real (written to ``tmp_path`` by torch or by hand); nothing
of torch is mocked. The spies on ``os.fsync`` / ``os.replace`` call through.
"""

from __future__ import annotations

import builtins
import errno
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import mentor_fn
from mentor_fn import CheckpointError, Classifier, Mentee, load_checkpoint, save_checkpoint
from mentor_fn._files.atomic_write import wait_for_background_removals
from mentor_fn._files.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION

# Models (module level, so Mentee's registry finds them by qualified name) -------


class SmallNet(Mentee):
    def __init__(self, hidden: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Linear(4, hidden)
        self.head = nn.Linear(hidden, classes)
        self.trainer = Classifier()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).relu())


class OtherLayersNet(Mentee):
    """Same constructor as SmallNet, other layers: ``head`` is gone, ``neck``/``out`` are new."""

    def __init__(self, hidden: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Linear(4, hidden)
        self.neck = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, classes)
        self.trainer = Classifier()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.neck(self.body(x).relu()).relu())


class WiderNet(Mentee):
    """Same layer names as SmallNet, other shapes."""

    def __init__(self, hidden: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Linear(4, hidden + 1)
        self.head = nn.Linear(hidden + 1, classes)
        self.trainer = Classifier()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).relu())


class NoBiasNet(Mentee):
    """Same layer names and weight shapes as SmallNet, but ``body`` has no bias."""

    def __init__(self, hidden: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Linear(4, hidden, bias=False)
        self.head = nn.Linear(hidden, classes)
        self.trainer = Classifier()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).relu())


def dataset(size: int = 48, seed: int = 1) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(size, 4, generator=generator)
    return TensorDataset(inputs, (inputs[:, 0] > 0).long() + (inputs[:, 1] > 1).long())


def trained(epochs: int = 2, hidden: int = 8) -> SmallNet:
    model = SmallNet(hidden=hidden)
    model.create_train_objects(lr=0.01, step_size=1, gamma=0.5)
    model.fit(dataset(), dataset(seed=2), epochs=epochs, batch_size=16, progress=False)
    return model


def weights_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def folder_listing(folder: Path) -> list[str]:
    """The folder's files, once replaced checkpoints are removed (in the background)."""
    wait_for_background_removals()
    return sorted(entry.name for entry in folder.iterdir())


# What a saved file holds -------------------------------------------------------


def test_saved_file_is_plain_data_with_the_expected_keys(tmp_path):
    model = trained(epochs=3)
    path = tmp_path / "run.ckpt"
    model.save(path)

    assert folder_listing(tmp_path) == ["run.ckpt"]  # one file, no temp left
    contents = torch.load(path, weights_only=True)  # torch itself, no mentor_fn code

    assert contents["format"] == CHECKPOINT_FORMAT == "mentor_fn.checkpoint"
    assert contents["version"] == CHECKPOINT_VERSION == 1
    assert {"model", "curriculum", "history", "best", "best_weights", "epoch"} <= set(contents)
    assert contents["model_class"].endswith("SmallNet")
    # What SmallNet.__init__ received: hidden=8 passed, classes=3 by default.
    assert contents["constructor"] == {"args": [], "kwargs": {"hidden": 8, "classes": 3}}
    assert contents["epoch"] == 3

    # Weights, exactly.
    assert contents["model"].keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(contents["model"][name], tensor)

    # Curriculum: state, recipe, optimizer state keyed by parameter *name*.
    curriculum = contents["curriculum"]
    assert curriculum["state"]["layers"] == ["body", "head"]
    assert curriculum["recipe"]["optimizer"] == "torch.optim.adam.Adam"
    assert curriculum["recipe"]["lr"] == 0.01
    optimizer_state = curriculum["optimizer"]["state"]
    names = {"body.weight", "body.bias", "head.weight", "head.bias"}
    assert set(optimizer_state) == names
    live = {name: model.optimizer.state[p] for name, p in model.named_parameters()}
    for name in names:
        assert set(optimizer_state[name]) >= {"step", "exp_avg", "exp_avg_sq"}
        assert torch.equal(optimizer_state[name]["exp_avg"], live[name]["exp_avg"])
        assert torch.equal(optimizer_state[name]["exp_avg_sq"], live[name]["exp_avg_sq"])
    grouped = [
        name for group in curriculum["optimizer"]["param_groups"] for name in group["params"]
    ]
    assert sorted(grouped) == sorted(names)
    assert all(isinstance(name, str) for name in grouped)

    # Scheduler: StepLR(step_size=1) stepped once per epoch.
    assert curriculum["scheduler"]["last_epoch"] == 3
    assert contents["scheduler_recipe"]["kwargs"] == {"step_size": 1, "gamma": 0.5}

    # History: one record per epoch, with metrics and per-layer lrs.
    history = contents["history"]
    assert [record["epoch"] for record in history] == [1, 2, 3]
    assert history == model.history
    assert history[2]["lr"] == {"body": pytest.approx(0.0025), "head": pytest.approx(0.0025)}
    assert {"loss", "accuracy"} <= set(history[0]["train"]) and "accuracy" in history[0]["val"]

    # Best epoch and its weights.
    assert contents["best"] == model.best
    assert contents["best"]["metric"] == "accuracy"
    assert contents["best_weights"].keys() == model.state_dict().keys()
    assert all(isinstance(t, torch.Tensor) for t in contents["best_weights"].values())


def test_frozen_layers_and_coefficients_are_saved_and_restored(tmp_path):
    model = SmallNet().freeze("body").set_lr_coefficient(0.5, "head")
    model.create_train_objects(lr=0.1, step_size=1, gamma=0.5)
    body_before = model.body.weight.detach().clone()
    model.fit(dataset(), epochs=1, batch_size=16, progress=False)
    assert torch.equal(model.body.weight, body_before)
    path = tmp_path / "frozen.ckpt"
    model.save(path)

    state = torch.load(path, weights_only=True)["curriculum"]["state"]
    assert dict(state["frozen"]) == {"body": True}
    assert dict(state["coefficients"]) == {"head": 0.5}

    restored = Mentee.resume(path)
    assert restored._frozen_modules == frozenset({"body"})
    assert dict(restored._lr_coefficients) == {"head": 0.5}
    assert not restored.body.weight.requires_grad and restored.head.weight.requires_grad
    assert restored.optimizer is None

    resumed, optimizer, scheduler = SmallNet.resume_training(path)
    trainable = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(resumed.body.weight) not in trainable and id(resumed.head.weight) in trainable
    head_group = next(g for g in optimizer.param_groups if "head" in g["layers"])
    assert head_group["lr"] == pytest.approx(0.1 * 0.5 * 0.5)  # lr x coefficient x one StepLR step
    assert scheduler.last_epoch == 1


# Resume ----------------------------------------------------------------------------


def test_resume_rebuilds_the_model_through_the_registry(tmp_path):
    model = trained(epochs=2, hidden=6)
    path = tmp_path / "model.ckpt"
    model.save(path)

    for restored in (Mentee.resume(path), SmallNet.resume(str(path))):
        assert type(restored) is SmallNet
        assert restored.body.out_features == 6  # constructor arguments recorded and replayed
        assert weights_equal(restored, model)
        assert restored.epoch == 2 and restored.history == model.history
        assert restored.best == model.best
        assert restored.curriculum_state == model.curriculum_state
        assert restored.optimizer is None and restored.lr_scheduler is None
        best = restored.load_best_weights().state_dict()
        assert all(torch.equal(best[k], v) for k, v in model._mentee_best_weights.items())


def test_resume_training_restores_optimizer_by_name_and_continues_bit_for_bit(tmp_path):
    path = tmp_path / "run.ckpt"
    torch.manual_seed(3)
    model = SmallNet()
    model.create_train_objects(lr=0.01, step_size=1, gamma=0.7)
    model.fit(dataset(), dataset(seed=2), epochs=2, batch_size=8, progress=False)
    model.save(path)
    model.fit(dataset(), dataset(seed=2), epochs=2, batch_size=8, progress=False)

    torch.manual_seed(12345)  # resume_training restores the saved RNG state (shuffling)
    resumed, optimizer, scheduler = Mentee.resume_training(path)
    assert optimizer is resumed.optimizer and scheduler is resumed.lr_scheduler
    assert type(optimizer) is torch.optim.Adam and scheduler.last_epoch == 2
    saved = torch.load(path, weights_only=True)["curriculum"]["optimizer"]["state"]
    for name, parameter in resumed.named_parameters():
        assert torch.equal(optimizer.state[parameter]["exp_avg"], saved[name]["exp_avg"])
        assert optimizer.state[parameter]["exp_avg"].data_ptr() != saved[name]["exp_avg"].data_ptr()
    resumed.fit(dataset(), dataset(seed=2), epochs=2, batch_size=8, progress=False)

    assert weights_equal(resumed, model)
    assert resumed.epoch == model.epoch == 4
    strip = [{k: v for k, v in r.items() if k != "time"} for r in model.history]
    assert [{k: v for k, v in r.items() if k != "time"} for r in resumed.history] == strip
    assert [g["lr"] for g in optimizer.param_groups] == [
        g["lr"] for g in model.optimizer.param_groups
    ]


def test_checkpoint_without_optimizer_resumes_without_one(tmp_path):
    model = SmallNet()
    path = tmp_path / "untrained.ckpt"
    model.save(path)
    resumed, optimizer, scheduler = Mentee.resume_training(path)
    assert optimizer is None and scheduler is None
    assert weights_equal(resumed, model)


def test_fit_with_checkpoint_path_writes_one_file_per_call(tmp_path):
    model = SmallNet()
    model.create_train_objects(lr=0.01)
    path = tmp_path / "sub" / "dir" / "fit.ckpt"  # folders are created
    model.fit(dataset(), epochs=2, checkpoint_path=path, batch_size=16, progress=False)
    assert folder_listing(path.parent) == ["fit.ckpt"]
    assert load_checkpoint(path)["epoch"] == 2


# Standalone functions ----------------------------------------------------------------


def test_public_functions_round_trip_plain_contents(tmp_path):
    assert mentor_fn.save_checkpoint is save_checkpoint
    assert issubclass(CheckpointError, ValueError)
    contents = {
        "weights": {
            "w": torch.arange(6.0).reshape(2, 3),
            "i": torch.tensor([1, 2], dtype=torch.int8),
        },
        "numbers": [1, 2.5, None, True, "text"],
        "nested": {"a": (1, 2), "b": {"c": []}},
        "step": 7,
    }
    written = save_checkpoint(str(tmp_path / "plain.ckpt"), contents)
    assert written == tmp_path / "plain.ckpt"
    loaded = load_checkpoint(written)
    assert loaded["format"] == CHECKPOINT_FORMAT and loaded["version"] == CHECKPOINT_VERSION
    assert torch.equal(loaded["weights"]["w"], contents["weights"]["w"])
    assert loaded["weights"]["i"].dtype == torch.int8
    assert loaded["numbers"] == contents["numbers"]
    assert loaded["nested"] == contents["nested"] and loaded["step"] == 7
    # Direct torch.load with weights_only works on the standalone function's files too.
    assert torch.load(written, weights_only=True)["step"] == 7
    # Contents loaded from a checkpoint can be saved again as they are.
    save_checkpoint(tmp_path / "again.ckpt", loaded)
    assert load_checkpoint(tmp_path / "again.ckpt")["step"] == 7


def test_save_checkpoint_refuses_to_overwrite_the_header(tmp_path):
    path = tmp_path / "header.ckpt"
    for bad in ({"version": 2}, {"format": "something else"}):
        with pytest.raises(ValueError, match="reserved"):
            save_checkpoint(path, {**bad, "x": 1})
    assert folder_listing(tmp_path) == []


def test_load_checkpoint_maps_tensors_to_cpu(tmp_path):
    path = save_checkpoint(tmp_path / "cpu.ckpt", {"t": torch.ones(2)})
    assert load_checkpoint(path)["t"].device.type == "cpu"


def test_save_is_temp_file_in_same_folder_fsync_then_rename(tmp_path, monkeypatch):
    events: list[tuple[str, object]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(
            ("fsync", os.readlink(f"/proc/self/fd/{fd}") if sys.platform == "linux" else fd)
        )
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", (Path(src), Path(dst))))
        # The temp file is complete before the rename: it loads on its own.
        assert torch.load(src, weights_only=True)["x"] == 1
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "atomic.ckpt"
    save_checkpoint(target, {"x": 1})
    monkeypatch.undo()

    kinds = [kind for kind, _ in events]
    assert "replace" in kinds and "fsync" in kinds
    assert kinds.index("fsync") < kinds.index("replace")  # data on disk before the rename
    src, dst = next(value for kind, value in events if kind == "replace")
    assert dst == target and src.parent == target.parent and src != target
    if sys.platform == "linux":
        first_fsync = next(value for kind, value in events if kind == "fsync")
        assert Path(first_fsync) == src  # the temp file itself was fsynced
    assert not src.exists() and folder_listing(tmp_path) == ["atomic.ckpt"]


# Unusable files ------------------------------------------------------------------------

ALL_LOADERS = {
    "load_checkpoint": load_checkpoint,
    "Mentee.resume": Mentee.resume,
    "SmallNet.resume": SmallNet.resume,
    "Mentee.resume_training": Mentee.resume_training,
}


def assert_refused(path: Path, *fragments: str) -> None:
    """Every loader raises CheckpointError naming the file and the problem."""
    for loader_name, loader in ALL_LOADERS.items():
        with pytest.raises(CheckpointError) as caught:
            loader(path)
        message = str(caught.value)
        assert str(path) in message, (loader_name, message)
        for fragment in fragments:
            assert fragment in message, (loader_name, message)
        # Never advise loading the file unsafely.
        assert "weights_only` set to `False" not in message


@pytest.fixture
def good_checkpoint(tmp_path) -> Path:
    path = tmp_path / "good.ckpt"
    trained(epochs=1).save(path)
    return path


def test_missing_file(tmp_path):
    assert_refused(tmp_path / "nothing-here.ckpt", "not found")


def test_a_directory_is_not_said_to_be_missing(tmp_path):
    folder = tmp_path / "run.ckpt"
    folder.mkdir()
    assert_refused(folder, "is a directory")
    with pytest.raises(IsADirectoryError, match="directory"):
        save_checkpoint(folder, {"x": 1})


def unprivileged_load_error(path: Path) -> str:
    """The CheckpointError message ``load_checkpoint(path)`` gives a process that may
    not read ``path``. Root reads any file, so as root a forked child drops to the
    unprivileged user ``nobody`` first (real kernel permission checks, no mocks)."""
    path.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(CheckpointError) as caught:
            load_checkpoint(path)
        return str(caught.value)
    if not hasattr(os, "fork"):
        pytest.skip("needs fork to drop root's rights")
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child's report comes through the pipe)
        try:
            try:
                os.setgid(65534)
                os.setuid(65534)
            except OSError as error:
                message = f"SKIP cannot drop root's rights: {error}"
            else:
                try:
                    load_checkpoint(path)
                    message = "loaded"
                except CheckpointError as error:
                    message = str(error)
                except Exception as error:
                    message = f"{type(error).__name__}: {error}"
            os.write(write_end, message.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as report:
        message = report.read().decode()
    os.waitpid(child, 0)
    if message.startswith("SKIP"):
        pytest.skip(message[5:])
    return message


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_unreadable_file_says_permission_denied(tmp_path, good_checkpoint):
    message = unprivileged_load_error(good_checkpoint)
    assert str(good_checkpoint) in message and "permission denied" in message
    assert "corrupt" not in message and "not found" not in message


def test_bad_arguments_to_save_checkpoint_and_load_checkpoint(tmp_path):
    with pytest.raises(TypeError, match=r"contents must be a mapping.*got int"):
        save_checkpoint(tmp_path / "five.ckpt", 5)
    with pytest.raises(ValueError, match="empty path"):
        save_checkpoint("", {})
    with pytest.raises(TypeError, match=r"str or os\.PathLike, got 5"):
        save_checkpoint(5, {})
    with pytest.raises(TypeError, match=r"str or os\.PathLike\) or a binary file object.*got None"):
        load_checkpoint(None)
    assert folder_listing(tmp_path) == []


def test_a_symlinked_checkpoint_path_is_written_through(tmp_path):
    (tmp_path / "runs").mkdir()
    target = tmp_path / "runs" / "run-1.ckpt"
    save_checkpoint(target, {"step": 1})
    link = tmp_path / "latest.ckpt"
    link.symlink_to(Path("runs") / "run-1.ckpt")  # relative, as `ln -s` makes them
    save_checkpoint(link, {"step": 2})
    assert link.is_symlink() and os.readlink(link) == str(Path("runs") / "run-1.ckpt")
    assert load_checkpoint(target)["step"] == 2
    trained(epochs=1).save(link)
    assert link.is_symlink() and load_checkpoint(target)["epoch"] == 1
    assert folder_listing(tmp_path) == ["latest.ckpt", "runs"]
    assert folder_listing(tmp_path / "runs") == ["run-1.ckpt"]


@pytest.fixture
def small_disk(tmp_path):
    """A real 256 KiB filesystem (tmpfs), where one can run out of space."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs Linux and root")
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        wait_for_background_removals()
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_is_an_oserror_that_says_so_and_keeps_the_previous_file(small_disk):
    path = small_disk / "run.ckpt"
    save_checkpoint(path, {"step": 1, "t": torch.ones(100)})
    before = path.read_bytes()
    with pytest.raises(OSError) as caught:
        save_checkpoint(path, {"step": 2, "t": torch.ones(200_000)})  # 800 KB
    assert caught.value.errno == errno.ENOSPC
    assert "the disk is full" in str(caught.value) and str(path) in str(caught.value)
    assert path.read_bytes() == before and load_checkpoint(path)["step"] == 1
    assert folder_listing(small_disk) == ["run.ckpt"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_device_behind_a_file_object_is_an_oserror_that_says_so():
    model = SmallNet()
    with open("/dev/full", "wb", buffering=0) as device, pytest.raises(OSError) as caught:
        model.save(device)
    assert caught.value.errno == errno.ENOSPC and "the disk is full" in str(caught.value)


def test_truncated_files(tmp_path, good_checkpoint):
    data = good_checkpoint.read_bytes()
    assert len(data) > 1000
    for cut in (0, 1, 64, len(data) // 3, len(data) // 2, len(data) - 100, len(data) - 1):
        path = tmp_path / f"cut-{cut}.ckpt"
        path.write_bytes(data[:cut])
        assert_refused(path)


def test_random_bytes(tmp_path):
    for seed in range(5):
        path = tmp_path / f"random-{seed}.ckpt"
        path.write_bytes(random.Random(seed).randbytes(4096))
        assert_refused(path)
    path = tmp_path / "zip-magic.ckpt"  # starts like a zip (torch's format), then garbage
    path.write_bytes(b"PK\x03\x04" + random.Random(9).randbytes(4096))
    assert_refused(path)


@pytest.mark.parametrize(
    "foreign",
    [
        {"model": {"w": torch.ones(2)}, "optimizer": {}},  # a plain torch.save of a dict
        torch.ones(3),  # of a tensor
        [1, 2, 3],
        {"format": "someone.elses.checkpoint", "version": 1},
        {"version": 1},
    ],
    ids=["dict", "tensor", "list", "other-format", "no-format"],
)
def test_files_that_are_not_mentor_fn_checkpoints(tmp_path, foreign):
    path = tmp_path / "foreign.pt"
    torch.save(foreign, path)
    assert_refused(path, "not a mentor_fn checkpoint")


@pytest.mark.parametrize("version", [0, 2, 99, "1", None])
def test_unknown_format_version(tmp_path, good_checkpoint, version):
    contents = torch.load(good_checkpoint, weights_only=True)
    contents["version"] = version
    path = tmp_path / "versioned.ckpt"
    torch.save(contents, path)
    assert_refused(path, f"version {version!r}")


def test_a_mentor_fn_file_that_is_not_a_model_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "plain.ckpt", {"step": 1})
    assert load_checkpoint(path)["step"] == 1
    for loader in (Mentee.resume, Mentee.resume_training):
        with pytest.raises(CheckpointError, match=r"plain\.ckpt"):
            loader(path)


def test_unknown_model_class_is_not_imported(tmp_path, good_checkpoint):
    contents = torch.load(good_checkpoint, weights_only=True)
    contents["model_class"] = "os.system"
    path = tmp_path / "unknown-class.ckpt"
    torch.save(contents, path)
    with pytest.raises(CheckpointError, match="not defined in this process"):
        Mentee.resume(path)


def test_model_whose_layers_differ_lists_missing_and_extra(good_checkpoint):
    for loader in (OtherLayersNet.resume, OtherLayersNet.resume_training):
        with pytest.raises(CheckpointError) as caught:
            loader(good_checkpoint)
        message = str(caught.value)
        assert str(good_checkpoint) in message
        missing, _, extra = message.partition("layers not in the checkpoint")
        assert "missing from the model: head" in missing
        assert "neck" in extra and "out" in extra and "head" not in extra


def test_model_whose_weights_differ_names_them(good_checkpoint):
    with pytest.raises(CheckpointError) as caught:
        WiderNet.resume(good_checkpoint)
    message = str(caught.value)
    assert str(good_checkpoint) in message
    assert "body.weight (checkpoint [8, 4], model [9, 4])" in message
    with pytest.raises(CheckpointError, match=r"weights missing from the model: body\.bias"):
        NoBiasNet.resume_training(good_checkpoint)


# Malicious files --------------------------------------------------------------------------


class ShellPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class ExecPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def malicious_contents(payload: object) -> dict:
    # Looks like a mentor_fn checkpoint. The payload comes before the tensor: a
    # raw pickle of a tensor names torch.storage._load_from_bytes, which
    # weights_only refuses too, and the payload must be what is refused.
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "payload": payload,
        "model": {"w": torch.ones(2)},
    }


@pytest.mark.parametrize("payload_class", [ShellPayload, ExecPayload])
def test_malicious_pickles_never_run(tmp_path, payload_class):
    if payload_class is ShellPayload and os.name != "posix":
        pytest.skip("the shell payload uses touch")
    marker = tmp_path / "marker"
    payload = payload_class(marker)
    files = []
    for protocol in (2, pickle.DEFAULT_PROTOCOL):  # 2: the unpickler reaches the GLOBAL
        path = tmp_path / f"raw-{protocol}.ckpt"
        with path.open("wb") as handle:
            pickle.dump(malicious_contents(payload), handle, protocol=protocol)
        files.append(path)
    zipped = tmp_path / "zipped.ckpt"
    torch.save(malicious_contents(payload), zipped)  # inside torch's zip format
    files.append(zipped)

    for path in files:
        assert_refused(path)
        assert not marker.exists(), path

    # The payloads are live: an unsafe load would have run them.
    with zipped.open("rb") as handle:
        torch.load(handle, weights_only=False)
    assert marker.exists()
    marker.unlink()
    with files[0].open("rb") as handle:
        pickle.load(handle)
    assert marker.exists()


def test_malicious_refusal_names_the_forbidden_global(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.ckpt"
    torch.save(malicious_contents(ExecPayload(marker)), path)
    with pytest.raises(CheckpointError, match="nothing in it was run") as caught:
        load_checkpoint(path)
    diagnosis = str(caught.value).split("nothing in it was run", 1)[1]
    assert "exec" in diagnosis and "GLOBAL" in diagnosis  # torch's diagnosis is kept
    assert not marker.exists()


# Crashes during a save -------------------------------------------------------------------


class FailsMidPickle(torch.Tensor):
    """A tensor (so it passes the plain-data check) whose pickling fails."""

    error: type[BaseException] = pickle.PicklingError

    def __reduce_ex__(self, protocol):
        raise self.error("simulated crash in the middle of a save")


class InterruptsMidPickle(FailsMidPickle):
    error = KeyboardInterrupt


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path, good_checkpoint):
    before = good_checkpoint.read_bytes()
    listing = folder_listing(tmp_path)
    failing = {
        "a": torch.randn(1000),
        "b": torch.randn(1000),
        "boom": torch.randn(3).as_subclass(FailsMidPickle),  # after the tensors
        "c": torch.randn(10),
    }
    with pytest.raises(pickle.PicklingError, match="simulated crash"):
        save_checkpoint(good_checkpoint, failing)
    assert good_checkpoint.read_bytes() == before
    assert folder_listing(tmp_path) == listing  # no temp file left behind

    # The same through Mentee.save: a history entry that fails while pickled.
    model = SmallNet.resume(good_checkpoint)
    model.history.append({"epoch": 2, "boom": torch.ones(2).as_subclass(FailsMidPickle)})
    with pytest.raises(pickle.PicklingError, match="simulated crash"):
        model.save(good_checkpoint)
    assert good_checkpoint.read_bytes() == before
    assert folder_listing(tmp_path) == listing
    assert SmallNet.resume(good_checkpoint).epoch == 1


def test_contents_that_would_not_load_are_refused_before_writing(tmp_path, good_checkpoint):
    before = good_checkpoint.read_bytes()
    listing = folder_listing(tmp_path)
    with pytest.raises(ValueError, match=r"contents\['fn'\] is a function"):
        save_checkpoint(good_checkpoint, {"a": torch.ones(2), "fn": lambda: 0})
    model = SmallNet.resume(good_checkpoint)
    model.history.append({"epoch": 2, "callback": object()})
    with pytest.raises(ValueError, match=r"contents\['history'\]\[1\]\['callback'\] is a object"):
        model.save(good_checkpoint)
    assert good_checkpoint.read_bytes() == before
    assert folder_listing(tmp_path) == listing


def test_interrupted_save_leaves_previous_checkpoint_intact(tmp_path, good_checkpoint):
    before = good_checkpoint.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(
            good_checkpoint,
            {"t": torch.ones(100), "stop": torch.ones(1).as_subclass(InterruptsMidPickle)},
        )
    assert good_checkpoint.read_bytes() == before
    assert folder_listing(tmp_path) == ["good.ckpt"]


KILLED_WRITER = textwrap.dedent(
    """
    import sys, torch
    from mentor_fn import save_checkpoint
    # 64 tensors of 2 MiB: torch writes them one record at a time.
    contents = {"weights": {f"w{i}": torch.full((512, 1024), float(i)) for i in range(64)}}
    print("ready", flush=True)
    while True:
        save_checkpoint(sys.argv[1], contents)
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_during_a_large_save_leaves_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "big.ckpt"
    save_checkpoint(path, {"marker": "previous", "t": torch.arange(10)})
    before = path.read_bytes()
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(path)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(mentor_fn.__file__).parents[1])},
    )
    try:
        assert process.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 60
        partial = None
        while partial is None and time.monotonic() < deadline:
            for entry in tmp_path.iterdir():
                # Kill once some MiB of the first save are in the temp file, long before its end.
                if entry.name.endswith(".tmp") and entry.stat().st_size > (4 << 20):
                    partial = entry
                    process.send_signal(signal.SIGKILL)
                    break
        assert partial is not None, "the writer never got going"
    finally:
        process.kill()
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    # The file at the path is the previous checkpoint, whole: the one written before
    # the writer started (almost always: the kill comes a few MiB into its first
    # save) or, if the poll missed that save, the writer's last complete one.
    previous = load_checkpoint(path)
    if path.read_bytes() != before:
        assert [float(t[0, 0]) for t in previous["weights"].values()] == list(range(64))
    else:
        assert previous["marker"] == "previous"
    # What SIGKILL left behind is the half-written temp file, and it is refused.
    leftovers = [entry for entry in tmp_path.iterdir() if entry.name.endswith(".tmp")]
    assert leftovers == [partial]
    assert partial.stat().st_size < 64 * (2 << 20)
    with pytest.raises(CheckpointError):
        load_checkpoint(partial)


def test_resume_training_reads_the_file_once_and_builds_one_curriculum(tmp_path, monkeypatch):
    import mentor_fn._files.mentee_file as format_module

    path = tmp_path / "once.ckpt"
    trained(epochs=1).save(path)
    reads: list[Path] = []
    real = format_module.load_checkpoint

    def counting(target):
        reads.append(Path(target))
        return real(target)

    built: list[object] = []
    real_init = mentor_fn.Curriculum.__init__

    def counted_init(self, *args, **kwargs):
        # On the class itself: every Curriculum counts, whichever module builds it.
        built.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(format_module, "load_checkpoint", counting)
    monkeypatch.setattr(mentor_fn.Curriculum, "__init__", counted_init)
    model, optimizer, _ = Mentee.resume_training(path)
    assert reads == [path]
    assert built == [model.curriculum]  # no placeholder built first
    assert optimizer is model.optimizer and model.epoch == 1
