"""Your own data through dlforge: a LightningDataModule named by its class path.

    dlforge run configs/byo_datamodule.yaml
    dlforge train data.source=examples/my_datamodule.py:MyDataModule model.family=mlp data.args.batch_size=64

scikit-learn's handwritten digits (bundled with it: no download), split and scaled here, served by DataLoaders.
dlforge builds it from ``data.args``, calls ``prepare_data`` and ``setup``, reads the input shape and task from one
batch of ``train_dataloader`` and the number of classes from ``num_classes``, then trains, sweeps and compresses
on these loaders (calibration and parity batches come from ``val_dataloader``).
"""

from __future__ import annotations

import lightning.pytorch as L
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset


class MyDataModule(L.LightningDataModule):
    """8×8 digits as 64 features ``(B, 64)``, or as images ``(B, 1, 8, 8)`` with ``as_images`` (for a CNN)."""

    num_classes = 10  # one batch need not hold every class: say how many there are

    def __init__(self, batch_size: int = 64, val_fraction: float = 0.15, as_images: bool = False, seed: int = 0):
        super().__init__()
        self.batch_size, self.val_fraction, self.as_images, self.seed = batch_size, val_fraction, as_images, seed

    def setup(self, stage: str | None = None) -> None:
        x, y = load_digits(return_X_y=True)
        x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=0.15, random_state=self.seed, stratify=y)
        x_train, x_val, y_train, y_val = train_test_split(
            x_rest, y_rest, test_size=self.val_fraction, random_state=self.seed, stratify=y_rest
        )
        mean, std = x_train.mean(), x_train.std()  # scaling is the DataModule's job: dlforge feeds batches as they are
        self.train_set, self.val_set, self.test_set = (
            self._dataset((a - mean) / std, b) for a, b in ((x_train, y_train), (x_val, y_val), (x_test, y_test))
        )

    def _dataset(self, x, y) -> TensorDataset:
        inputs = torch.tensor(x, dtype=torch.float32)
        if self.as_images:
            inputs = inputs.reshape(-1, 1, 8, 8)
        return TensorDataset(inputs, torch.tensor(y, dtype=torch.long))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.batch_size)
