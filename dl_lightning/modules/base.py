"""What every family shares: hyperparameter handling, optimizers, PBT re-application, export, and (for the
supervised families) loss, metrics and logging."""

from __future__ import annotations

from typing import Any, ClassVar

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torchmetrics import MeanMetric, MeanSquaredError, Metric, MetricCollection, R2Score
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from torchmetrics.regression import MeanAbsoluteError

from dl_lightning.errors import InputError
from dl_lightning.modules.optim import (
    build_optimizer,
    build_scheduler,
    l1_penalty,
    rescale_lr,
    resolve_optim,
    set_dropout,
)

# Checkpoint key naming the family, so ``registry.load_model`` can rebuild the right class from plain hparams.
FAMILY_KEY = "dlforge_family"


def example_input(data: dict, batch: int = 2) -> torch.Tensor:
    """A batch shaped and typed like real input: int64 token ids (1 = unknown, not padding) or float zeros."""
    shape = (batch, *data["input_shape"])
    return torch.ones(shape, dtype=torch.long) if data["kind"] == "text" else torch.zeros(shape)


class FamilyModule(L.LightningModule):
    """Base of every family. Subclasses call ``save_hyperparameters()`` then ``init_family(data, optim)``.

    Hyperparameters are plain types only (``data`` is ``DataSpec.to_dict()``, ``optim`` a dict of OptimConfig
    fields plus ``max_epochs``), so checkpoints load with ``torch.load(weights_only=True)``.
    """

    family: ClassVar[str]
    accepts: ClassVar[frozenset[str]]

    def init_family(self, data: dict, optim: dict | None) -> None:
        if data["kind"] not in self.accepts:
            kinds = " or ".join(sorted(self.accepts))
            raise InputError(f"model.family={self.family} needs {kinds} data but the data is {data['kind']}")
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

    Logs ``{train,val,test}/loss`` and metrics per epoch: classification ``acc`` (plus ``precision``,
    ``recall``, ``f1``, ``auroc`` — macro — and ``log_loss`` on val/test), regression ``mse`` (plus ``mae``,
    ``r2``).
    ``train/loss`` includes the L1 penalty; val/test losses are the data loss alone.
    """

    net: nn.Module

    def init_supervised(self, data: dict, optim: dict | None) -> None:
        self.init_family(data, optim)
        self.example_input_array = example_input(data)
        self.classification = data["task"] == "classification"
        full = classification_metrics(data["num_outputs"]) if self.classification else regression_metrics()
        cheap = ["acc"] if self.classification else ["mse"]  # train: no AUROC buffers filling up every step
        self.train_metrics = MetricCollection({k: full[k].clone() for k in cheap}, prefix="train/")
        self.train_loss = MeanMetric()  # weighted by batch size; synced across ranks when computed
        self._train_logged = False  # see training_step
        self.val_metrics = full.clone(prefix="val/")
        self.test_metrics = full.clone(prefix="test/")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, num_outputs): logits or regression values

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train", self.train_metrics)
        if self.optim_cfg["l1"] > 0:
            loss = loss + self.optim_cfg["l1"] * l1_penalty(self.net)
        self.train_loss.update(loss.detach(), weight=len(batch[0]))
        if not self._train_logged:
            # The metric objects are logged once per epoch, not every step: Lightning computes, syncs and resets
            # them at epoch end all the same, and each self.log call was most of dlforge's per-step overhead
            # over a plain PyTorch loop (docs/benchmarks.md).
            self.log("train/loss", self.train_loss, on_step=False, on_epoch=True)
            self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
            self._train_logged = True
        return loss

    def on_train_epoch_start(self) -> None:
        self._train_logged = False

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss = self._step(batch, "val", self.val_metrics)
        self.log("val/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(batch[0]))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        loss = self._step(batch, "test", self.test_metrics)
        self.log("test/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(batch[0]))

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        out = self(x)
        return out.softmax(dim=1) if self.classification else out.squeeze(1)

    def _step(self, batch: Any, stage: str, metrics: MetricCollection) -> torch.Tensor:
        """Data loss of one batch; updates ``metrics``, which Lightning computes and resets once per epoch."""
        x, y = batch[0], batch[1]
        out = self(x)  # (B, K)
        if self.classification:
            loss = F.cross_entropy(out, y.long())
            metrics.update(out.softmax(dim=1), y.long())
        else:
            pred, y = out.reshape(-1), y.reshape(-1).to(out.dtype)  # (B,) each; targets may arrive as (B, 1)
            loss = F.mse_loss(pred, y)
            metrics.update(pred, y)
        if stage != "train":  # train metrics: logged once per epoch by training_step
            self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.parameters(), self.optim_cfg)
        scheduler = build_scheduler(optimizer, self.optim_cfg)
        if scheduler is None:
            return optimizer
        config: dict[str, Any] = {"scheduler": scheduler, "interval": "epoch"}
        if isinstance(scheduler, ReduceLROnPlateau):
            # not strict: a run without validation skips the plateau step with a warning instead of failing
            config |= {"monitor": "val/loss", "strict": False}
        return {"optimizer": optimizer, "lr_scheduler": config}


class MeanCrossEntropy(Metric):
    """Log loss: mean ``-log p(true class)`` of probabilities ``(N, K)``."""

    higher_is_better = False
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        p_true = probs.gather(1, target.unsqueeze(1)).clamp_min(1e-12)  # (N, 1)
        self.total += -p_true.log().sum()
        self.count += target.numel()

    def compute(self) -> torch.Tensor:
        return self.total / self.count


def classification_metrics(num_classes: int) -> MetricCollection:
    """Metrics over class probabilities ``(N, K)`` and integer targets ``(N,)``."""
    k = num_classes
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(k, average="micro"),
            "precision": MulticlassPrecision(k, average="macro"),
            "recall": MulticlassRecall(k, average="macro"),
            "f1": MulticlassF1Score(k, average="macro"),
            "auroc": MulticlassAUROC(k, average="macro"),
            "log_loss": MeanCrossEntropy(),
        }
    )


def regression_metrics() -> MetricCollection:
    return MetricCollection({"mse": MeanSquaredError(), "mae": MeanAbsoluteError(), "r2": R2Score()})
