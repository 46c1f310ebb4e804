"""What every family shares: hyperparameter handling, optimizers, PBT re-application, export, and (for the
supervised families) loss, metrics and logging."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torchmetrics import MeanSquaredError, Metric, MetricCollection, R2Score
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from torchmetrics.regression import MeanAbsoluteError

from dl_lightning.modules.optim import (
    build_optimizer,
    build_scheduler,
    l1_penalty,
    param_groups,
    rescale_lr,
    resolve_optim,
    set_dropout,
)

# Checkpoint key naming the family, so ``registry.load_model`` can rebuild the right class from plain hparams.
FAMILY_KEY = "dlforge_family"
STAGES = ("train", "val", "test")


# Batches a RunningMean holds before folding them in: bounds the memory held (train outputs) to this many batches.
HOLD_BATCHES = 64


def weighted_loss_sum(batches: list[tuple[torch.Tensor, ...]], counts: list[int]) -> torch.Tensor:
    """Σ batch mean loss × batch size: the sum of the per-example losses of ``(loss,)`` batches."""
    losses = torch.stack([loss for (loss,) in batches])
    return (losses * torch.tensor(counts, dtype=losses.dtype, device=losses.device)).sum()


def hit_count(batches: list[tuple[torch.Tensor, ...]], counts: list[int]) -> torch.Tensor:
    """How many ``(logits (B, K), targets (B,))`` rows have their target as the top class."""
    return (torch.cat([out for out, _ in batches]).argmax(dim=1) == torch.cat([y for _, y in batches])).sum()


def squared_error_sum(batches: list[tuple[torch.Tensor, ...]], counts: list[int]) -> torch.Tensor:
    """Σ (prediction − target)² over ``(predictions (B,), targets (B,))`` batches."""
    return (torch.cat([pred for pred, _ in batches]) - torch.cat([y for _, y in batches])).square().sum()


class RunningMean(Metric):
    """The mean of every value added since the last reset, synced across ranks (sums) when computed.

    ``hold`` is the per-step path: it keeps references to the batch's tensors — no tensor op, no host sync — and
    ``fold`` (e.g. :func:`hit_count`) turns up to ``HOLD_BATCHES`` of them into one sum at once, before any
    compute or sync; per step that is a list append instead of the 4-8 small tensor ops (~40 µs on CPU, as many
    kernel launches on a GPU) that were most of what dlforge added to a short training step. ``add`` adds a sum
    at once. A NaN stays in the mean: a diverged loss is not hidden.
    """

    full_state_update = False

    def __init__(self, fold: Callable[[list[tuple[torch.Tensor, ...]], list[int]], torch.Tensor] | None = None):
        super().__init__()
        self.add_state("total", torch.zeros(()), dist_reduce_fx="sum")  # the default dtype, as MeanMetric: MPS has
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")  # no float64
        self.fold = fold  # a module-level function: the metric pickles (ddp_spawn)
        self._held: list[tuple[torch.Tensor, ...]] = []
        self._held_counts: list[int] = []

    def add(self, total: torch.Tensor, count: int) -> None:
        """Add ``count`` values whose sum is ``total`` (a 0-d tensor; detached)."""
        self.total.add_(total.detach())  # in place: no attribute assignment through nn.Module's __setattr__
        self.count.add_(count)
        self._record_update()

    def hold(self, *tensors: torch.Tensor, count: int) -> None:
        """Add a batch of ``count`` values, given as the tensors ``fold`` sums (detached here; kept until folded)."""
        self._held.append(tuple(t.detach() for t in tensors))
        self._held_counts.append(count)
        self._record_update()
        if len(self._held) >= HOLD_BATCHES:
            self._fold_held()

    def _record_update(self) -> None:
        # what Metric.update's wrapper records (compute() then knows it has data and recomputes); plain attributes
        # live in __dict__, so writing there skips the Module and Metric __setattr__ checks, ~10 µs a step
        state = self.__dict__
        state["_update_count"] += 1
        state["_computed"] = None

    def _fold_held(self) -> None:
        held, counts, self._held, self._held_counts = self._held, self._held_counts, [], []
        if held:
            self.total.add_(self.fold(held, counts))  # type: ignore[misc]
            self.count.add_(sum(counts))

    def sync(self, *args: Any, **kwargs: Any) -> None:
        """Fold the held batches in first: compute() syncs the states across ranks before it reads them."""
        self._fold_held()
        super().sync(*args, **kwargs)

    def reset(self) -> None:
        self._held, self._held_counts = [], []
        super().reset()

    def update(self, values: torch.Tensor) -> None:
        """Add every element of ``values``."""
        self.total += values.detach().sum()
        self.count += values.numel()

    def compute(self) -> torch.Tensor:
        return self.total / self.count


class TrainEpochValues(L.Callback):
    """Has a :class:`SupervisedModule` publish its train epoch values (``train/loss``, ``train/acc`` or ``/mse``)
    in ``trainer.callback_metrics`` at the epoch's end, before the callbacks after it read them.

    Without it the module hands its train metric objects to ``self.log`` once per epoch (~0.4 ms of CPU a call,
    two calls); the module's own ``on_train_epoch_end`` would come too late, as Lightning runs it after every
    callback that does not monitor a metric (the epoch line, tracking). ``pipelines.train.fit_module`` puts it
    first in every fit's callbacks.
    """

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if isinstance(pl_module, SupervisedModule):
            pl_module.publish_train_epoch()


def example_input(data: dict, batch: int = 2) -> torch.Tensor:
    """A batch shaped and typed like real input: int64 token ids (1 = unknown, not padding) or float zeros."""
    shape = (batch, *data["input_shape"])
    return torch.ones(shape, dtype=torch.long) if data["kind"] == "text" else torch.zeros(shape)


class FamilyModule(L.LightningModule):
    """Base of every family. Subclasses call ``save_hyperparameters()`` then ``init_family(data, optim)``.

    Hyperparameters are plain types only (``data`` is ``DataSpec.to_dict()``, ``optim`` a dict of OptimConfig
    fields plus ``max_epochs``), so checkpoints load with ``torch.load(weights_only=True)``.
    """

    family: ClassVar[str]  # the name its record is registered under (dl_lightning.families)
    # names of parameters loaded from an earlier model (model.init_from): optim.backbone_lr_scale applies to them
    backbone_names: frozenset[str] = frozenset()

    def init_family(self, data: dict, optim: dict | None) -> None:
        # the data kind was checked against the family's record by registry.build_model
        self.data_spec = data
        self.optim_cfg = resolve_optim(optim)
        self._pending_optim = False  # apply_hyperparameters called before the optimizers existed

    def export_net(self) -> tuple[nn.Module, torch.Tensor]:
        """The plain net to export and an example input for it (raw-scale in, model outputs out)."""
        return self.net, self.example_input_array

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[FAMILY_KEY] = self.family

    # ------------------------------------------------------------ hyperparameters (PBT)

    def apply_hyperparameters(self, optim: dict, dropout: float | None = None) -> None:
        """Make ``optim`` (any subset of its keys) and ``dropout`` the live values.

        Ray PBT restores a checkpoint whose optimizer state carries the *old* lr and weight decay (ray#36660):
        call this after building the module. It updates l1/dropout now, and the optimizer param groups and lr
        schedules now if they exist, else right after Lightning restores them (``on_train_start``).
        """
        self.optim_cfg = resolve_optim({**self.optim_cfg, **optim})
        self.hparams["optim"] = dict(self.optim_cfg)
        if dropout is not None:
            set_dropout(self, dropout)
            self.hparams["dropout"] = dropout
        if self._trainer is not None and self._trainer.optimizers:
            self._apply_to_optimizers()
        else:
            self._pending_optim = True

    def on_train_start(self) -> None:
        if self._pending_optim:
            self._apply_to_optimizers()
            self._pending_optim = False

    def _apply_to_optimizers(self) -> None:
        cfg = self.optim_cfg
        schedulers = [conf.scheduler for conf in self.trainer.lr_scheduler_configs]
        for opt in self.trainer.optimizers:
            rescale_lr(opt, schedulers, cfg["lr"])
            for group in opt.param_groups:
                group["weight_decay"] = cfg["weight_decay"]
                if "momentum" in group:  # sgd and rmsprop only
                    group["momentum"] = cfg["momentum"]


class SupervisedModule(FamilyModule):
    """A net ``self.net`` trained with cross-entropy (classification) or MSE (regression) on ``(x, y)``.

    Logs ``{train,val,test}/loss`` and metrics per epoch: classification ``acc`` (plus ``balanced_acc``,
    ``precision``, ``recall``, ``f1``, ``auroc`` — macro — on val/test), regression ``mse`` (plus ``mae``, ``r2``).
    ``train/loss`` includes the L1 penalty; val/test losses are the data loss alone — for classification the
    unweighted cross-entropy, i.e. the log loss, logged once under ``loss``.
    """

    net: nn.Module

    def init_supervised(self, data: dict, optim: dict | None) -> None:
        self.init_family(data, optim)
        self.example_input_array = example_input(data)
        self.classification = data["task"] == "classification"
        full = classification_metrics(data["num_outputs"]) if self.classification else regression_metrics()
        # Train: one running mean per epoch — accuracy is the mean of per-example hits, MSE of squared errors —
        # the values of torchmetrics' Accuracy/MSE at a fifth of their per-step cost, and no AUROC buffers.
        score = "acc" if self.classification else "mse"
        self.train_score = RunningMean(hit_count if self.classification else squared_error_sum)
        self.train_metrics = MetricCollection({score: self.train_score}, prefix="train/")
        self.val_metrics = full.clone(prefix="val/")
        self.test_metrics = full.clone(prefix="test/")
        # Mean loss per stage, weighted by batch size and synced across ranks when computed; a NaN stays in the
        # mean (dropping it would hide a diverged validation).
        self.train_loss, self.val_loss, self.test_loss = (RunningMean(weighted_loss_sum) for _ in STAGES)
        self._train_logged = False  # train metric objects registered with Lightning this epoch
        self._publishes_train = False  # a TrainEpochValues callback publishes the train values (on_fit_start)
        # val/test batches' metric inputs, handed to the metric set in one update at the epoch's end
        self._outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"val": [], "test": []}
        # data.class_weights=balanced: derived from the train split at build time; not persistent, so checkpoints
        # keep their tensors and a resumed fit recomputes the same weights from the same split
        self.register_buffer("class_weight", None, persistent=False)

    def set_class_weights(self, weights: torch.Tensor | None) -> None:
        """Weight of each class in the training cross-entropy (``None``: all 1); val/test losses stay unweighted."""
        self.class_weight = None if weights is None else weights.detach().float().to(self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, num_outputs): logits or regression values

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self._data_loss(batch, "train")
        if self.optim_cfg["l1"] > 0:
            loss = loss + self.optim_cfg["l1"] * l1_penalty(self.net)
        self._track("train", loss, len(batch[0]))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._track("val", self._data_loss(batch, "val"), len(batch[0]))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._track("test", self._data_loss(batch, "test"), len(batch[0]))

    def on_fit_start(self) -> None:
        self._publishes_train = any(isinstance(cb, TrainEpochValues) for cb in self.trainer.callbacks)

    def on_train_epoch_start(self) -> None:
        self._train_logged = False
        if self._publishes_train:  # what Lightning's reset of a logged metric object does at the epoch's end
            self.train_loss.reset()
            self.train_metrics.reset()

    def publish_train_epoch(self) -> None:
        """Publish the epoch's train loss and score (synced across ranks) and reset them; nothing without a step."""
        if not self._publishes_train or self.train_loss.update_count == 0:
            return
        self._publish({"train/loss": self.train_loss.compute(), **self.train_metrics.compute()})
        self.train_loss.reset()
        self.train_metrics.reset()

    def on_validation_epoch_start(self) -> None:
        self._start_epoch("val")

    def on_validation_epoch_end(self) -> None:
        self._update_metrics("val")

    def on_test_epoch_start(self) -> None:
        self._start_epoch("test")

    def on_test_epoch_end(self) -> None:
        self._update_metrics("test")

    def _start_epoch(self, stage: str) -> None:
        """Forget what an interrupted epoch of ``stage`` left behind."""
        self._outputs[stage].clear()
        getattr(self, f"{stage}_loss").reset()

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        out = self(x)
        return out.softmax(dim=1) if self.classification else out.squeeze(1)

    def _data_loss(self, batch: Any, stage: str) -> torch.Tensor:
        """Data loss of one batch; keeps what the stage's metrics need (train: running sums; val/test: the batch's
        outputs, handed to the metric set at the epoch's end)."""
        x, y = batch[0], batch[1]
        out = self(x)  # (B, K)
        if self.classification:
            y = y.long()
            loss = F.cross_entropy(out, y, weight=self.class_weight if stage == "train" else None)
            if stage == "train":  # hits per example, counted when folded: no tensor op or host sync per step
                self.train_score.hold(out, y, count=len(y))
                return loss
            inputs = (out.softmax(dim=1), y)
        else:
            pred, y = out.reshape(-1), y.reshape(-1).to(out.dtype)  # (B,) each; targets may arrive as (B, 1)
            loss = F.mse_loss(pred, y)
            if stage == "train":
                self.train_score.hold(pred, y, count=len(y))
                return loss
            inputs = (pred, y)
        self._outputs[stage].append(inputs)
        return loss

    def _update_metrics(self, stage: str) -> None:
        """Update the stage's metric set once with all of the epoch's batches, then publish its values and the
        stage's mean loss, and reset both.

        One update per epoch instead of one per batch: each torchmetrics update checks its inputs and does its
        bookkeeping per call, six metrics at a time — per batch that was most of what validation cost beyond
        the forward passes. The values are the same; every rank updates its own and compute() syncs them.
        """
        outputs, self._outputs[stage] = self._outputs[stage], []
        if not outputs:
            return
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        mean_loss: RunningMean = getattr(self, f"{stage}_loss")
        metrics.update(*(torch.cat(parts) for parts in zip(*outputs, strict=True)))
        # compute() syncs the states across ranks, so every rank holds the same values
        self._publish({f"{stage}/loss": mean_loss.compute(), **metrics.compute()})
        metrics.reset()
        mean_loss.reset()

    def _publish(self, values: dict[str, torch.Tensor]) -> None:
        """Make epoch values (already synced across ranks) what callbacks read in ``trainer.callback_metrics``.

        During a fit they are written there directly, as Lightning's own ddp_spawn launcher does: each
        ``self.log`` call costs ~0.4 ms of CPU (Lightning moves its result object to the device on every call),
        nine calls an epoch before — the largest part of what dlforge added to a short epoch (docs/benchmarks.md). A
        ``trainer.validate``/``test`` returns what was logged, so there they go through ``self.log``; sync_dist
        averages the equal values and keeps Lightning from warning that epoch values are unsynced. Either way
        validation's values are there from the module's ``on_validation_epoch_end`` on: for ``on_validation_end``
        hooks (checkpointing, early stopping) and every train-epoch-end hook.
        """
        trainer = self.trainer
        if trainer.state.fn != TrainerFn.FITTING:
            self.log_dict(values, sync_dist=True)
        elif not trainer.sanity_checking:  # Lightning keeps sanity-check values out of callback_metrics too
            trainer.callback_metrics.update(values)

    def _track(self, stage: str, loss: torch.Tensor, batch_size: int) -> None:
        """Add the batch's loss to the stage's mean; without a :class:`TrainEpochValues` callback, hand the train
        metric objects to Lightning once per epoch.

        Lightning computes, syncs, logs and resets a logged metric object at epoch end however often it was
        handed over, and each ``self.log`` call walks Lightning's whole result collection: calling it every step
        was most of dlforge's per-step overhead over a plain PyTorch loop (docs/benchmarks.md). Val/test losses
        are published with their metric sets at the epoch's end (``_update_metrics``).
        """
        mean_loss: RunningMean = getattr(self, f"{stage}_loss")
        mean_loss.hold(loss, count=batch_size)  # the batch-size-weighted mean over examples
        if stage != "train" or self._train_logged or self._publishes_train:
            return
        self.log("train/loss", mean_loss, on_step=False, on_epoch=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        self._train_logged = True

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(param_groups(self, self.backbone_names, self.optim_cfg), self.optim_cfg)
        scheduler = build_scheduler(optimizer, self.optim_cfg)
        if scheduler is None:
            return optimizer
        config: dict[str, Any] = {"scheduler": scheduler, "interval": "epoch"}
        if isinstance(scheduler, ReduceLROnPlateau):
            # not strict: a run without validation skips the plateau step with a warning instead of failing
            config |= {"monitor": "val/loss", "strict": False}
        return {"optimizer": optimizer, "lr_scheduler": config}


def classification_metrics(num_classes: int) -> MetricCollection:
    """Metrics over class probabilities ``(N, K)`` and integer targets ``(N,)``."""
    k = num_classes
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(k, average="micro"),
            "balanced_acc": MulticlassAccuracy(k, average="macro"),  # mean per-class recall: fair under imbalance
            "precision": MulticlassPrecision(k, average="macro"),
            "recall": MulticlassRecall(k, average="macro"),
            "f1": MulticlassF1Score(k, average="macro"),
            "auroc": MulticlassAUROC(k, average="macro"),
            # no log_loss: val/test ``loss`` is the unweighted cross-entropy, the same number (logged once)
        }
    )


def regression_metrics() -> MetricCollection:
    return MetricCollection({"mse": MeanSquaredError(), "mae": MeanAbsoluteError(), "r2": R2Score()})
