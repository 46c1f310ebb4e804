"""RNN family: LSTM, GRU or Elman cells over sequences or token ids."""

from __future__ import annotations

from typing import ClassVar

from dl_lightning.errors import InputError
from dl_lightning.modules.base import SupervisedModule
from dl_lightning.nets.rnn import CELLS, SUMMARIES, RNNNet


class RNNModule(SupervisedModule):
    family: ClassVar[str] = "rnn"

    def __init__(
        self,
        data: dict,
        cell: str = "lstm",
        hidden_size: int = 128,
        num_layers: int = 0,
        bidirectional: bool = False,
        embed_dim: int = 64,  # every checkpoint saved it; configs say 128 (dl_lightning/families.py)
        dropout: float = 0.1,
        optim: dict | None = None,
        summary: str = "last",  # what checkpoints saved before the key existed were trained with; configs say auto
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if cell not in CELLS:
            raise InputError(f"model.rnn.cell={cell} is unknown; use one of {', '.join(CELLS)}")
        if summary not in SUMMARIES:
            raise InputError(f"model.rnn.summary={summary} is unknown; use one of {', '.join(SUMMARIES)}")
        self.init_supervised(data, optim)
        self.net = RNNNet(data, cell, hidden_size, num_layers, bidirectional, embed_dim, dropout, summary)
