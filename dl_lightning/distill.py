"""Knowledge distillation (Hinton et al. 2015): a student learns from a frozen teacher's outputs and the labels.

Classification: ``α · CE(student, y) + (1 − α) · T² · KL(softmax(teacher/T) ‖ softmax(student/T))``. The T² keeps
the soft term's gradients at the same scale as the hard term's whatever the temperature (they shrink as 1/T²).
Regression: ``α · MSE(student, y) + (1 − α) · MSE(student, teacher)``; the temperature plays no part.

Following Beyer et al. 2022 ("a good teacher is patient and consistent"), teacher and student always see the very same
input — whatever augmentation the data module applied to the batch — and, with ``mixup`` > 0, the batch is extended by
mixed copies of its own examples (function matching: the teacher labels any input, so the student learns the
teacher's function between the training points too, not only at them). On a mixed copy the hard term is mixup's
blended label (Zhang et al. 2018), the very target the twin gets there: with the soft term alone, the student copied
the teacher's mistakes between the points too, and ended no better than its teacher (docs/benchmarks.md).

A gain is only the teacher's if the student's from-scratch twin gets the same recipe: ``DistillModule`` without a
teacher is that twin (the same mixed copies, mixup's blended labels on them). :class:`EnsembleTeacher` averages several
teachers' softened outputs (Hinton et al. 2015), a stronger teacher than any one of them where they disagree.
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
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """The blended loss of one batch; ``student``/``teacher`` ``(B, K)`` logits or ``(B, 1)`` values.

    ``weight``: per-class weights of the hard term (``data.class_weights=balanced``), as in the student's own fit.
    """
    hard = label_loss(student, target, task, weight)
    if task == "regression":
        pred = student.reshape(-1)  # (B,)
        soft = F.mse_loss(pred, teacher.reshape(-1).to(pred.dtype))
        return alpha * hard + (1.0 - alpha) * soft
    t = temperature
    # KL(p_teacher ‖ p_student) with both as log-probabilities; batchmean is the true KL per example
    soft = F.kl_div(
        F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), reduction="batchmean", log_target=True
    )
    return alpha * hard + (1.0 - alpha) * (t * t) * soft


def label_loss(
    student: torch.Tensor, target: torch.Tensor, task: str, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """The plain supervised loss: cross-entropy of ``(B, K)`` logits (classes weighted by ``weight``), or MSE of
    ``(B, 1)`` values."""
    if task == "regression":
        pred = student.reshape(-1)  # (B,)
        return F.mse_loss(pred, target.reshape(-1).to(pred.dtype))
    return F.cross_entropy(student, target.long(), weight=weight)


def mix_inputs(x: torch.Tensor, concentration: float) -> torch.Tensor:
    """Each example blended with another of the batch, weight ``λ ~ Beta(c, c)`` per example (mixup's inputs)."""
    return mix_batch(x, concentration)[0]


def mix_batch(x: torch.Tensor, concentration: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mixed, λ, partner)`` with ``mixed[i] = λ[i] · x[i] + (1 − λ[i]) · x[partner[i]]``, ``λ ~ Beta(c, c)`` (B,)."""
    lam = torch.distributions.Beta(concentration, concentration).sample((len(x),)).to(x)  # (B,)
    partner = torch.randperm(len(x), device=x.device)  # (B,)
    weight = lam.reshape(-1, *([1] * (x.dim() - 1)))  # (B, 1, ...) broadcasts over features, steps, pixels
    return weight * x + (1.0 - weight) * x[partner], lam, partner


def mixed_label_loss(
    out: torch.Tensor,
    y: torch.Tensor,
    lam: torch.Tensor,
    partner: torch.Tensor,
    task: str,
    weight: torch.Tensor | None = None,
):
    """Mixup's own loss (Zhang et al. 2018) on mixed inputs: the labels blended with the inputs' weights (and each
    label's class weight, when ``weight`` is given)."""
    if task == "regression":
        target = lam * y.to(lam) + (1.0 - lam) * y[partner].to(lam)  # (B,)
        return F.mse_loss(out.reshape(-1), target)
    ce = F.cross_entropy(out, y.long(), weight=weight, reduction="none")  # (B,)
    ce_partner = F.cross_entropy(out, y[partner].long(), weight=weight, reduction="none")
    return (lam * ce + (1.0 - lam) * ce_partner).mean()


class DistillModule(L.LightningModule):
    """Trains ``student`` (a family LightningModule) against a frozen ``teacher`` net.

    With ``teacher=None`` it is the student's from-scratch twin: the very same recipe — batches, mixed copies,
    weights, optimizer — with labels where the teacher would speak (mixup's blended labels on the mixed copies),
    so a distilled-versus-twin gap is the teacher's and nothing else.

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
        teacher: nn.Module | None,
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
        if teacher is not None:
            teacher = teacher.eval().requires_grad_(False)
        object.__setattr__(self, "teacher", teacher)  # not a submodule, on purpose
        self.task, self.alpha, self.temperature = task, alpha, temperature
        self.train_loss = MeanMetric(nan_strategy="disable")  # per-example mean, synced across ranks when computed
        self._loss_logged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device).eval()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        mixing = self.mixup > 0 and x.is_floating_point()  # token ids do not blend
        mixed, lam, partner = mix_batch(x, self.mixup) if mixing else (x[:0], None, None)
        seen = torch.cat([x, mixed])  # (B', ...): the real examples, then their mixed copies
        out = self.student(seen)  # (B', K)
        if self.teacher is None:
            loss = self._twin_loss(out, y, lam, partner)
        else:
            loss = self._distill_loss(out, seen, y, lam, partner)
        self.train_loss.update(loss.detach().expand(len(x)))  # one entry per example, as SupervisedModule._track
        if not self._loss_logged:  # the metric object, handed over once: Lightning computes it at epoch end
            self.log("train/loss", self.train_loss, on_step=False, on_epoch=True)
            self._loss_logged = True
        return loss

    def _distill_loss(self, out: torch.Tensor, seen: torch.Tensor, y: torch.Tensor, lam: Any, partner: Any):
        b = len(y)
        with torch.no_grad():
            soft_targets = self.teacher(seen)  # (B', K)
        weight = self._class_weight()
        loss = distillation_loss(
            out[:b], soft_targets[:b], y, task=self.task, alpha=self.alpha, temperature=self.temperature, weight=weight
        )
        if len(seen) > b:  # the mixed copies: the teacher's targets, and mixup's blended labels as the hard term
            soft = distillation_loss(
                out[b:], soft_targets[b:], y, task=self.task, alpha=0.0, temperature=self.temperature
            )
            hard = mixed_label_loss(out[b:], y, lam, partner, self.task, weight)
            loss = loss + (self.alpha * hard + (1.0 - self.alpha) * soft) * (1.0 - self.alpha)
        return loss

    def _twin_loss(self, out: torch.Tensor, y: torch.Tensor, lam: Any, partner: Any) -> torch.Tensor:
        # the from-scratch twin: labels where the teacher would speak — plain loss on the real examples,
        # mixup's blended labels on the mixed copies, each weighted as the distilled student's are
        b, weight = len(y), self._class_weight()
        loss = label_loss(out[:b], y, self.task, weight)
        if len(out) > b:
            loss = loss + mixed_label_loss(out[b:], y, lam, partner, self.task, weight) * (1.0 - self.alpha)
        return loss

    def _class_weight(self) -> torch.Tensor | None:
        # data.class_weights=balanced: the student's own weights (set from the train split), so its hard-label term
        # weighs the classes as its own fit would
        return getattr(self.student, "class_weight", None)

    def on_train_epoch_start(self) -> None:
        self._loss_logged = False
        self.student.on_train_epoch_start()

    def on_validation_epoch_start(self) -> None:
        self.student.on_validation_epoch_start()

    def on_test_epoch_start(self) -> None:
        self.student.on_test_epoch_start()

    def on_validation_epoch_end(self) -> None:  # the student logs its val metrics here, once per epoch
        self._as_student().on_validation_epoch_end()

    def on_test_epoch_end(self) -> None:
        self._as_student().on_test_epoch_end()

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


class EnsembleTeacher(nn.Module):
    """Several frozen nets as one teacher (Hinton et al. 2015): their softened outputs averaged.

    Classification: returns ``T · log(mean_k softmax(z_k / T))``, logits whose softmax at temperature ``T`` is exactly
    the members' mean softened distribution, so :func:`distillation_loss` at that ``T`` matches the ensemble.
    Regression: the members' mean output. The members are not registered children: never trained nor saved.
    """

    def __init__(self, members: list[nn.Module], task: str, temperature: float):
        super().__init__()
        if not members:
            raise ValueError("an ensemble teacher needs at least one member")
        object.__setattr__(self, "members", [m.eval().requires_grad_(False) for m in members])
        self.task, self.temperature = task, temperature

    def to(self, *args: Any, **kwargs: Any) -> EnsembleTeacher:
        for m in self.members:
            m.to(*args, **kwargs)
        return self

    def train(self, mode: bool = True) -> EnsembleTeacher:
        for m in self.members:
            m.train(mode)
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = torch.stack([m(x) for m in self.members])  # (k, B, K)
        if self.task == "regression":
            return outs.mean(0)
        t = self.temperature
        log_p = torch.logsumexp(F.log_softmax(outs / t, dim=-1), dim=0) - torch.log(torch.tensor(float(len(outs))))
        return t * log_p  # (B, K)
