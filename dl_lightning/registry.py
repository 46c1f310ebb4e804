"""Family name → LightningModule, and the three ways pipelines meet a model: build, load, monitor."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import torch

from dl_lightning.data.kinds import KindChoice, choose_kind, mismatch_message
from dl_lightning.data.loaders import source_kind
from dl_lightning.data.spec import DataSpec
from dl_lightning.errors import InputError
from dl_lightning.modules.base import FAMILY_KEY, FamilyModule
from dl_lightning.modules.cnn import CNNModule
from dl_lightning.modules.gan import GANModule
from dl_lightning.modules.mlp import MLPModule
from dl_lightning.modules.rnn import RNNModule
from dl_lightning.modules.transformer import TransformerModule

FAMILIES: dict[str, type[FamilyModule]] = {
    "mlp": MLPModule,
    "cnn": CNNModule,
    "rnn": RNNModule,
    "transformer": TransformerModule,
    "gan": GANModule,
}


def build_model(
    family: str, spec: DataSpec, arch: dict[str, Any], optim: dict[str, Any], *, source: str | None = None
) -> L.LightningModule:
    """A fresh module of ``family`` for data described by ``spec``.

    Args:
        arch: the family's config section plus ``dropout`` (``ModelConfig.arch()``).
        optim: OptimConfig fields plus ``max_epochs``.
        source: the data source, only to name it in the error when the family cannot take this kind of data.

    Raises:
        InputError: unknown family, or one that cannot take ``spec.kind`` (the message names every fix).
    """
    cls = _family(family)
    if spec.kind not in cls.accepts:
        raise InputError(mismatch_message(family, accepted_kinds(), spec.kind, source or "the data"))
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()}  # hparams: plain lists
    return cls(data=spec.to_dict(), optim=dict(optim), **plain)


def accepted_kinds() -> dict[str, frozenset[str]]:
    """Family name → the data kinds it takes."""
    return {name: cls.accepts for name, cls in FAMILIES.items()}


def kind_for_family(
    family: str, source: str, *, kind: str | None = None, target: str | None = None, text_column: str | None = None
) -> KindChoice:
    """The ``data.kind`` to load ``source`` with for ``family``; cheap (array headers, or the table for CSV and
    Parquet; nothing is split, built or trained), so a pipeline can call it before any stage starts.

    A 2-D numeric source for cnn, rnn or transformer is read as signals (``KindChoice.note`` says so, for the
    caller to print). Raises InputError for an unknown family, a missing source, or data the family cannot
    take, naming every valid fix.
    """
    _family(family)
    natural, shape = source_kind(source, target=target, text_column=text_column)
    return choose_kind(family, accepted_kinds(), natural, kind=kind, shape=shape, source=source)


def _family(family: str) -> type[FamilyModule]:
    if family not in FAMILIES:
        raise InputError(f"model.family={family} is unknown; use one of {', '.join(FAMILIES)}")
    return FAMILIES[family]


def load_model(checkpoint_path: str) -> L.LightningModule:
    """The module saved in a Lightning checkpoint, on CPU in eval mode.

    Reads with ``torch.load(weights_only=True)``: hyperparameters are plain types and the family name is
    stored under its own key by ``FamilyModule.on_save_checkpoint``, so no pickled classes are needed.
    """
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    family = checkpoint.get(FAMILY_KEY)
    if family not in FAMILIES:
        raise InputError(f"{checkpoint_path} is not a dlforge model checkpoint (no known family); pass one")
    model = FAMILIES[family](**checkpoint["hyper_parameters"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def monitor_for(family: str, task: str) -> tuple[str | None, str]:
    """Default checkpoint/early-stopping metric and mode; ``(None, "min")`` for a GAN: it has no good one."""
    if family == "gan":
        return None, "min"
    return ("val/acc", "max") if task == "classification" else ("val/mse", "min")
