"""Convolutional net: Conv2d over images ``(C, H, W)``, Conv1d over sequences ``(T, F)`` (F = channels)."""

from __future__ import annotations

import torch
from torch import nn

from dl_lightning.nets.common import standardizer


def conv_block(dims: int, c_in: int, c_out: int, kernel_size: int, batch_norm: bool, pool: bool) -> nn.Sequential:
    """Conv (same padding) → (BatchNorm) → ReLU → (MaxPool ×2 down) in 1 or 2 spatial dims."""
    conv, norm, maxpool = {
        1: (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d),
        2: (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d),
    }[dims]
    # k//2 padding keeps the size for odd k (even k grows it by one; the global pool does not mind)
    layers: list[nn.Module] = [conv(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=not batch_norm)]
    if batch_norm:
        layers.append(norm(c_out))
    layers.append(nn.ReLU())
    if pool:
        layers.append(maxpool(2))
    return nn.Sequential(*layers)


class CNNNet(nn.Module):
    """Input ``(B, C, H, W)`` images or ``(B, T, F)`` sequences, raw scale → ``(B, num_outputs)``.

    Each conv block halves the spatial size while it is at least 4, so small inputs (8×8 digits, short
    sequences) keep a few positions for the global average pool that ends the stack.
    """

    def __init__(
        self, data: dict, channels: list[int], kernel_size: int, batch_norm: bool, hidden: int, dropout: float
    ) -> None:
        super().__init__()
        self.sequence = data["kind"] == "sequence"
        shape = list(data["input_shape"])
        dims = 1 if self.sequence else 2
        c_in = shape[-1] if self.sequence else shape[0]
        size = shape[0] if self.sequence else min(shape[1:])  # smallest spatial extent
        self.norm = standardizer(data)
        blocks = []
        for c_out in channels:
            pool = size >= 4
            blocks.append(conv_block(dims, c_in, c_out, kernel_size, batch_norm, pool))
            c_in, size = c_out, size // 2 if pool else size
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Linear(c_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, data["num_outputs"])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        if self.sequence:
            x = x.transpose(1, 2)  # (B, T, F) → (B, F, T): features are the conv channels
        h = self.features(x)  # (B, C', H', W') or (B, C', T')
        h = h.flatten(2).mean(dim=2)  # global average pool → (B, C'); a plain mean exports to ONNX everywhere
        return self.head(h)  # (B, num_outputs)
