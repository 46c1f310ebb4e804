"""CNN family: Conv2d over images, Conv1d over sequences."""

from __future__ import annotations

from typing import ClassVar

from dl_lightning.modules.base import SupervisedModule
from dl_lightning.nets.cnn import CNNNet


class CNNModule(SupervisedModule):
    family: ClassVar[str] = "cnn"

    def __init__(
        self,
        data: dict,
        channels: list[int] = [32, 64],  # noqa: B006 — never mutated; a list keeps hparams plain
        kernel_size: int = 3,
        batch_norm: bool = True,
        hidden: int = 128,
        dropout: float = 0.1,
        optim: dict | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.init_supervised(data, optim)
        self.net = CNNNet(data, list(channels), kernel_size, batch_norm, hidden, dropout)
