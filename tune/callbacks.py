"""The one adapter between Lightning and Ray: report each epoch to Tune, and undo PBT's stale optimizer state; and
the sweep's progress on the driver's terminal (``TrialTable``).

Imports ``lightning.pytorch`` only (never ``pytorch_lightning``): mixing the two namespaces is what breaks Ray's own
Lightning callbacks (ray#39715, #47089).
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import lightning.pytorch as L
from lightning.pytorch.callbacks import Callback
from ray.tune import Callback as TuneCallback

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
            _wait_for_writes(trainer)  # Tune copies the folder when it is reported
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


def _wait_for_writes(trainer: L.Trainer) -> None:
    """A checkpoint writer that works in the background (dlforge's) is waited for; others have written already."""
    wait = getattr(trainer.strategy.checkpoint_io, "wait", None)
    if wait is not None:
        wait()


def _report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
    if _REPORT_VIA_TRAIN:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)
        return
    from ray import tune as ray_tune

    ray_tune.report(metrics, checkpoint=ray_tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)


# ---------------------------------------------------------------- the sweep on the terminal (driver side)


class TrialTable(TuneCallback):
    """The sweep as a person reads it: on a terminal, one table of trials redrawn in place as they report (at most
    every ``interval_s``, and at each trial's end); otherwise (a log file, a pipe) one line per finished trial.

    Columns: trial, status, epochs done / planned, the last and best ``metric``.
    """

    def __init__(
        self, metric: str, mode: str, max_epochs: int, *, stream: TextIO | None = None, interval_s: float = 0.5
    ) -> None:
        self.metric, self.mode, self.max_epochs, self.interval_s = metric, mode, max_epochs, interval_s
        self._stream = stream
        self._rows: dict[str, dict[str, Any]] = {}
        self._drawn_lines = 0
        self._last_draw = 0.0

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout  # looked up late: pytest and the CLI swap sys.stdout

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._row(trial)["status"] = "running"
        self._draw(force=False)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        row, value = self._row(trial), result.get(self.metric)
        row["epochs"] = result.get("training_iteration", row["epochs"])
        if isinstance(value, (int, float)) and math.isfinite(value):
            row["last"] = value
            better = row["best"] is None or (value > row["best"] if self.mode == "max" else value < row["best"])
            row["best"] = value if better else row["best"]
        self._draw(force=False)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # a scheduler (ASHA, HyperBand) or the time budget ends a trial early through the same call
        self._finish(trial, "done" if self._row(trial)["epochs"] >= self.max_epochs else "stopped")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, f"failed ({trial.num_failures})")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._draw(force=True)

    def _row(self, trial: Any) -> dict[str, Any]:
        return self._rows.setdefault(trial.trial_id, {"status": "pending", "epochs": 0, "last": None, "best": None})

    def _finish(self, trial: Any, status: str) -> None:
        row = self._row(trial)
        row["status"] = status
        if not self._tty():
            print(f"  trial {trial.trial_id}  {status}  {self._cells(row)}", file=self.stream, flush=True)
        self._draw(force=True)

    def _tty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def _draw(self, *, force: bool) -> None:
        """Redraw the table over its previous drawing (a terminal only), throttled unless ``force``."""
        now = time.monotonic()
        if not self._tty() or (not force and now - self._last_draw < self.interval_s):
            return
        lines = self.table_lines()
        up = f"\x1b[{self._drawn_lines}F" if self._drawn_lines else ""  # back to the table's first line
        self.stream.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        self.stream.flush()
        self._drawn_lines, self._last_draw = len(lines), now

    def table_lines(self) -> list[str]:
        """The table as text lines: a header, then one row per trial in the order they were seen."""
        header = f"  {'trial':<14}{'status':<13}{'epoch':<9}{self.metric + ' (last / best)'}"
        return [header] + [
            f"  {trial_id:<14}{row['status']:<13}{row['epochs']}/{self.max_epochs:<7}{self._cells(row)}"
            for trial_id, row in self._rows.items()
        ]

    def _cells(self, row: dict[str, Any]) -> str:
        shown = [f"{v:.4g}" if v is not None else "-" for v in (row["last"], row["best"])]
        return f"{self.metric} {shown[0]} / best {shown[1]}" if not self._tty() else " / ".join(shown)
