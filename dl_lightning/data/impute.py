"""Missing values in tables (``data.impute``): fill values fitted on the train split, applied inside the net.

Like the normalization, the fill lives in the net as a buffer, so a checkpoint, the exported ONNX graph (IsNaN +
Where) and ``dlforge predict`` replace an empty cell with the same value PyTorch did in training.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

STRATEGIES = ("mean", "median", "most_frequent")


def fit_fill(x_train: np.ndarray, strategy: str) -> tuple[float, ...]:
    """One fill value per feature column of ``x_train`` ``(N, F)``, from its non-missing values.

    ``most_frequent`` takes the smallest of the most common values (deterministic). A column with no value at all
    gets 0.0 — after standardization that is the column's mean anyway.
    """
    values = np.asarray(x_train, dtype=np.float64).reshape(len(x_train), -1)
    return tuple(_fill_column(values[:, j], strategy) for j in range(values.shape[1]))


def _fill_column(column: np.ndarray, strategy: str) -> float:
    present = column[~np.isnan(column)]
    if present.size == 0:
        return 0.0
    if strategy == "mean":
        return float(present.mean())
    if strategy == "median":
        return float(np.median(present))
    uniques, counts = np.unique(present, return_counts=True)  # sorted: ties go to the smallest value
    return float(uniques[int(np.argmax(counts))])


def apply_fill(x: np.ndarray, fill: tuple[float, ...]) -> np.ndarray:
    """``x`` with each NaN replaced by its column's fill value (a copy; ``x`` is unchanged)."""
    filled = np.array(x, dtype=np.float32, copy=True)
    rows, cols = np.nonzero(np.isnan(filled))
    filled[rows, cols] = np.asarray(fill, dtype=np.float32)[cols]
    return filled


class Impute(nn.Module):
    """Replaces NaN in ``(B, F)`` inputs by per-feature fill values held as a buffer (exports to ONNX)."""

    def __init__(self, fill: list[float]) -> None:
        super().__init__()
        self.register_buffer("fill", torch.tensor(fill, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(torch.isnan(x), self.fill.to(x.dtype), x)
