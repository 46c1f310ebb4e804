"""One epoch's metrics as plain floats: what tracking logs, what the epoch line prints, what Tune can report.

Epoch convention: ``epoch`` is Lightning's ``trainer.current_epoch`` at the epoch's end — the 0-based index of the
epoch just finished — and MLflow steps use that index. A count of finished epochs (what a person reads, what Ray
Tune's ``training_iteration`` counts) is ``epoch + 1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lightning.pytorch as L

PREFIXES = ("train/", "val/")


def stage_metrics(logged: Mapping[str, Any]) -> dict[str, float]:
    """The ``train/*`` and ``val/*`` values of ``logged`` (e.g. ``trainer.callback_metrics``) as floats, as logged
    (non-finite ones stay non-finite)."""
    return {k: float(v) for k, v in logged.items() if k.startswith(PREFIXES)}


def epoch_metrics(trainer: L.Trainer) -> dict[str, float]:
    """``stage_metrics`` of this epoch (one host sync per epoch), plus ``train/lr`` and ``epoch`` (0-based).

    ``train/lr`` is the live rate of the first optimizer's first group, present when the trainer has an optimizer.
    """
    metrics = stage_metrics(trainer.callback_metrics)
    if trainer.optimizers:
        metrics["train/lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
    metrics["epoch"] = float(trainer.current_epoch)
    return metrics
