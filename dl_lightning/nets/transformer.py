"""Transformer encoder over sequences ``(T, F)`` or token ids ``(T,)``, pooled per example (text: real tokens only)."""

from __future__ import annotations

import math

import torch
from torch import nn

from dl_lightning.nets.common import masked_max, masked_mean, standardizer, vocab_size

SUMMARIES = ("auto", "mean", "max")


def sinusoidal_table(length: int, d_model: int) -> torch.Tensor:
    """The fixed sin/cos position table of "Attention Is All You Need", ``(length, d_model)``."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)  # (T, 1)
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: d_model // 2])  # odd d_model: one fewer cosine column
    return table


def padding_mask(tokens: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` True where a key is padding (token id 0), the first position never: no row is all masked."""
    first = torch.arange(tokens.shape[1], device=tokens.device) == 0  # (T,)
    return (tokens == 0) & ~first  # (B, T)


class TransformerNet(nn.Module):
    """Input ``(B, T, F)`` raw features or ``(B, T)`` int64 token ids → ``(B, num_outputs)``.

    Text attends only to real tokens, as a plain script's encoder does: a key-padding mask hides the padding
    (token id 0), so a short sentence's summary is not diluted by up to ``max_len`` padding positions carrying
    nothing but the position table. The first position is never masked, so an all-padding example stays finite
    (a fully masked softmax row is NaN).

    ``summary`` says how the head reads the encoder's outputs: ``mean`` over the (real) positions, or ``max``, each
    unit's largest output over the real tokens; ``auto`` is ``max`` for text and ``mean`` for sequences. On made-up
    reviews, where a `not` flips a verdict, the max learned the task within 10 epochs where the mean sat near 50 %
    (+18 points against the plain one-layer encoder, against −4.7 with the mean, seeds 0–4); on Python's manual it
    was level or ahead (docs/benchmarks.md, model quality). It is the rnn family's text summary too.

    Positions: text learns its table (parameter ``position``, starting at zero, so a word at first means the same
    wherever it stands); sequences add the fixed sinusoidal table (a non-persistent buffer of the same name). Text
    gets no dropout on its input (the encoder layers keep theirs): dropping the one word that flips a meaning, such
    as a "not", teaches noise. Both were measured on held-out text (docs/benchmarks.md, model quality).
    """

    def __init__(
        self,
        data: dict,
        d_model: int,
        nhead: int,
        num_layers: int,
        dim_feedforward: int,
        dropout: float,
        summary: str = "mean",
    ) -> None:
        super().__init__()
        self.text = data["kind"] == "text"
        self.summary = ("max" if self.text else "mean") if summary == "auto" else summary
        self.norm = standardizer(data)
        if self.text:
            self.embed: nn.Module = nn.Embedding(vocab_size(data), d_model, padding_idx=0)
        else:
            self.embed = nn.Linear(data["input_shape"][-1], d_model)
        length = data["input_shape"][0]
        if self.text:
            # learned from zero, as a plain script's encoder does: the sin/cos table (as large as the word embeddings)
            # and input dropout cost 2–4 points on made-up reviews where word order matters (docs/benchmarks.md)
            self.position = nn.Parameter(torch.zeros(1, length, d_model))
        else:
            # not persistent: it is a pure function of the shape, so checkpoints stay small and always agree
            self.register_buffer("position", sinusoidal_table(length, d_model).unsqueeze(0), persistent=False)
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(d_model, data["num_outputs"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x if self.text else self.norm(x))  # (B, T, d_model)
        pad = padding_mask(x) if self.text else None  # (B, T) or None
        h = h + self.position if self.text else self.dropout(h + self.position)  # (B, T, d_model)
        h = self.encoder(h, src_key_padding_mask=pad)  # (B, T, d_model)
        return self.head(self._pool(h, x))  # (B, num_outputs)

    def _pool(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, d_model)`` → ``(B, d_model)``: the mean or the max over time, over real tokens for text."""
        if self.summary == "max":
            return masked_max(h, x) if self.text else h.amax(dim=1)
        return masked_mean(h, x) if self.text else h.mean(dim=1)
