"""Transformer family: an encoder over sequences or token ids, pooled by its mean or max over time."""

from __future__ import annotations

from typing import ClassVar

from dl_lightning.errors import InputError
from dl_lightning.modules.base import SupervisedModule
from dl_lightning.nets.transformer import SUMMARIES, TransformerNet


class TransformerModule(SupervisedModule):
    family: ClassVar[str] = "transformer"

    def __init__(
        self,
        data: dict,
        d_model: int = 64,
        nhead: int = 4,
        num_layers: int = 2,
        dim_feedforward: int = 128,
        dropout: float = 0.1,
        optim: dict | None = None,
        summary: str = "mean",  # what checkpoints saved before the key existed were trained with; configs say auto
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if d_model % nhead:
            raise InputError(
                f"model.transformer.nhead={nhead} must divide model.transformer.d_model={d_model}; "
                f"e.g. nhead={next(h for h in (8, 4, 2, 1) if d_model % h == 0)}"
            )
        if summary not in SUMMARIES:
            raise InputError(f"model.transformer.summary={summary} is unknown; use one of {', '.join(SUMMARIES)}")
        self.init_supervised(data, optim)
        self.net = TransformerNet(data, d_model, nhead, num_layers, dim_feedforward, dropout, summary)
