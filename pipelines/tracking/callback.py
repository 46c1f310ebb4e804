"""The Lightning callback that sends one run's epoch metrics to MLflow and keeps unsent ones in checkpoints.

Imported on use (``runs.lightning_callbacks``): it imports Lightning, which a tracking user such as
``dlforge predict`` must not pay for. mlflow itself is reached through ``store._mlflow()`` only inside hooks.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import lightning.pytorch as L
from lightning.pytorch.callbacks import Callback

from dl_lightning.metrics import epoch_metrics
from pipelines.tracking.runs import CHECKPOINT_KEY, PendingRun
from pipelines.tracking.store import _log_batch, _mlflow, _safe

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)


class TrackingCallback(Callback):
    """Per-epoch metrics of one run, from rank 0, one batch per epoch at ``step = epoch`` (0-based).

    Guarantees: every rank ends ``setup`` holding rank 0's run id (``strategy.broadcast``: torchrun, SLURM and
    multi-node alike). Batches are sent from a background thread, so training never waits on the store, and every
    epoch the store has not confirmed yet is written into each checkpoint: after a crash, a kill or an outage the
    resumed job sends those epochs, skipping any the run already has — no missing and no duplicate step.

    Given a ``PendingRun`` (a single-process job whose run is still opening), training starts at once: epochs wait
    in memory (and in checkpoints) until the run exists, and a run that cannot be opened stops the fit at the next
    epoch's end with the error that opening raised. The first checkpoint waits for the run, so that every
    checkpoint names its run (a resumed job continues it): the open overlaps the fit's setup and first epoch.
    """

    def __init__(self, run_id: str | PendingRun | None) -> None:
        self._pending = run_id if isinstance(run_id, PendingRun) else None
        self.run_id = None if self._pending is not None else run_id
        self._sender: _EpochSender | None = None
        self._epochs: dict[int, dict[str, float]] = {}  # what this fit's epochs logged, for the learning curves

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._pending is None or trainer.world_size > 1:
            self.run_id = trainer.strategy.broadcast(self._resolved_run_id(), src=0)
        if not (trainer.is_global_zero and (self.run_id or self._pending) and stage == "fit"):
            return
        spec = getattr(trainer.datamodule, "spec", None)
        tags = {}
        if spec is not None:
            tags = {"dlforge.data_fingerprint": spec.fingerprint, "dlforge.data_kind": spec.kind}
            tags["dlforge.task"] = spec.task
        self._sender = _EpochSender(self._resolved_run_id, tags)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        state = checkpoint.get(CHECKPOINT_KEY) or {}
        if self._sender is not None and state.get("run_id") == self._resolved_run_id():
            for step, values in state.get("pending", []):
                self._sender.add(int(step), values)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs before ModelCheckpoint's hook (Lightning calls monitoring callbacks last), so the epoch is pending
        # by the time its checkpoint is written.
        if self._sender is not None and not trainer.sanity_checking:
            self._sender.raise_error()  # the run could not be opened: stop here, as a job without a store would
            metrics = epoch_metrics(trainer)
            self._epochs[trainer.current_epoch] = metrics
            self._sender.add(trainer.current_epoch, metrics)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        unsent = self._sender.unsent() if self._sender is not None else {}
        run_id = self._resolved_run_id()  # waits for a run still opening: a resumed checkpoint continues its run
        checkpoint[CHECKPOINT_KEY] = {"run_id": run_id, "pending": [[s, v] for s, v in sorted(unsent.items())]}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._close()  # a failed run still gets the epochs it finished

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._close()

    def history(self, prefixes: tuple[str, ...], skip: tuple[str, ...] = ()) -> dict[str, list] | None:
        """This fit's metrics named ``<prefix>…`` (except ``skip``): name → sorted ``(epoch, value)``, as the store
        has them; None when the fit did not start at epoch 0 (a resumed fit: earlier epochs are in the store only).
        """
        steps = sorted(self._epochs)
        if not steps or steps != list(range(len(steps))):
            return None
        history: dict[str, list] = {}
        for step in steps:
            for key, value in self._epochs[step].items():
                if key.startswith(prefixes) and key not in skip:
                    history.setdefault(key, []).append((step, float(value)))
        return history

    def _resolved_run_id(self) -> str | None:
        """The run's id, waiting for a run still opening (raises what opening raised)."""
        return self._pending.run_id() if self._pending is not None else self.run_id

    def _close(self) -> None:
        if self._sender is not None:
            if not self._sender.drain(timeout=60.0) and self._sender.reached_run():
                log.warning(
                    "MLflow did not take %d epoch(s) of metrics; the checkpoint keeps them", len(self._sender.unsent())
                )
            self._sender.close()
            self._sender = None


class _EpochSender:
    """A daemon thread sending ``step → metrics`` batches of one run; ``unsent()`` is what the store lacks.

    The thread first waits for the run (``run_id()`` may block while it opens), learns which epochs it already
    has and sets ``tags``; epochs added meanwhile wait. Epochs that end within ``interval`` seconds of the last
    send share the next batch: short epochs cost one store round trip per few seconds instead of one each, and the
    dashboard is never more than that behind.
    """

    def __init__(self, run_id: Callable[[], str | None], tags: dict[str, str], interval: float = 3.0) -> None:
        self._get_run_id, self._tags, self._interval = run_id, tags, interval
        self._client: MlflowClient | None = None
        self._run_id: str | None = None
        self._logged: set[int] = set()
        self._error: BaseException | None = None
        self._pending: dict[int, dict[str, float]] = {}
        self._lock = threading.Lock()
        self._wake, self._sent, self._started = threading.Event(), threading.Event(), threading.Event()
        self._closed = self._force = False
        self._failures, self._retry_at, self._last_send = 0, 0.0, -math.inf
        threading.Thread(target=self._loop, name="dlforge-mlflow-metrics", daemon=True).start()

    def add(self, step: int, metrics: dict[str, float]) -> None:
        with self._lock:
            if step not in self._logged:
                self._pending[step] = metrics
        self._wake.set()

    def unsent(self) -> dict[int, dict[str, float]]:
        with self._lock:
            return dict(self._pending)

    def reached_run(self) -> bool:
        """Whether the thread reached the run (else the job fails with what kept it away)."""
        return self._client is not None

    def raise_error(self) -> None:
        """Raise what kept the thread from reaching the run (opening it, or reading which epochs it has)."""
        if self._error is not None:
            raise self._error

    def drain(self, timeout: float) -> bool:
        """Send now and wait until nothing is left, the store fails again, or ``timeout`` (counted once the run is
        open); True when all sent."""
        self._started.wait()
        deadline = time.monotonic() + timeout
        while self.unsent() and self._client is not None and time.monotonic() < deadline:
            failures = self._failures
            self._force = True  # ignores the interval and the back-off
            self._sent.clear()
            self._wake.set()
            self._sent.wait(max(0.0, deadline - time.monotonic()))
            if self.unsent() and self._failures > failures:
                break
        return not self.unsent()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    def _start(self) -> bool:
        """Reach the run: its id, a client, the epochs it already has (dropped from the pending ones), the tags."""
        try:
            self._run_id = self._get_run_id()
            if self._run_id is not None:
                self._client = _mlflow().MlflowClient(tracking_uri=_mlflow().get_tracking_uri())
                logged = {int(m.step) for m in self._client.get_metric_history(self._run_id, "epoch")}
                with self._lock:
                    self._logged = logged
                    self._pending = {s: v for s, v in self._pending.items() if s not in logged}
                if self._tags:
                    _safe(functools.partial(_log_batch, tags=self._tags), self._client, self._run_id)
        except BaseException as exc:  # raised in the training thread at the next epoch's end
            self._error = exc
        finally:
            self._started.set()
        return self._error is None and self._run_id is not None

    def _loop(self) -> None:
        if not self._start():
            return
        while not self._closed:
            due = max(self._retry_at, self._last_send + self._interval) - time.monotonic()
            self._wake.wait(timeout=max(due, 0.0) if self.unsent() else None)
            self._wake.clear()
            if not self._closed:
                self._send()
            self._sent.set()

    def _send(self) -> None:
        forced, self._force = self._force, False
        batch = self.unsent()
        due = max(self._retry_at, self._last_send + self._interval)
        if not batch or (not forced and time.monotonic() < due):
            return
        self._last_send = time.monotonic()
        try:
            _log_batch(self._client, self._run_id, metrics=batch)
        except Exception as exc:  # a store that went away must not stop (or stall) the training
            self._failures += 1
            self._retry_at = time.monotonic() + min(300.0, 15.0 * 2**self._failures)
            log.warning("MLflow unreachable (%s); %d epoch(s) of metrics kept for later", exc, len(batch))
            return
        with self._lock:
            for step in batch:
                self._pending.pop(step, None)
            self._logged |= set(batch)
        self._failures = 0
