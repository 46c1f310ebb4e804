"""The training stage: the one training loop of the project (final fits and sweep trials both call ``train``)."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.utilities.model_helpers import is_overridden

from dl_lightning.data import DlforgeDataModule, Splits, load_splits
from dl_lightning.data.class_path import is_class_spec
from dl_lightning.data.user_datamodule import UserData, load_user_data
from dl_lightning.errors import InputError
from dl_lightning.metrics import stage_metrics
from dl_lightning.modules.base import TrainEpochValues
from dl_lightning.registry import build_model, kind_for_family, monitor_for, record_for
from pipelines import finetune
from pipelines.checkpoints import LAST, AtomicCheckpointIO, EpochSeed, LastCheckpoint
from pipelines.config import Config, DataConfig
from pipelines.guards import fit_guards


@dataclass(frozen=True)
class TrainResult:
    """What a fit hands forward: paths by value, test metrics, and whether this process is global rank 0."""

    output_dir: str
    best_checkpoint: str | None
    last_checkpoint: str | None
    metrics: dict[str, float]
    data: dict[str, Any]  # DataSpec.to_dict() of the data the model was trained on
    run_id: str | None = None
    is_global_zero: bool = True
    epochs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    wall_s: float | None = None  # the fit and test, for the model card

    def data_brief(self) -> dict[str, Any]:
        """The data facts worth a glance (summary.json, the logged model's metadata); the vocabulary stays in the
        checkpoint."""
        keep = ("kind", "task", "input_shape", "num_outputs", "class_names", "fingerprint")
        return {k: self.data[k] for k in keep if k in self.data}


def load_data(cfg: Config) -> Splits | UserData:
    """The config's data, split and described (or the user's DataModule, set up, and its spec); raises InputError
    on bad input before anything is written."""
    d = cfg.data
    if is_class_spec(d.source):
        return _user_data(cfg)
    return load_splits(
        d.source,
        target=d.target,
        text_column=d.text_column,
        kind=data_kind(cfg),
        task=d.task,
        image_size=d.image_size,
        max_len=d.max_len,
        max_vocab=d.max_vocab,
        val_fraction=d.val_fraction,
        test_fraction=d.test_fraction,
        seed=cfg.seed,
        impute=d.impute,
    )


def _user_data(cfg: Config) -> UserData:
    """``data.source=pkg.module:Class``: the user's LightningDataModule, its notes printed once per process."""
    d, defaults = cfg.data, DataConfig()
    changed = [f.name for f in dataclasses.fields(d) if getattr(d, f.name) != getattr(defaults, f.name)]
    data = load_user_data(d.source, d.args, changed=changed, kind=d.kind, task=d.task, num_classes=d.num_classes)
    for note in set(data.notes) - _SAID:
        _SAID.add(note)
        print(note, flush=True)
    return data


def make_datamodule(cfg: Config, data: Splits | UserData, *, sampler: str | None = None) -> L.LightningDataModule:
    """The DataModule a fit reads: the user's own, else dlforge's over the splits (``sampler`` defaults to
    ``data.sampler``)."""
    if isinstance(data, UserData):
        return data.datamodule
    return DlforgeDataModule(
        data,
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        augment=dataclasses.asdict(cfg.data.augment),
        sampler=cfg.data.sampler if sampler is None else sampler,
        seed=cfg.seed,
    )


def data_kind(cfg: Config) -> str | None:
    """The kind the family reads the data as (``data.kind``, or a 2-D array read as signals); cheap, so it also
    serves as the family/data check before any stage starts. Prints the one line a guessed kind comes with, once
    per process; raises InputError naming every fix when the family cannot take the data."""
    d = cfg.data
    choice = kind_for_family(cfg.model.family, d.source, kind=d.kind, target=d.target, text_column=d.text_column)
    if choice.note and choice.note not in _SAID:
        _SAID.add(choice.note)
        print(choice.note, flush=True)
    return choice.kind


_SAID: set[str] = set()  # notes already printed: a pre-check and the train stage in one process say it once


def optim_settings(cfg: Config) -> dict[str, Any]:
    return {**dataclasses.asdict(cfg.optim), "max_epochs": cfg.trainer.max_epochs}


def resolve_monitor(cfg: Config, task: str) -> tuple[str | None, str]:
    """The checkpoint/early-stopping metric and its mode; ``trainer.monitor=auto`` picks the family's default."""
    default, mode = monitor_for(cfg.model.family, task)
    if cfg.trainer.monitor == "auto":
        return default, mode
    name = cfg.trainer.monitor
    return name, "min" if name.endswith(("loss", "mse", "mae")) else "max"


def check_resources(cfg: Config) -> None:
    """Refuse more devices than this machine has, and precisions it cannot run, before starting processes."""
    t = cfg.trainer
    on_gpu = t.accelerator == "gpu" or (t.accelerator == "auto" and torch.cuda.is_available())
    available = torch.cuda.device_count() if on_gpu else (os.cpu_count() or 1)
    unit = "GPUs" if on_gpu else "CPU cores"
    if t.devices > available:
        raise InputError(f"trainer.devices={t.devices} but this machine has {available} {unit}; lower it")
    if t.precision == "16-mixed" and not on_gpu:
        raise InputError("trainer.precision=16-mixed needs a GPU; use bf16-mixed or 32 on CPU")
    if record_for(cfg.model.family).manual_optimization and (t.gradient_clip_val or t.accumulate_grad_batches > 1):
        raise InputError(
            f"model.family={cfg.model.family} optimizes manually; "
            "unset trainer.gradient_clip_val/accumulate_grad_batches"
        )
    if t.devices > 1 and t.strategy == "auto":
        raise InputError("trainer.devices>1 needs trainer.strategy=ddp (or ddp_spawn)")


def train(
    cfg: Config,
    *,
    resume: str | None = None,
    callbacks: Sequence[Callback] = (),
    run_id: str | None = None,
    test: bool = True,
    splits: Splits | UserData | None = None,
) -> TrainResult:
    """Fit the configured family on the configured data, then test the best checkpoint.

    Args:
        resume: a checkpoint to continue from (its epoch, optimizer and scheduler state are restored).
        callbacks: extra Lightning callbacks (a sweep adds its reporter here; tracking adds its own).
        run_id: the tracking run this fit belongs to, recorded in the result.
        test: test the best checkpoint after fitting (sweep trials skip it).
        splits: the config's data, when the caller already loaded it (``pipelines.preflight.check_data``).
    """
    started = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    splits = splits if splits is not None else load_data(cfg)  # the CLI loads (and checks) it before any run
    model = build_model(cfg.model.family, splits.spec, cfg.model.arch(), optim_settings(cfg))
    extra = finetune.prepare(cfg, model, splits)  # init_from weights, class weights (before --resume's state)
    datamodule = make_datamodule(cfg, splits)
    callbacks = [*_family_callbacks(cfg), *finetune.callbacks(cfg), *callbacks]
    trainer, checkpoint, metrics = fit_module(
        cfg, model, datamodule, splits.spec.task, callbacks=callbacks, resume=resume, test=test
    )
    return TrainResult(
        output_dir=str(Path(cfg.output_dir).absolute()),
        best_checkpoint=checkpoint.best_model_path or None,
        last_checkpoint=_existing(Path(checkpoint.dirpath) / LAST),
        metrics=metrics,
        data=splits.spec.to_dict(),
        run_id=run_id,
        is_global_zero=trainer.is_global_zero,
        epochs=trainer.current_epoch,
        extra=extra,
        wall_s=round(time.perf_counter() - started, 1),
    )


def _existing(path: Path) -> str | None:
    return str(path) if path.is_file() else None


def _family_callbacks(cfg: Config) -> list[Callback]:
    """The family's own callbacks, from its record (the GAN saves a grid of samples per epoch under ``samples``)."""
    record = record_for(cfg.model.family)
    return record.fit_callbacks(str(Path(cfg.output_dir).absolute()), cfg.model.arch())


def fit_module(
    cfg: Config,
    model: L.LightningModule,
    datamodule: L.LightningDataModule,
    task: str,
    *,
    callbacks: Sequence[Callback] = (),
    resume: str | None = None,
    test: bool = True,
) -> tuple[L.Trainer, ModelCheckpoint, dict[str, float]]:
    """The one fit loop: ``cfg.trainer``'s Trainer, best/last checkpoints in ``cfg.output_dir``, optional test.

    Guarantees: ``checkpoints/last.ckpt`` is the last completed epoch (or the SIGTERM point), ``best.ckpt`` the best
    monitored one; both are written atomically and only from a finite state (weights and monitored metric); each
    epoch's randomness depends on ``(seed, epoch)`` only, so resuming from ``last.ckpt`` repeats the uninterrupted
    run. After a test the model holds the best checkpoint's weights. ``train`` and the compress stage's student
    fits (``pipelines.compression.students``) both come through here.
    """
    checkpoint = _checkpoint_callback(cfg, task)
    # Guards before tracking's callback: a SIGTERM save keeps unsent metrics.
    guards = fit_guards(checkpoint.dirpath, monitor=checkpoint.monitor)
    every_epoch = [EpochSeed(cfg.seed), LastCheckpoint(checkpoint.dirpath)]
    # TrainEpochValues first: the train values are in callback_metrics before any other epoch-end hook reads them
    callbacks = [TrainEpochValues(), checkpoint, *every_epoch, *_stopping(cfg, task), *guards, *callbacks]
    trainer = _make_trainer(cfg, callbacks)
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume, weights_only=True)  # never unpickle code
    # a user's LightningModule without a test_step is fitted, not tested
    metrics = _test(trainer, model, datamodule, checkpoint) if test and is_overridden("test_step", model) else {}
    return trainer, checkpoint, metrics


def _make_trainer(cfg: Config, callbacks: list[Callback]) -> L.Trainer:
    t = cfg.trainer
    interactive = sys.stdout.isatty()
    return L.Trainer(
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        gradient_clip_val=t.gradient_clip_val or None,
        accumulate_grad_batches=t.accumulate_grad_batches,
        limit_train_batches=_limit(t.limit_train_batches),
        limit_val_batches=_limit(t.limit_val_batches),
        callbacks=[*callbacks, EpochBar() if interactive else EpochLine()],
        plugins=[AtomicCheckpointIO()],  # a full disk or a kill mid-write leaves the previous file whole
        logger=False,  # metrics go to the store through tracking's callback, not a Lightning logger
        default_root_dir=cfg.output_dir,
        enable_progress_bar=interactive,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=50,
    )


def _limit(value: float) -> float | int:
    """Lightning reads a float as a fraction and an int as a count of batches."""
    return int(value) if value > 1 else float(value)


def _checkpoint_callback(cfg: Config, task: str) -> ModelCheckpoint:
    monitor, mode = resolve_monitor(cfg, task)
    return ModelCheckpoint(
        dirpath=Path(cfg.output_dir).absolute() / "checkpoints",
        filename="best",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        save_last=False,  # Lightning 2.6 moved last.ckpt only with a new best: LastCheckpoint writes it every epoch
        enable_version_counter=False,
    )


def _stopping(cfg: Config, task: str) -> list[Callback]:
    monitor, mode = resolve_monitor(cfg, task)
    if not cfg.trainer.early_stopping_patience or monitor is None:
        return []
    return [EarlyStopping(monitor=monitor, mode=mode, patience=cfg.trainer.early_stopping_patience)]


def _test(trainer: L.Trainer, model: L.LightningModule, datamodule, checkpoint: ModelCheckpoint) -> dict:
    ckpt = "best" if checkpoint.best_model_path else None
    results = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
    return {k: float(v) for k, v in (results[0] if results else {}).items()}


class EpochLine(Callback):
    """One plain line per epoch when stdout is not a terminal (logs of cluster jobs, CI)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()  # a fit resumed mid-epoch (SLURM requeue) skips on_train_epoch_start

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        shown = stage_metrics(trainer.callback_metrics)
        values = "  ".join(f"{k} {v:.4g}" for k, v in sorted(shown.items()))
        took = time.perf_counter() - self._start
        print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  {values}  ({took:.1f}s)", flush=True)


class EpochBar(TQDMProgressBar):
    """Lightning's bar on a terminal, reading ``Epoch 3/6`` (counted from 1, like ``EpochLine``) and showing the
    last finished epoch's losses and monitored metric.

    The metrics are read once per epoch (one host sync, as ``EpochLine``), never per batch.
    """

    def __init__(self) -> None:
        super().__init__()
        self._shown: dict[str, str] = {}

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        # Lightning's, less its 0-based "Epoch N" (which it draws before any override could rename it)
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        batches = self.total_train_batches
        self.train_progress_bar.reset(total=None if batches == float("inf") else batches)
        self.train_progress_bar.initial = 0
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}{total}")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logged = stage_metrics(trainer.callback_metrics)
        # The losses and the monitored metric fit one terminal line; EpochLine and the store keep every metric.
        monitor = getattr(trainer.checkpoint_callback, "monitor", None)
        shown = {k: v for k, v in logged.items() if k.endswith("loss") or k == monitor} or logged
        self._shown = {k: f"{v:.4g}" for k, v in sorted(shown.items())}
        super().on_train_epoch_end(trainer, pl_module)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Lightning's items (none without a logger) and the last finished epoch's metrics, as text."""
        return {**super().get_metrics(trainer, pl_module), **self._shown}
