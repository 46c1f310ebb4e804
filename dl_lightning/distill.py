"""Knowledge distillation (Hinton et al. 2015): a student learns from a frozen teacher's outputs and the labels.

Classification: ``α · CE(student, y) + (1 − α) · T² · KL(softmax(teacher/T) ‖ softmax(student/T))``. The T² keeps
the soft term's gradients at the same scale as the hard term's whatever the temperature (they shrink as 1/T²).
Regression: ``α · MSE(student, y) + (1 − α) · MSE(student, teacher)``; the temperature plays no part.

Following Beyer et al. 2022 ("a good teacher is patient and consistent"), teacher and student always see the very same
input — whatever augmentation the data module applied to the batch — and, with ``mixup`` > 0, the batch is extended by
mixed copies of its own examples (function matching: the teacher labels any input, so the student learns the
teacher's function between the training points too, not only at them). Labels say nothing about a mixed input, so the
hard term covers the real examples only.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    target: torch.Tensor,
    *,
    task: str,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """The blended loss of one batch; ``student``/``teacher`` ``(B, K)`` logits or ``(B, 1)`` values."""
    if task == "regression":
        pred = student.reshape(-1)  # (B,)
        hard = F.mse_loss(pred, target.reshape(-1).to(pred.dtype))
        soft = F.mse_loss(pred, teacher.reshape(-1).to(pred.dtype))
        return alpha * hard + (1.0 - alpha) * soft
    hard = F.cross_entropy(student, target.long())
    t = temperature
    # KL(p_teacher ‖ p_student) with both as log-probabilities; batchmean is the true KL per example
    soft = F.kl_div(
        F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), reduction="batchmean", log_target=True
    )
    return alpha * hard + (1.0 - alpha) * (t * t) * soft


def mix_inputs(x: torch.Tensor, concentration: float) -> torch.Tensor:
    """Each example blended with another of the batch, weight ``λ ~ Beta(c, c)`` per example (mixup's inputs)."""
    lam = torch.distributions.Beta(concentration, concentration).sample((len(x),)).to(x)  # (B,)
    lam = lam.reshape(-1, *([1] * (x.dim() - 1)))  # (B, 1, ...) broadcasts over features, steps, pixels
    partner = x[torch.randperm(len(x), device=x.device)]
    return lam * x + (1.0 - lam) * partner


class DistillModule(L.LightningModule):
    """Trains ``student`` (a family LightningModule) against a frozen ``teacher`` net.

    Validation and test delegate to the student, so metric names (``val/acc``, ``test/mse``) and the optimizer
    (the student's own ``configure_optimizers``) are exactly those of a normal fit. Lightning calls hooks on the
    module it fits only, so the student's epoch-start hooks are called from ours: the student hands its metric
    objects to Lightning once per epoch, and without them its ``val/acc`` would stay at the first epoch's value
    and the checkpoint callback would keep the first epoch's weights as the best. The teacher is held outside
    the module's registered children: it is not trained, not saved in checkpoints, not wrapped by DDP, and never
    switched to train mode by Lightning; it runs in eval mode under ``no_grad``.
    """

    def __init__(
        self,
        student: L.LightningModule,
        teacher: nn.Module,
        task: str,
        alpha: float,
        temperature: float,
        mixup: float = 0.0,
    ):
        super().__init__()
        if not 0.0 <= alpha <= 1.0 or temperature <= 0 or mixup < 0:
            raise ValueError(
                f"need 0 ≤ alpha ≤ 1, temperature > 0 and mixup ≥ 0; got alpha={alpha}, temperature={temperature}, "
                f"mixup={mixup}"
            )
        self.save_hyperparameters("task", "alpha", "temperature", "mixup")
        self.mixup = mixup
        self.student = student
        object.__setattr__(self, "teacher", teacher.eval().requires_grad_(False))  # not a submodule, on purpose
        self.task, self.alpha, self.temperature = task, alpha, temperature
        self.train_loss = MeanMetric(nan_strategy="disable")  # per-example mean, synced across ranks when computed
        self._loss_logged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    def on_fit_start(self) -> None:
        self.teacher.to(self.device).eval()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        seen = torch.cat([x, mix_inputs(x, self.mixup)]) if self.mixup > 0 and x.is_floating_point() else x  # (B', ...)
        with torch.no_grad():
            soft_targets = self.teacher(seen)  # (B', K)
        out = self.student(seen)  # (B', K)
        loss = distillation_loss(
            out[: len(x)], soft_targets[: len(x)], y, task=self.task, alpha=self.alpha, temperature=self.temperature
        )
        if len(seen) > len(x):  # the mixed copies: the teacher's targets only, at the soft term's weight
            loss = loss + distillation_loss(
                out[len(x) :], soft_targets[len(x) :], y, task=self.task, alpha=0.0, temperature=self.temperature
            ) * (1.0 - self.alpha)
        self.train_loss.update(loss.detach().expand(len(x)))  # one entry per example, as SupervisedModule._track
        if not self._loss_logged:  # the metric object, handed over once: Lightning computes it at epoch end
            self.log("train/loss", self.train_loss, on_step=False, on_epoch=True)
            self._loss_logged = True
        return loss

    def on_train_epoch_start(self) -> None:
        self._loss_logged = False
        self.student.on_train_epoch_start()

    def on_validation_epoch_start(self) -> None:
        self.student.on_validation_epoch_start()

    def on_test_epoch_start(self) -> None:
        self.student.on_test_epoch_start()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._as_student().validation_step(batch, batch_idx)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._as_student().test_step(batch, batch_idx)

    def _as_student(self) -> L.LightningModule:
        # Lightning lets a module self.log() only inside the hook it is running; the student runs inside ours
        self.student._current_fx_name = self._current_fx_name
        return self.student

    def configure_optimizers(self) -> Any:
        return self.student.configure_optimizers()
