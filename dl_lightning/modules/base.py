"""What every family shares: hyperparameter handling, optimizers, PBT re-application, export, and (for the
supervised families) loss, metrics and logging."""

from __future__ import annotations

from typing import Any, ClassVar

import lightning.pytorch as L
import torch
import torch.nn.functional as F
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


class RunningMean(Metric):
    """The mean of every value added since the last reset, synced across ranks (sums) when computed.

    ``add`` is the per-step path: two in-place tensor additions and no host sync — a tenth of torchmetrics'
    ``MeanMetric.update`` (input casting, NaN checks, weight broadcasting, the update wrapper), which was most of
    what dlforge added to a short training step. A NaN stays in the mean: a diverged loss is not hidden.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.zeros(()), dist_reduce_fx="sum")  # the default dtype, as MeanMetric: MPS has
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")  # no float64

    def add(self, total: torch.Tensor, count: int) -> None:
        """Add ``count`` values whose sum is ``total`` (a 0-d tensor; detached)."""
        self.total.add_(total.detach())  # in place: no attribute assignment through nn.Module's __setattr__
        self.count.add_(count)
        # what Metric.update's wrapper records (compute() then knows it has data and recomputes); plain attributes
        # live in __dict__, so writing there skips the Module and Metric __setattr__ checks, ~10 µs a step
        state = self.__dict__
        state["_update_count"] += 1
        state["_computed"] = None

    def update(self, values: torch.Tensor) -> None:
        """Add every element of ``values``."""
        self.total += values.detach().sum()
        self.count += values.numel()

    def compute(self) -> torch.Tensor:
        return self.total / self.count


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
        self.train_score = RunningMean()
        self.train_metrics = MetricCollection({score: self.train_score}, prefix="train/")
        self.val_metrics = full.clone(prefix="val/")
        self.test_metrics = full.clone(prefix="test/")
        # Mean loss per stage, weighted by batch size and synced across ranks when computed; a NaN stays in the
        # mean (dropping it would hide a diverged validation).
        self.train_loss, self.val_loss, self.test_loss = (RunningMean() for _ in STAGES)
        self._logged: set[str] = set()  # stages whose metric objects are registered with Lightning this epoch
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

    def on_train_epoch_start(self) -> None:
        self._logged.discard("train")

    def on_validation_epoch_start(self) -> None:
        self._logged.discard("val")
        self._outputs["val"].clear()

    def on_validation_epoch_end(self) -> None:
        self._update_metrics("val")

    def on_test_epoch_start(self) -> None:
        self._logged.discard("test")
        self._outputs["test"].clear()

    def on_test_epoch_end(self) -> None:
        self._update_metrics("test")

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
            if stage == "train":  # hits per example, summed on the device: no host sync per step
                self.train_score.add((out.detach().argmax(dim=1) == y).sum(), len(y))
                return loss
            inputs = (out.softmax(dim=1), y)
        else:
            pred, y = out.reshape(-1), y.reshape(-1).to(out.dtype)  # (B,) each; targets may arrive as (B, 1)
            loss = F.mse_loss(pred, y)
            if stage == "train":
                self.train_score.add((pred.detach() - y).square().sum(), len(y))
                return loss
            inputs = (pred, y)
        self._outputs[stage].append(inputs)
        return loss

    def _update_metrics(self, stage: str) -> None:
        """Update the stage's metric set once with all of the epoch's batches, then log its values and reset it.

        One update per epoch instead of one per batch: each torchmetrics update checks its inputs and does its
        bookkeeping per call, six metrics at a time — per batch that was most of what validation cost beyond
        the forward passes. The values are the same; every rank updates its own and compute() syncs them.
        """
        outputs, self._outputs[stage] = self._outputs[stage], []
        if not outputs:
            return
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        metrics.update(*(torch.cat(parts) for parts in zip(*outputs, strict=True)))
        # compute() syncs the states across ranks, so every rank logs the same values; sync_dist averages those
        # equal values (one all-reduce each) and keeps Lightning from warning that epoch values are unsynced
        self.log_dict(metrics.compute(), sync_dist=True)
        metrics.reset()

    def _track(self, stage: str, loss: torch.Tensor, batch_size: int) -> None:
        """Add the batch's loss to the stage's mean; hand the stage's metric objects to Lightning once per epoch.

        Lightning computes, syncs, logs and resets a logged metric object at epoch end however often it was
        handed over, and each ``self.log`` call walks Lightning's whole result collection: calling it every step
        was most of dlforge's per-step overhead over a plain PyTorch loop (docs/benchmarks.md).
        """
        mean_loss: RunningMean = getattr(self, f"{stage}_loss")
        mean_loss.add(loss.detach() * batch_size, batch_size)  # the batch-size-weighted mean over examples
        if stage in self._logged:
            return
        self.log(f"{stage}/loss", mean_loss, on_step=False, on_epoch=True)
        if stage == "train":  # val/test metric sets are logged by _update_metrics at their epoch's end
            self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        self._logged.add(stage)

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
