"""Checkpoints a later step can trust: written whole or not at all, ``last.ckpt`` at every epoch end, same data order.

- :class:`AtomicCheckpointIO` — the Trainer's checkpoint writer: each file is written to a temporary name in its own
  folder, flushed to disk and renamed over the old one, so a full disk, a kill or a crash mid-write leaves the
  previous file intact (Lightning's writer moved a temp file from ``/tmp``, a copy in place across filesystems).
  The write and its fsync run on a background thread that overlaps the next epoch's training steps.
- :class:`LastCheckpoint` — writes ``last.ckpt`` after every completed epoch (Lightning 2.6's ``save_last`` moved
  it only with a new top-k file), after validation and after tracking's epoch hook, so the checkpoint carries the
  epoch's metrics not yet confirmed by the store.
- :class:`EpochSeed` — reseeds every RNG at each epoch start from ``(seed, epoch)``: the shuffle, dropout and
  augmentation of epoch ``k`` do not depend on how the process got there, so a run resumed from an epoch boundary
  repeats the uninterrupted run's numbers exactly (on CPU).
"""

from __future__ import annotations

import errno
import io
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from lightning.fabric.utilities.seed import seed_everything
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)

LAST = "last.ckpt"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, quota, I/O error); the previous file is intact. Exit 1."""

    exit_code = 1


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``.<name>.<pid>.tmp`` beside the target, ``fsync`` it, then ``os.replace`` the target.

    Guarantees: readers (``--resume auto``, the compress stage) see the old file or the new one, never part of one;
    a failed write removes its temporary file and raises :class:`CheckpointWriteError` naming the file and cause.
    Temporary files a killed process left for the same target are removed before the next write.

    The checkpoint is serialized in the caller's thread (a snapshot of the state at the call); writing, ``fsync``
    and rename run on a background thread, so the fsync (10-20 ms a save) overlaps the next epoch's training
    steps instead of adding to every epoch. At most one write is in flight: :meth:`wait` — called before the next
    write, any read or removal, before each epoch's validation (``LastCheckpoint``), at the end of the fit and at
    teardown — blocks until it has landed and raises its error there.
    """

    def __init__(self) -> None:
        super().__init__()
        self._executor: ThreadPoolExecutor | None = None  # one thread, kept from write to write
        self._pending: Future | None = None

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        self.wait()  # in order; an earlier write's failure stops the fit here
        data = io.BytesIO()
        try:
            torch.save(checkpoint, data)
        except OSError as exc:
            raise _write_error(path, exc) from exc
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlforge-checkpoint-writer")
        self._pending = self._executor.submit(write_atomically, data.getbuffer(), path)

    def wait(self) -> None:
        """Block until the write in flight has landed; raise its error (CheckpointWriteError) if it failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def load_checkpoint(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.wait()
        return super().load_checkpoint(*args, **kwargs)

    def remove_checkpoint(self, path: Any) -> None:
        self.wait()
        super().remove_checkpoint(path)

    def teardown(self) -> None:
        executor, self._executor = self._executor, None
        try:
            self.wait()
        finally:
            if executor is not None:
                executor.shutdown(wait=True)

    def __getstate__(self) -> dict[str, Any]:  # ddp_spawn pickles the strategy: a thread does not travel
        self.wait()
        return {**self.__dict__, "_executor": None, "_pending": None}


def write_atomically(data: memoryview | bytes, path: Path) -> None:
    """Write ``data`` to ``path`` through a fsynced temporary file and a rename; CheckpointWriteError on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            # The bytes reach the disk before the name points at them. This is also where NFS and quota errors
            # surface. The folder is not fsynced: a rename lost to a power cut leaves the previous whole file,
            # which is still a correct last.ckpt.
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _write_error(path, exc) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_error(path: Path, exc: OSError) -> CheckpointWriteError:
    reason = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else exc.strerror
    error = CheckpointWriteError(
        f"could not write checkpoint {str(path)!r} ({reason or type(exc).__name__}); the previous one is "
        "intact — free space, then rerun with --resume auto"
    )
    error.errno = exc.errno  # one argument keeps "[Errno 28]" out of the CLI's one line
    return error


def wait_for_writes(trainer: L.Trainer) -> None:
    """Block until the trainer's checkpoint writes have landed (a no-op for a writer that is not background)."""
    wait = getattr(trainer.strategy.checkpoint_io, "wait", None)
    if wait is not None:
        wait()


def _remove_stale_temps(path: Path) -> None:
    """Temp files of ``path`` from a killed process: they hold disk space and are never read."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


class LastCheckpoint(Checkpoint):
    """Save ``<dirpath>/last.ckpt`` at the end of every completed training epoch, on every rank's call (rank 0 writes).

    Being a ``Checkpoint``, Lightning runs its hook after every other callback's ``on_train_epoch_end`` (tracking
    adds the epoch's metrics there first) and after the epoch's validation. The save goes through the guards'
    ``on_save_checkpoint``: a non-finite state raises instead, so the file stays the last good epoch.
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.path = Path(dirpath) / LAST

    @property
    def last_model_path(self) -> str | None:
        return str(self.path) if self.path.is_file() else None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        trainer.save_checkpoint(self.path)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the previous epoch's files land while this epoch trains, and before its validation (and epoch line)
        wait_for_writes(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        wait_for_writes(trainer)  # a fit returns with its checkpoints on disk


class EpochSeed(L.Callback):
    """Seed torch, numpy and ``random`` from ``(seed, epoch)`` at each epoch start, before its batches are drawn.

    Lightning restores weights, optimizer and loop counters on resume but not the RNG streams, so without this
    a resumed run shuffles and drops out differently from the run it continues. Dataloader workers are seeded
    from these streams too (``seed_everything(workers=True)``).

    Lightning creates the first epoch's loader iterator before any epoch hook (``FitLoop.setup_data``), and creating
    it draws the loader's base seed from the torch stream; later epochs create it after ``on_train_epoch_start``.
    So the first epoch of a fit is seeded earlier — when the checkpoint is loaded on resume, at ``on_fit_start``
    otherwise — and not again at its start: every epoch then draws the base seed, the sampler's seed and its dropout
    in that order from the same state, as a plain loop that seeds before ``iter(loader)`` does.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._seeded_epoch: int | None = None

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
        epoch = progress.get("processed")  # saved at an epoch end: the next epoch; mid-epoch: that epoch
        if isinstance(epoch, int):
            self._seeded_epoch = self._seed(epoch)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._seeded_epoch is None:  # a fresh fit; a resumed one was seeded when its checkpoint was loaded
            self._seeded_epoch = self._seed(trainer.current_epoch)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seeded, self._seeded_epoch = self._seeded_epoch, None
        if seeded != trainer.current_epoch:
            self._seed(trainer.current_epoch)

    def _seed(self, epoch: int) -> int:
        seed_everything(epoch_seed(self.seed, epoch), workers=True, verbose=False)
        return epoch


def epoch_seed(seed: int, epoch: int) -> int:
    """A distinct 32-bit seed per ``(seed, epoch)`` pair (a large odd multiplier keeps nearby seeds apart)."""
    return (seed * 1_000_003 + epoch) % 2**32
