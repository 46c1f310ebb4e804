"""MLP family: any data kind; text as the mean of its token embeddings."""

from __future__ import annotations

from typing import ClassVar

from dl_lightning.modules.base import SupervisedModule
from dl_lightning.nets.mlp import MLPNet


class MLPModule(SupervisedModule):
    family: ClassVar[str] = "mlp"

    def __init__(
        self,
        data: dict,
        hidden: list[int] = [256, 128],  # noqa: B006 — never mutated; a list keeps hparams plain
        batch_norm: bool = False,
        dropout: float = 0.1,
        embed_dim: int = 64,
        optim: dict | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.init_supervised(data, optim)
        self.net = MLPNet(data, list(hidden), batch_norm, dropout, embed_dim)
