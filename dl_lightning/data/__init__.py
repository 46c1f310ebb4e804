"""Data layer: load a source into train/val/test arrays plus a :class:`DataSpec`, and serve them to Lightning.

``load_splits`` → :class:`Splits` → :class:`DlforgeDataModule`. The text tokenizer (``tokenize``,
``build_vocab``, ``encode``) is exported for predict-time code.
"""

from dl_lightning.data.augment import ImageAugment
from dl_lightning.data.datamodule import DlforgeDataModule
from dl_lightning.data.loaders import BUILTINS
from dl_lightning.data.spec import DataSpec
from dl_lightning.data.splits import Splits, load_splits
from dl_lightning.data.text import build_vocab, encode, tokenize

__all__ = [
    "BUILTINS",
    "DataSpec",
    "DlforgeDataModule",
    "ImageAugment",
    "Splits",
    "build_vocab",
    "encode",
    "load_splits",
    "tokenize",
]
