"""Convolutional net: Conv2d over images ``(C, H, W)``, Conv1d over sequences ``(T, F)`` (F = channels)."""

from __future__ import annotations

import math

import torch
from torch import nn

from dl_lightning.nets.common import standardizer


def conv_block(dims: int, c_in: int, c_out: int, kernel_size: int, batch_norm: bool, pool: bool) -> nn.Sequential:
    """Conv (same padding) → (BatchNorm) → ReLU → (MaxPool ×2 down) in 1 or 2 spatial dims."""
    conv, norm, maxpool = {
        1: (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d),
        2: (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d),
    }[dims]
    # k//2 padding keeps the size for odd k (even k grows it by one: see _conv_size)
    layers: list[nn.Module] = [conv(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=not batch_norm)]
    if batch_norm:
        layers.append(norm(c_out))
    layers.append(nn.ReLU())
    if pool:
        layers.append(maxpool(2))
    return nn.Sequential(*layers)


GRID = 4  # the head sees at most GRID positions per spatial axis


def grid_pool(dims: int, sizes: list[int]) -> tuple[nn.Module, list[int]]:
    """An average pool that brings a feature map of ``sizes`` to at most GRID positions per axis, and the sizes
    it gives.

    Non-overlapping windows of ``ceil(size / GRID)`` with ``ceil_mode`` (the last window may be shorter): a plain
    AvgPool with static sizes, where ``AdaptiveAvgPool`` on sizes GRID does not divide exports as a tangle of
    gathers that static quantization handles badly.
    """
    kernel = [math.ceil(size / GRID) for size in sizes]
    if max(kernel) == 1:
        return nn.Identity(), list(sizes)
    pool = {1: nn.AvgPool1d, 2: nn.AvgPool2d}[dims](kernel, kernel, ceil_mode=True)
    return pool, [math.ceil(size / k) for size, k in zip(sizes, kernel, strict=True)]


class CNNNet(nn.Module):
    """Input ``(B, C, H, W)`` images or ``(B, T, F)`` sequences, raw scale → ``(B, num_outputs)``.

    Each conv block halves every spatial axis that is at least 4, so small inputs (8×8 digits, short sequences)
    keep a few positions. The head keeps *where* features are: the maps are average-pooled to a grid of at
    most 4 × 4 positions (4 for sequences) and flattened, rather than averaged to one vector — a 6 and a 9 share
    strokes and differ in where they are.
    """

    def __init__(
        self, data: dict, channels: list[int], kernel_size: int, batch_norm: bool, hidden: int, dropout: float
    ) -> None:
        super().__init__()
        self.sequence = data["kind"] == "sequence"
        shape = list(data["input_shape"])
        dims = 1 if self.sequence else 2
        c_in = shape[-1] if self.sequence else shape[0]
        sizes = shape[:1] if self.sequence else shape[1:]  # (T,) or (H, W)
        self.norm = standardizer(data)
        blocks = []
        for c_out in channels:
            pool = min(sizes) >= 4
            blocks.append(conv_block(dims, c_in, c_out, kernel_size, batch_norm, pool))
            sizes = [_conv_size(s, kernel_size) // (2 if pool else 1) for s in sizes]
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        self.pool, sizes = grid_pool(dims, sizes)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * math.prod(sizes), hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, data["num_outputs"]),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        if self.sequence:
            x = x.transpose(1, 2)  # (B, T, F) → (B, F, T): features are the conv channels
        h = self.pool(self.features(x))  # (B, C', ≤4, ≤4) or (B, C', ≤4)
        return self.head(h)  # (B, num_outputs)


def _conv_size(size: int, kernel_size: int) -> int:
    """Spatial size after a conv with ``kernel_size // 2`` padding: kept for odd kernels, one more for even."""
    return size + 2 * (kernel_size // 2) - kernel_size + 1
