"""Replacing a file atomically: real files in ``tmp_path``, real processes and threads."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import mentor_fn._files.atomic_write as atomic_write
from mentor_fn._files.atomic_write import replace_file, wait_for_background_removals

MiB = 1 << 20


def listing(folder: Path) -> list[str]:
    wait_for_background_removals()
    return sorted(entry.name for entry in folder.iterdir())


def writer(data: bytes):
    return lambda file: file.write(data)


@pytest.fixture(autouse=True)
def fresh_cleanup_record(monkeypatch):
    # Each test's targets count as never written by this process.
    monkeypatch.setattr(atomic_write, "_cleaned_targets", set())


def test_creates_then_replaces_and_leaves_only_the_target(tmp_path):
    target = tmp_path / "a.ckpt"
    replace_file(target, writer(b"first"))
    assert target.read_bytes() == b"first"
    replace_file(target, writer(b"second"))
    assert target.read_bytes() == b"second"
    assert listing(tmp_path) == ["a.ckpt"]


def test_an_open_reader_of_the_previous_file_keeps_reading_it(tmp_path):
    target = tmp_path / "a.ckpt"
    replace_file(target, writer(b"old contents"))
    with open(target, "rb") as reader:
        replace_file(target, writer(b"new"))
        wait_for_background_removals()
        assert reader.read() == b"old contents"
    assert target.read_bytes() == b"new"


@pytest.mark.parametrize("error", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_a_failing_write_leaves_the_target_and_nothing_else(tmp_path, error):
    target = tmp_path / "a.ckpt"
    replace_file(target, writer(b"good"))

    def fails(file):
        file.write(b"half of it")
        raise error

    with pytest.raises(type(error)):
        replace_file(target, fails, expected_bytes=64 * MiB)  # with the writeback thread
    assert target.read_bytes() == b"good"
    assert listing(tmp_path) == ["a.ckpt"]
    assert not any(thread.name == "mentor_fn-writeback" for thread in threading.enumerate())


def test_large_writes_are_flushed_while_written_and_complete(tmp_path, monkeypatch):
    flushed_sizes: list[int] = []
    real_datasync = atomic_write._datasync

    def counting_datasync(descriptor: int) -> None:
        flushed_sizes.append(os.fstat(descriptor).st_size)
        real_datasync(descriptor)

    monkeypatch.setattr(atomic_write, "_datasync", counting_datasync)
    chunk = os.urandom(MiB)
    written = threading.Event()

    def slow_writer(file):
        for _ in range(12):
            file.write(chunk)
            file.flush()
            written.wait(0.005)  # give the writeback thread its turns

    target = tmp_path / "big.ckpt"
    replace_file(target, slow_writer, expected_bytes=12 * MiB)
    assert target.read_bytes() == chunk * 12
    # Flushes were asked for while the file grew, never for less than a chunk more.
    assert len(flushed_sizes) >= 2 and min(flushed_sizes) < 12 * MiB
    steps = [b - a for a, b in zip([0, *flushed_sizes], flushed_sizes)]
    assert all(step >= atomic_write.WRITEBACK_CHUNK_BYTES for step in steps)


def test_small_writes_start_no_thread(tmp_path, monkeypatch):
    started: list[str] = []
    real_start = threading.Thread.start

    def recording_start(self):
        started.append(self.name)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", recording_start)
    replace_file(tmp_path / "small.ckpt", writer(b"x" * 100), expected_bytes=100)
    assert "mentor_fn-writeback" not in started


def test_without_hard_links_the_rename_frees_the_previous_file(tmp_path, monkeypatch):
    def no_links(source, destination):
        raise PermissionError(1, "Operation not permitted")

    target = tmp_path / "a.ckpt"
    replace_file(target, writer(b"first"))
    monkeypatch.setattr(os, "link", no_links)
    replace_file(target, writer(b"second"))
    assert target.read_bytes() == b"second"
    assert listing(tmp_path) == ["a.ckpt"]


def dead_process_id() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.skipif(os.name != "posix", reason="leftovers are recognised on POSIX only")
def test_leftovers_of_dead_writers_on_this_host_are_removed_at_the_first_write(tmp_path):
    host, dead = socket.gethostname(), dead_process_id()
    target = tmp_path / "run.ckpt"
    dead_temporary = tmp_path / f".run.ckpt.{host}.{dead}.abcd1234.tmp"
    dead_second_name = tmp_path / f".run.ckpt.{host}.{dead}.0a1b2c3d.old"
    kept = [
        tmp_path / f".run.ckpt.{host}.{os.getpid()}.live0000.tmp",  # a live writer: this one
        tmp_path / f".run.ckpt.{host}.{os.getppid()}.live1111.tmp",  # a live writer: the parent
        tmp_path / f".run.ckpt.other-host.{dead}.abcd1234.tmp",  # another host's writer
        tmp_path / f".other.ckpt.{host}.{dead}.abcd1234.tmp",  # another target
        tmp_path / "notes.tmp",
    ]
    for path in [dead_temporary, dead_second_name, *kept]:
        path.write_bytes(b"partial")
    replace_file(target, writer(b"new"))
    assert sorted(listing(tmp_path)) == sorted(["run.ckpt", *(path.name for path in kept)])

    # Only at the first write to that target: a later leftover stays until the next process.
    dead_temporary.write_bytes(b"partial")
    replace_file(target, writer(b"newer"))
    assert dead_temporary.exists()


def test_host_names_with_dots_are_parsed(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "node-1.cluster.example")
    dead = dead_process_id()
    leftover = tmp_path / f".run.ckpt.node-1.cluster.example.{dead}.abcd1234.tmp"
    leftover.write_bytes(b"partial")
    replace_file(tmp_path / "run.ckpt", writer(b"new"))
    assert listing(tmp_path) == ["run.ckpt"]


def test_a_long_target_name_still_gets_scratch_files_that_fit(tmp_path):
    target = tmp_path / ("checkpoint-" + "x" * 230 + ".pt")  # 244 bytes: fits, barely
    replace_file(target, writer(b"first"))
    replace_file(target, writer(b"second"))
    assert target.read_bytes() == b"second"
    assert listing(tmp_path) == [target.name]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_permissions_are_those_torch_save_gives(tmp_path):
    umask = os.umask(0o022)  # read it (and set a known one for this test)
    try:
        target = tmp_path / "a.ckpt"
        replace_file(target, writer(b"first"))
        assert stat.S_IMODE(target.stat().st_mode) == 0o644  # a new file: 0o666 less the umask
        os.chmod(target, 0o640)
        replace_file(target, writer(b"second"))
        assert stat.S_IMODE(target.stat().st_mode) == 0o640  # a rewrite keeps them
    finally:
        os.umask(umask)
