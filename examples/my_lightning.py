"""A ``LightningModule`` of your own, trained by dlforge as it is: its ``training_step``, ``validation_step`` and
``configure_optimizers`` run unchanged; dlforge adds tracking, checkpoints, guards and early stopping on
``trainer.monitor``, then exports, quantizes and distils it like any model.

dlforge fills in ``input_shape`` and ``num_outputs`` from the data because the constructor names them. For export,
``forward`` takes a raw batch and returns one logit per class.

    dlforge run configs/byo_lightning.yaml
"""

from __future__ import annotations

import math

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import nn


class MyLitClassifier(L.LightningModule):
    """An MLP classifier with its own loop: Adam at ``lr``, cross-entropy, ``val/acc`` logged per epoch."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, hidden: int = 64, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x / 16.0)  # digits' pixels are 0–16: scaled in the net, so the exported model takes raw input

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1].long()
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def _evaluate(self, batch, stage: str) -> None:
        x, y = batch[0], batch[1].long()
        logits = self(x)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), on_epoch=True)
        self.log(f"{stage}/acc", (logits.argmax(dim=1) == y).float().mean(), on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
