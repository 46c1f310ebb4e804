"""Pieces shared by the nets: input standardization and the data facts every net reads."""

from __future__ import annotations

import torch
from torch import nn


class Standardize(nn.Module):
    """``(x - mean) / std`` with the train split's statistics held as buffers.

    Living inside the net (not in the data pipeline) lets an exported model take raw inputs. Statistics
    are per feature for tabular ``(B, F)`` and sequence ``(B, T, F)`` inputs and per channel for images
    ``(B, C, H, W)``; ``channel_dims`` trailing singleton dims make the per-channel case broadcast.
    """

    def __init__(self, mean: list[float], std: list[float], channel_dims: int = 0) -> None:
        super().__init__()
        shape = (len(mean),) + (1,) * channel_dims
        # a constant feature has std 0: dividing by 1 instead keeps it finite (it is 0 after centring anyway)
        std_t = torch.tensor(std, dtype=torch.float32)
        std_t = torch.where(std_t > 1e-8, std_t, torch.ones_like(std_t))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape))
        self.register_buffer("std", std_t.view(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean


def standardizer(data: dict) -> nn.Module:
    """The input normalization for ``data`` (a ``DataSpec.to_dict()``); identity for text or without stats."""
    if data["kind"] == "text" or not data.get("mean"):
        return nn.Identity()
    channel_dims = 2 if data["kind"] == "image" else 0
    standardize = Standardize(list(data["mean"]), list(data["std"]), channel_dims)
    if data.get("fill"):  # data.impute: empty cells take the train split's fill value first, in the graph too
        from dl_lightning.data.impute import Impute

        return nn.Sequential(Impute(list(data["fill"])), standardize)
    return standardize


def vocab_size(data: dict) -> int:
    """Embedding rows for text: the vocabulary (0 = padding, 1 = unknown), at least those two."""
    return max(len(data.get("vocab") or ()), 2)


def masked_max(h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Each channel's max over the time axis of ``h`` (B, T, C), skipping padding positions (token id 0).

    A padding step takes its channel's lowest value in that row, so it never beats a real step and stays inside the
    range quantization calibrates; an all-padding row gives that lowest value, never an infinity.
    """
    padding = (tokens == 0).unsqueeze(-1)  # (B, T, 1)
    floor = h.amin(dim=1, keepdim=True)  # (B, 1, C)
    return torch.where(padding, floor, h).amax(dim=1)  # (B, C)


def masked_mean(h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean over the time axis of ``h`` (B, T, C), skipping padding positions (token id 0)."""
    mask = (tokens != 0).unsqueeze(-1).to(h.dtype)  # (B, T, 1)
    # clamp: an all-padding row gives a zero vector, not 0/0
    return (h * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)  # (B, C)
