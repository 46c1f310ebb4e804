"""What a person sees while a model trains: epochs counted from 1 on the bar and the plain line, with the metrics."""

from __future__ import annotations

import lightning.pytorch as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pipelines.train import EpochBar, EpochLine


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.net(batch[0]).square().mean()
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.net(batch[0]).square().mean(), on_epoch=True)
        self.log("val/other", 1.0, on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(callback: L.Callback, epochs: int) -> None:
    data = DataLoader(TensorDataset(torch.randn(16, 2)), batch_size=8)
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[callback],
        enable_progress_bar=isinstance(callback, EpochBar),
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )
    trainer.fit(_Tiny(), data, data)


def test_the_bar_counts_epochs_from_one_and_shows_the_metrics(capsys):
    bar = EpochBar()
    _fit(bar, 3)
    shown = "".join(capsys.readouterr())  # Lightning's bars write to stdout
    assert "Epoch 3/3" in shown and "Epoch 0" not in shown
    assert "train/loss=" in shown and "val/loss=" in shown  # the finished epoch's losses
    assert "val/other" not in shown  # not monitored: on the plain line and in the store, not on one terminal line


def test_the_plain_line_counts_epochs_from_one(capsys):
    _fit(EpochLine(), 2)
    out = capsys.readouterr().out
    assert "epoch 1/2" in out and "epoch 2/2" in out and "val/loss" in out
