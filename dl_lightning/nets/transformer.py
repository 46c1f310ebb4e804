"""Transformer encoder over sequences ``(T, F)`` or token ids ``(T,)``, mean-pooled per example."""

from __future__ import annotations

import math

import torch
from torch import nn

from dl_lightning.nets.common import masked_mean, standardizer, vocab_size


def sinusoidal_table(length: int, d_model: int) -> torch.Tensor:
    """The fixed sin/cos position table of "Attention Is All You Need", ``(length, d_model)``."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)  # (T, 1)
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: d_model // 2])  # odd d_model: one fewer cosine column
    return table


class TransformerNet(nn.Module):
    """Input ``(B, T, F)`` raw features or ``(B, T)`` int64 token ids → ``(B, num_outputs)``.

    Text attends over every position, padding included: no key-padding mask keeps the exported graph plain
    and an all-padding example finite (a fully masked softmax row is NaN). Padding never reaches the pooled
    summary, because the mean skips it.
    """

    def __init__(
        self, data: dict, d_model: int, nhead: int, num_layers: int, dim_feedforward: int, dropout: float
    ) -> None:
        super().__init__()
        self.text = data["kind"] == "text"
        self.norm = standardizer(data)
        if self.text:
            self.embed: nn.Module = nn.Embedding(vocab_size(data), d_model, padding_idx=0)
        else:
            self.embed = nn.Linear(data["input_shape"][-1], d_model)
        length = data["input_shape"][0]
        # not persistent: it is a pure function of the shape, so checkpoints stay small and always agree
        self.register_buffer("position", sinusoidal_table(length, d_model).unsqueeze(0), persistent=False)
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(d_model, data["num_outputs"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x if self.text else self.norm(x))  # (B, T, d_model)
        h = self.encoder(self.dropout(h + self.position))  # (B, T, d_model)
        pooled = masked_mean(h, x) if self.text else h.mean(dim=1)  # (B, d_model)
        return self.head(pooled)  # (B, num_outputs)
