"""Recurrent net (LSTM, GRU or Elman RNN) over sequences ``(T, F)`` or token ids ``(T,)``."""

from __future__ import annotations

import torch
from torch import nn

from dl_lightning.nets.common import masked_max, standardizer, vocab_size

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
SUMMARIES = ("auto", "last", "max")


class RNNNet(nn.Module):
    """Input ``(B, T, F)`` raw features or ``(B, T)`` int64 token ids → ``(B, num_outputs)``.

    ``summary`` says what the head reads, ``(B, D*H)`` either way (D = 2 when bidirectional, forward units first):

    - ``max``: each unit's largest output over the real steps (max pooling over time, as InferSent and ULMFiT's
      concat pooling do). Every step reaches the head in one hop, so a word that decides the class need not be
      carried through the rest of the sentence first.
    - ``last``: the forward direction's output at the last real step and, when bidirectional, the backward
      direction's at the first real step: each direction's state after every real token. It keeps order and place,
      which a max throws away.
    - ``auto``: ``max`` for text, where a few words anywhere decide; ``last`` for sequences, where the whole in its
      order does. Measured (docs/benchmarks.md, model quality): on made-up reviews the one-layer LSTM learned the
      task by epoch 7 on every seed with ``max``, at 9 or later with ``last``; on digits read row by row ``max``
      cost 4–7 points.

    ``num_layers`` 0 means one layer for text and two for sequences: over word embeddings a second layer made the
    LSTM learn made-up reviews later (at epoch 10 or never where one layer took 7, with ``max``); over raw signal
    samples it gained 6–32 points (1-D wave shapes, 3 seeds).

    For text "real" means not padding (id 0), found with a mask rather than ``pack_padded_sequence``, so the graph
    stays ONNX-exportable and works for left or right padding alike.
    """

    def __init__(
        self,
        data: dict,
        cell: str,
        hidden_size: int,
        num_layers: int,
        bidirectional: bool,
        embed_dim: int,
        dropout: float,
        summary: str = "last",
    ) -> None:
        super().__init__()
        self.text = data["kind"] == "text"
        self.summary = ("max" if self.text else "last") if summary == "auto" else summary
        num_layers = num_layers or (1 if self.text else 2)
        self.bidirectional = bidirectional
        self.hidden_size = hidden_size
        self.norm = standardizer(data)
        if self.text:
            self.embed = nn.Embedding(vocab_size(data), embed_dim, padding_idx=0)
        n_in = embed_dim if self.text else data["input_shape"][-1]
        self.rnn = CELLS[cell](
            n_in,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,  # torch warns about inter-layer dropout with 1 layer
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), data["num_outputs"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) if self.text else self.norm(x)  # (B, T, E) or (B, T, F)
        out, _ = self.rnn(h)  # (B, T, D*H)
        return self.head(self.dropout(self._summary(out, x)))  # (B, num_outputs)

    def _summary(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, D*H)`` → ``(B, D*H)``: the max over real steps, or forward at the last and backward at the first."""
        if self.summary == "max":
            return masked_max(out, x) if self.text else out.amax(dim=1)
        H = self.hidden_size
        if self.text:
            steps = torch.arange(1, out.shape[1] + 1, device=x.device)  # (T,) 1-based: padding never wins
            real = (x != 0).long()  # (B, T)
            last, first = (real * steps).argmax(dim=1), real.argmax(dim=1)  # (B,) each
            rows = torch.arange(out.shape[0], device=x.device)  # (B,)
            forward, backward = out[rows, last, :H], out[rows, first, H:]  # (B, H), (B, H or 0)
        else:
            forward, backward = out[:, -1, :H], out[:, 0, H:]  # fixed length: every step is real
        return torch.cat([forward, backward], dim=1) if self.bidirectional else forward
