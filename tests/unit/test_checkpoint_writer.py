"""``AtomicCheckpointIO`` writes in the background, yet a write is whole once waited for and a failure still stops
the fit with the one-line message, leaving the previous file intact and no temporary file."""

from __future__ import annotations

import errno

import pytest
import torch

from pipelines import checkpoints
from pipelines.checkpoints import AtomicCheckpointIO, CheckpointWriteError


def test_a_waited_for_write_is_whole_and_holds_the_state_of_the_call(tmp_path):
    writer, state = AtomicCheckpointIO(), {"epoch": 1, "w": torch.arange(4.0)}
    path = tmp_path / "last.ckpt"
    writer.save_checkpoint(state, path)
    state["w"].add_(100)  # the live weights move on while the file is written: the file keeps the call's snapshot
    writer.wait()
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(4.0))
    writer.save_checkpoint({"epoch": 2}, path)
    assert writer.load_checkpoint(path)["epoch"] == 2  # a read waits for the write in flight
    writer.teardown()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_background_failure_is_raised_at_the_next_wait_and_keeps_the_previous_file(tmp_path, monkeypatch):
    writer, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    writer.save_checkpoint({"epoch": 0}, path)
    writer.wait()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.os, "fsync", full)
    writer.save_checkpoint({"epoch": 1}, path)  # returns: the write fails on the writer's thread
    with pytest.raises(CheckpointWriteError, match=r"could not write checkpoint .*\(the disk is full\)"):
        writer.wait()
    assert torch.load(path, weights_only=True)["epoch"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # the temporary file is gone
    writer.save_checkpoint({"epoch": 2}, path)
    with pytest.raises(CheckpointWriteError):
        writer.teardown()  # the end of a fit raises it too
