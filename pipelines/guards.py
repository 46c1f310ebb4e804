"""Reliability guards around the one fit loop: preemption, divergence and untrusted checkpoints.

- ``fit_guards(checkpoint_dir)`` — what ``fit_module`` adds to every fit: one :class:`FitGuards` callback, both
  :class:`NonFiniteLossGuard` (a NaN/Inf loss stops training with the epoch and step named, and no checkpoint
  is ever written from a non-finite state, so the last good ``last.ckpt`` is kept) and
  :class:`PreemptionCheckpoint` (on SIGTERM — how SLURM preempts — ``last.ckpt`` is saved with the state at the
  signal before the process exits 143).
- ``sigterm_exits()`` — context manager for a CLI command: SIGTERM outside Lightning's own handler (data loading,
  tracking, testing) also raises Lightning's ``SIGTERMException``, so the MLflow run is marked KILLED either way.
- ``check_checkpoint(path)`` — refuse a checkpoint that is not plain tensors and values (``weights_only=True``),
  before Lightning or anything else unpickles it.
- ``newest_checkpoint(folder, output_dir)`` — what ``--resume auto`` continues from: ``last.ckpt`` or Lightning's
  SLURM requeue checkpoint ``hpc_ckpt_<n>.ckpt``, whichever was written last and is intact (else ``best.ckpt``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import pickle
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dl_lightning.errors import InputError, clip
from pipelines.checkpoints import wait_for_writes

log = logging.getLogger(__name__)

EXIT_SIGTERM = 128 + signal.SIGTERM  # 143: what a shell reports for a process ended by SIGTERM


class NonFiniteLossError(RuntimeError):
    """Training diverged: the input was valid, so the CLI exits 1 (not 2) with this one-line message."""

    exit_code = 1


def fit_guards(checkpoint_dir: str | Path, monitor: str | None = None) -> list[Callback]:
    """The guards every fit gets; put them before tracking's callback so a SIGTERM save carries unsent metrics.

    ``monitor``: the checkpoint metric; a save while it or any loss is NaN/Inf is refused, as one with non-finite
    weights is.
    """
    return [FitGuards(Path(checkpoint_dir) / "last.ckpt", monitor=monitor)]


class NonFiniteLossGuard(Callback):
    """Stop at the first NaN/Inf training loss, naming its epoch (1-based, as the epoch lines) and global step.

    The check costs no host sync per step on an accelerator: each step's ``isfinite`` flag stays on the device
    and ``check_every_n_steps`` (default 50) of them are read at once; the step named is still the first bad one.
    On CPU, reading the loss is a memory read, so every step is checked at once (~3 µs a step, measured).
    Independently, every checkpoint save checks the loss flags not yet read and the parameters: a non-finite
    state raises before anything is written, so ``last.ckpt`` stays the last good one.
    Manual-optimization families (the GAN) return no loss; for them only the save-time parameter check applies.
    A save is also refused while ``monitor`` or any loss metric is NaN/Inf: a diverging run can keep finite but
    huge weights (~1e15) whose validation loss overflows to NaN, and that state is no "last good" one either.
    """

    def __init__(self, check_every_n_steps: int | None = None, monitor: str | None = None) -> None:
        self.check_every_n_steps = check_every_n_steps
        self.monitor = monitor
        self._flags: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []  # (epoch, step, finite, loss)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        if loss.device.type == "cpu" and loss.numel() == 1 and not self.check_every_n_steps:
            if not math.isfinite(loss.item()):  # a memory read on CPU: no queue to wait for
                self._raise(trainer.current_epoch, trainer.global_step, loss)
            return
        loss = loss.detach()
        self._flags.append((trainer.current_epoch, trainer.global_step, torch.isfinite(loss).all(), loss))
        if len(self._flags) >= (self.check_every_n_steps or 50):
            self._check()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._check()
        where = f"by epoch {trainer.current_epoch + 1}, step {trainer.global_step}"
        if not _saved_weights_finite(checkpoint, pl_module):
            raise NonFiniteLossError(
                f"the weights became non-finite {where}; the last good checkpoint is kept — lower optim.lr or set "
                "trainer.gradient_clip_val"
            )
        bad = non_finite_metrics(trainer.callback_metrics, self.monitor)
        if bad:
            raise NonFiniteLossError(
                f"{bad[0]} became {float(trainer.callback_metrics[bad[0]])} {where}; no checkpoint is written from "
                "this state (the last good one is kept) — lower optim.lr or set trainer.gradient_clip_val"
            )

    def _check(self) -> None:
        flags, self._flags = self._flags, []
        if not flags or bool(torch.stack([f for _, _, f, _ in flags]).all()):  # the one host sync
            return
        epoch, step, _, loss = next(item for item in flags if not bool(item[2]))
        self._raise(epoch, step, loss)

    @staticmethod
    def _raise(epoch: int, step: int, loss: torch.Tensor) -> None:
        value = "nan" if torch.isnan(loss).any() else "inf"
        raise NonFiniteLossError(
            f"loss became {value} at epoch {epoch + 1}, step {step}; the last good checkpoint is kept — "
            "lower optim.lr or set trainer.gradient_clip_val"
        )


def non_finite_metrics(metrics: dict[str, Any], monitor: str | None) -> list[str]:
    """The checked metrics that are NaN/Inf: the checkpoint monitor and every loss (``train/loss``, ``val/loss``…).

    Losses are checked whatever the monitor: a diverged classifier keeps a finite ``val/acc`` while its
    ``val/loss`` is NaN.
    """
    checked = [k for k in metrics if k == monitor or k.rsplit("/", 1)[-1].endswith("loss")]
    bad = [k for k in checked if isinstance(metrics[k], torch.Tensor) and not bool(metrics[k].isfinite().all())]
    return sorted(bad, key=lambda k: (k != monitor, k not in ("val/loss", "train/loss"), k))  # most telling first


def _saved_weights_finite(checkpoint: dict, module: torch.nn.Module) -> bool:
    """True when the weights being saved are finite: the checkpoint's own ``state_dict`` tensors (no walk of the
    module tree — half of this check's cost on a small net), else — a strategy that saves sharded weights
    elsewhere — every parameter and buffer of ``module``."""
    saved = [t for t in checkpoint.get("state_dict", {}).values() if isinstance(t, torch.Tensor)]
    return tensors_finite(saved) if saved else all_finite(module)


def tensors_finite(tensors: list[torch.Tensor]) -> bool:
    """True when every floating-point tensor of ``tensors`` is finite (one host sync)."""
    floats = [t for t in tensors if t.is_floating_point()]
    return not floats or bool(torch.stack([t.isfinite().all() for t in floats]).all())


def all_finite(module: torch.nn.Module) -> bool:
    """True when every parameter and buffer is finite (one host sync)."""
    return tensors_finite([*module.parameters(), *module.buffers()])


class PreemptionCheckpoint(Callback):
    """On SIGTERM during a fit, save ``path`` (``last.ckpt``) with the state at the signal.

    Lightning turns SIGTERM into ``SIGTERMException`` at the next safe point (after a batch) and calls
    ``on_exception``; saving there — as Lightning's ``OnExceptionCheckpoint`` does, but only for SIGTERM, and
    keeping the file afterwards — means a requeued job loses at most one batch. Other exceptions save nothing: a
    crashed or diverged state is not one to continue from. A mid-epoch checkpoint resumes mid-epoch (Lightning
    restores the loop counters; the data order of that epoch restarts).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        try:
            trainer.save_checkpoint(self.path)
            wait_for_writes(trainer)  # on disk before it is said to be
            if trainer.is_global_zero:
                log.warning(
                    "SIGTERM: saved %s at epoch %d, step %d", self.path, trainer.current_epoch + 1, trainer.global_step
                )
        except Exception as exc:  # e.g. a diverged state refused by NonFiniteLossGuard: keep the older file
            log.warning("SIGTERM: could not save %s (%s); the previous checkpoint is kept", self.path, exc)


class FitGuards(NonFiniteLossGuard, PreemptionCheckpoint):
    """Both guards as one callback: Lightning dispatches every hook to every callback (~1.7 µs each per hook, ~7
    hooks a training step), and the two share no hook."""

    def __init__(self, path: str | Path, monitor: str | None = None) -> None:
        NonFiniteLossGuard.__init__(self, monitor=monitor)
        PreemptionCheckpoint.__init__(self, path)


_sigterm = threading.Event()


def sigterm_received() -> bool:
    """Whether SIGTERM reached this process under :func:`sigterm_exits`.

    A ``SystemExit`` after it is the signal's, whatever raised it: a signal that arrives while Ray waits in C++
    (``ray.wait`` in Tune's loop) runs our handler there, and Ray turns the handler's exception into
    ``SystemExit(1)``.
    """
    return _sigterm.is_set()


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """Make SIGTERM raise ``SIGTERMException`` (a ``SystemExit``) wherever Lightning is not already handling it.

    While a Trainer runs, Lightning's handler is installed and calls this one as the previous handler; it then does
    nothing, and Lightning raises at its next safe point instead. Only the main thread can set handlers; elsewhere
    (Ray trial threads) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        _sigterm.set()
        if signal.getsignal(signal.SIGTERM) is handler:  # not called through Lightning's handler
            raise SIGTERMException

    _sigterm.clear()  # a new command in this process (the tests run many) starts without the last one's signal
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_checkpoint(path: str | Path) -> None:
    """Refuse ``path`` unless it loads with ``torch.load(weights_only=True)``: no pickled code ever runs.

    Raises:
        InputError: the file is missing, not a torch checkpoint, or needs arbitrary unpickling (a hostile or foreign
            file) — one line naming the file and what it tried to load.
    """
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        raise InputError(
            f"refusing checkpoint {str(path)!r}: not plain tensors and values ({unpickling_reason(exc)}); "
            "pass a checkpoint dlforge wrote"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise InputError(f"cannot read checkpoint {str(path)!r} ({type(exc).__name__}); pass a dlforge .ckpt") from None


def unpickling_reason(exc: BaseException) -> str:
    """The informative line of torch's long weights-only refusal, e.g. ``unsupported GLOBAL posix.system``."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    found = [line for line in lines if "GLOBAL" in line or "global" in line.split()]
    text = (found or [type(exc).__name__])[0]
    match = re.search(r"GLOBAL \S+", text)
    return f"it would load {match.group(0).removeprefix('GLOBAL ')}" if match else clip(text, 200)


def newest_checkpoint(checkpoint_dir: str | Path, output_dir: str | Path) -> Path | None:
    """``last.ckpt`` or Lightning's SLURM requeue save ``<output_dir>/hpc_ckpt_<n>.ckpt``, the newest intact one.

    A file that is cut short (written in place by an older dlforge, or damaged on disk) is skipped with a warning,
    falling back to the next newest and finally to ``best.ckpt``; a file that is whole but not plain tensors is
    returned as is, so that ``check_checkpoint`` refuses it loudly instead of it being silently passed over.
    """
    folder = Path(checkpoint_dir)
    found = [p for p in [folder / "last.ckpt", *Path(output_dir).glob("hpc_ckpt_*.ckpt")] if p.is_file()]
    # best.ckpt only stands in for a damaged file: with none written yet, a new fit starts (it may be mid-epoch 1).
    ordered = [
        *sorted(found, key=lambda p: p.stat().st_mtime, reverse=True),
        *([folder / "best.ckpt"] if found else []),
    ]
    for path in ordered:
        if path.is_file() and _readable(path):
            return path
        if path.is_file():
            log.warning("skipping %s: cut short or damaged; resuming from an older checkpoint", path)
    return None


def _readable(path: Path) -> bool:
    """True unless ``path`` cannot be read as a torch file at all (a hostile pickle counts as readable)."""
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        return True
    except (OSError, RuntimeError, EOFError, ValueError):
        return False
    return True
