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
from typing import TYPE_CHECKING

import lightning.pytorch as L
from lightning.pytorch.callbacks import Callback

from dl_lightning.metrics import epoch_metrics
from pipelines.tracking.runs import CHECKPOINT_KEY
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
    """

    def __init__(self, run_id: str | None) -> None:
        self.run_id = run_id
        self._sender: _EpochSender | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.run_id = trainer.strategy.broadcast(self.run_id, src=0)
        if not (trainer.is_global_zero and self.run_id and stage == "fit"):
            return
        client = _mlflow().MlflowClient(tracking_uri=_mlflow().get_tracking_uri())
        logged = {int(m.step) for m in client.get_metric_history(self.run_id, "epoch")}
        self._sender = _EpochSender(client, self.run_id, logged)
        spec = getattr(trainer.datamodule, "spec", None)
        if spec is not None:
            tags = {
                "dlforge.data_fingerprint": spec.fingerprint,
                "dlforge.data_kind": spec.kind,
                "dlforge.task": spec.task,
            }
            _safe(functools.partial(_log_batch, tags=tags), client, self.run_id)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        state = checkpoint.get(CHECKPOINT_KEY) or {}
        if self._sender is not None and state.get("run_id") == self.run_id:
            for step, values in state.get("pending", []):
                self._sender.add(int(step), values)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs before ModelCheckpoint's hook (Lightning calls monitoring callbacks last), so the epoch is pending
        # by the time its checkpoint is written.
        if self._sender is not None and not trainer.sanity_checking:
            self._sender.add(trainer.current_epoch, epoch_metrics(trainer))

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        unsent = self._sender.unsent() if self._sender is not None else {}
        checkpoint[CHECKPOINT_KEY] = {"run_id": self.run_id, "pending": [[s, v] for s, v in sorted(unsent.items())]}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._close()  # a failed run still gets the epochs it finished

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._close()

    def _close(self) -> None:
        if self._sender is not None:
            if not self._sender.drain(timeout=60.0):
                log.warning(
                    "MLflow did not take %d epoch(s) of metrics; the checkpoint keeps them", len(self._sender.unsent())
                )
            self._sender.close()
            self._sender = None


class _EpochSender:
    """A daemon thread sending ``step → metrics`` batches of one run; ``unsent()`` is what the store lacks.

    Epochs that end within ``interval`` seconds of the last send share the next batch: short epochs cost one
    store round trip per few seconds instead of one each, and the dashboard is never more than that behind.
    """

    def __init__(self, client: MlflowClient, run_id: str, logged: set[int], interval: float = 3.0) -> None:
        self._client, self._run_id, self._logged, self._interval = client, run_id, logged, interval
        self._pending: dict[int, dict[str, float]] = {}
        self._lock = threading.Lock()
        self._wake, self._sent = threading.Event(), threading.Event()
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

    def drain(self, timeout: float) -> bool:
        """Send now and wait until nothing is left, the store fails again, or ``timeout``; True when all sent."""
        deadline = time.monotonic() + timeout
        while self.unsent() and time.monotonic() < deadline:
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

    def _loop(self) -> None:
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
