"""The one adapter between Lightning and Ray: report each epoch to Tune, and undo PBT's stale optimizer state.

Imports ``lightning.pytorch`` only (never ``pytorch_lightning``): mixing the two namespaces is what breaks Ray's own
Lightning callbacks (ray#39715, #47089).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as L
from lightning.pytorch.callbacks import Callback

from dl_lightning.errors import InputError
from dl_lightning.metrics import epoch_metrics

CHECKPOINT_FILE = "last.ckpt"
_REPORT_VIA_TRAIN = False  # set in Ray Train workers: there every rank reports to Train, which forwards to Tune


def report_via_train() -> None:
    """Make reporters in this process report through Ray Train (call once in each Ray Train worker)."""
    global _REPORT_VIA_TRAIN
    _REPORT_VIA_TRAIN = True


class EpochReporter(Callback):
    """After every training epoch (validation included), report the epoch's metrics to Ray Tune.

    Every ``val/…`` and ``train/…`` value Lightning logged is reported under the same name it has in MLflow,
    plus ``epoch`` and ``extra`` (e.g. the trial's MLflow run id). With ``checkpoint=True`` a full Lightning
    checkpoint (weights, optimizer, schedules, epoch) goes with each report, so PBT can clone the trial and Tune
    can resume it.

    Raises:
        InputError: on the first report, when ``metric`` is not among the logged values (ray_lightning#219):
            naming the metric and the ones that exist, rather than Tune's failure later.
    """

    def __init__(self, metric: str, *, extra: Mapping[str, Any] | None = None, checkpoint: bool = True) -> None:
        self.metric = metric
        self.extra = dict(extra or {})
        self.checkpoint = checkpoint

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        # the same names and the same 0-based epoch as MLflow; the live lr, which after a PBT restore must be the
        # trial's, not the donor's. Ray counts finished epochs itself (training_iteration).
        metrics: dict[str, Any] = {k: _finite_or_nan(v) for k, v in epoch_metrics(trainer).items()}
        if self.metric not in metrics:
            known = ", ".join(sorted(m for m in metrics if m.startswith(("train/", "val/")))) or "none"
            raise InputError(f"tune.metric={self.metric} is never logged by training; logged: {known}")
        metrics.update(self.extra)
        if not self.checkpoint:
            _report(metrics, None)
            return
        with tempfile.TemporaryDirectory(prefix="dlforge-ckpt-") as folder:
            trainer.save_checkpoint(Path(folder) / CHECKPOINT_FILE)  # collective under DDP: every rank calls
            _report(metrics, folder if trainer.is_global_zero else None)


class ReapplyHyperparameters(Callback):
    """After a checkpoint is restored, make the trial's own optimizer values and dropout the live ones.

    Lightning restores the optimizer and lr-schedule state from the checkpoint — under PBT that is the donor's,
    with the donor's old lr and weight decay (ray#36660). The module's ``apply_hyperparameters`` writes the
    trial's values into the param groups and schedules; without a restored checkpoint nothing needs doing.
    """

    def __init__(self, optim: Mapping[str, Any], dropout: float | None = None) -> None:
        self.optim = dict(optim)
        self.dropout = dropout

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is None:
            return
        apply = getattr(pl_module, "apply_hyperparameters", None)
        if apply is None:
            raise TypeError(f"{type(pl_module).__name__} has no apply_hyperparameters; PBT cannot restore it")
        apply(self.optim, dropout=self.dropout)


class TrialDeadline(Callback):
    """Stop the fit at the first training batch that ends more than ``limit_s`` after training started.

    Tune's stopper for ``tune.trial_timeout_s`` acts when a trial reports, at epoch ends, and one epoch of a slow
    trial can take far longer than the limit. Past the deadline this asks Lightning to stop; Lightning then
    validates the partial epoch, so the reporter sends its metrics and the trial ends as stopped. Single-process
    trials only: under DDP every rank would have to agree on the batch to stop at.
    """

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._deadline = math.inf

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._deadline = time.monotonic() + self.limit_s

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if time.monotonic() > self._deadline:
            trainer.should_stop = True


def trial_callbacks(
    metric: str,
    optim: Mapping[str, Any],
    dropout: float | None,
    *,
    extra: Mapping[str, Any] | None = None,
    checkpoint: bool = True,
    timeout_s: float = 0.0,
) -> Sequence[Callback]:
    """The callbacks every sweep trial adds to ``train``: re-apply its hyperparameters, report each epoch, and
    (``timeout_s`` > 0) stop at the deadline even inside an epoch."""
    deadline = [TrialDeadline(timeout_s)] if timeout_s > 0 else []
    return [
        ReapplyHyperparameters(optim, dropout),
        *deadline,
        EpochReporter(metric, extra=extra, checkpoint=checkpoint),
    ]


def _finite_or_nan(value: float) -> float:
    """Inf reported as NaN: a diverged trial must look bad to every scheduler, whichever way its metric points."""
    return value if math.isfinite(value) else float("nan")


def _report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
    if _REPORT_VIA_TRAIN:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)
        return
    from ray import tune as ray_tune

    ray_tune.report(metrics, checkpoint=ray_tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)
