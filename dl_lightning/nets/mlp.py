"""Multi-layer perceptron over any input: flattened features, or mean-pooled token embeddings for text."""

from __future__ import annotations

import math

import torch
from torch import nn

from dl_lightning.nets.common import masked_mean, standardizer, vocab_size


def mlp_layers(sizes: list[int], batch_norm: bool, dropout: float) -> nn.Sequential:
    """Linear → (BatchNorm) → ReLU → Dropout for each consecutive pair in ``sizes``."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers.append(nn.Linear(n_in, n_out, bias=not batch_norm))  # BN's shift makes the bias redundant
        if batch_norm:
            layers.append(nn.BatchNorm1d(n_out))
        layers += [nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class MLPNet(nn.Module):
    """Input ``(B, *input_shape)`` raw features (or ``(B, T)`` int64 token ids) → ``(B, num_outputs)``."""

    def __init__(self, data: dict, hidden: list[int], batch_norm: bool, dropout: float, embed_dim: int = 64) -> None:
        super().__init__()
        self.text = data["kind"] == "text"
        self.norm = standardizer(data)
        if self.text:
            # an Embedding + masked mean instead of EmbeddingBag: same maths, and it exports to ONNX cleanly
            self.embed = nn.Embedding(vocab_size(data), embed_dim, padding_idx=0)
            n_in = embed_dim
        else:
            n_in = math.prod(data["input_shape"])
        self.body = mlp_layers([n_in, *hidden], batch_norm, dropout)
        self.head = nn.Linear(([n_in, *hidden])[-1], data["num_outputs"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # text: (B, T) → (B, T, E) → (B, E); otherwise images and sequences flatten to (B, F)
        h = masked_mean(self.embed(x), x) if self.text else self.norm(x).flatten(1)
        return self.head(self.body(h))  # (B, num_outputs)
