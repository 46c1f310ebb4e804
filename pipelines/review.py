"""Evaluation after a fit: learning curves, and the best checkpoint's predictions on the test split turned into a
confusion matrix and per-class report (classification) or a residual plot (regression).

It imports no mlflow: the caller hands it the run's metric history and logs the files it returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.config import Config

if TYPE_CHECKING:
    from pipelines.train import TrainResult

History = Mapping[str, Sequence[tuple[int, float]]]  # metric name → sorted (step, value)


def review_files(
    cfg: Config, module: Any, result: TrainResult, folder: Path, history: History, *, splits: Any = None
) -> list[Path]:
    """The review plots of a fit, written into ``folder``: learning curves, then the test-split evaluation.

    Args:
        module: the best checkpoint's LightningModule (``load_module``), or None: learning curves only.
        history: the run's ``train/*`` and ``val/*`` metric history; empty: no learning curves.
        splits: the data the fit used (``Splits``); None: loaded again from the config.

    Raises whatever plotting or inference raises: the caller decides that a failed plot does not fail the job.
    """
    files = [p for p in [learning_curve(history, folder)] if p]
    if module is not None and not _generative(cfg.model.family):
        files += evaluation_files(cfg, module, result, folder, splits=splits)
    return files


def _generative(family: str) -> bool:
    """A generative family (a GAN) has no labels to evaluate against."""
    from dl_lightning.registry import record_for

    return record_for(family).generative


def load_module(checkpoint: str, family: str | None = None) -> Any:
    """The LightningModule saved in ``checkpoint`` (any family; a class path only when it is ``family``)."""
    from dl_lightning.registry import load_model

    return load_model(checkpoint, allowed=family)


def learning_curve(history: History, folder: Path) -> Path | None:
    """``learning_curves.png`` from the metric history; None when there is none."""
    from pipelines.plots import plot_learning_curves

    return plot_learning_curves(dict(history), folder / "learning_curves.png") if history else None


def evaluation_files(cfg: Config, module: Any, result: TrainResult, folder: Path, *, splits: Any = None) -> list[Path]:
    """Predictions of the best checkpoint on the test split → confusion matrix + report, or residual plot.

    ``splits``: the data the fit used, when the caller holds it (the test split is then not loaded again).
    """
    import numpy as np
    import torch

    from dl_lightning.data.class_path import is_class_spec
    from pipelines import plots
    from pipelines.train import load_data

    if is_class_spec(cfg.data.source):  # a user's DataModule: its test data may not fit in memory, so not gathered
        print(f"review: {cfg.data.source} streams its data; the test-split plots are skipped", flush=True)
        return []
    x, y = (splits if splits is not None else load_data(cfg)).test
    net, _ = module.export_net()
    net.eval()
    with torch.no_grad():
        out = torch.cat([net(torch.from_numpy(x[i : i + 1024])) for i in range(0, len(x), 1024)]).float().numpy()
    if result.data.get("task") == "classification":
        names = [str(n) for n in result.data.get("class_names") or range(out.shape[1])]
        return plots.classification_review(y, np.argmax(out, axis=1), names, folder)
    return [plots.plot_residuals(y, out.reshape(-1), folder / "residuals.png")]
