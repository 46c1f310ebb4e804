"""Starting from an earlier model: partial weight loading, freezing by parameter-name prefix, and unfreezing.

Plain torch and Lightning only; resolving run ids and registered models to a checkpoint file is the pipelines'
job (``pipelines.finetune``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from dl_lightning.data.impute import Impute
from dl_lightning.errors import InputError
from dl_lightning.modules.base import FAMILY_KEY
from dl_lightning.nets.common import Standardize
from dl_lightning.registry import checkpoint_family


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_matching` did: tensors loaded, and tensors of the model left fresh with the reason."""

    loaded: tuple[str, ...]
    skipped: dict[str, str] = field(default_factory=dict)  # model tensor name → why it kept its fresh values

    def line(self) -> str:
        """One human line: counts, and the first few skipped tensors with their reasons."""
        shown = "; ".join(f"{k} ({v})" for k, v in list(self.skipped.items())[:4])
        more = f" and {len(self.skipped) - 4} more" if len(self.skipped) > 4 else ""
        tail = f" — fresh: {shown}{more}" if self.skipped else ""
        return f"{len(self.loaded)} tensors loaded, {len(self.skipped)} skipped{tail}"


def read_checkpoint(path: str) -> dict[str, Any]:
    """A Lightning checkpoint read with ``weights_only=True`` (plain tensors and values; never unpickles code)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise InputError(f"model.init_from={path} is not a Lightning checkpoint (no state_dict); pass a .ckpt file")
    return checkpoint


def plan_load(model: nn.Module, saved: Mapping[str, Any], saved_classes: Iterable[str] | None = None) -> LoadReport:
    """Which of ``model``'s tensors ``saved`` can fill: same name and same shape. Nothing is changed.

    The input normalization is never taken: it comes from this data's train split, like every data-derived value.
    When ``saved_classes`` (the earlier model's class names) differ from this data's, the head (``net.head``) stays
    fresh even if its shapes fit: it scores, and its hidden features separate, other classes.
    """
    loaded, skipped = [], {}
    own_data = _normalization_names(model)
    ours = list(getattr(model, "data_spec", {}).get("class_names") or ())
    other_classes = saved_classes is not None and list(saved_classes) != ours
    output = _head_names(model) if other_classes else set()
    for name, tensor in model.state_dict().items():
        theirs = saved.get(name)
        if name in own_data:
            skipped[name] = "normalization of this data"
        elif name in output:
            skipped[name] = "head of other classes"
        elif theirs is None:
            skipped[name] = "not in the checkpoint"
        elif tuple(theirs.shape) != tuple(tensor.shape):
            skipped[name] = f"shape {tuple(theirs.shape)} there, {tuple(tensor.shape)} here"
        else:
            loaded.append(name)
    return LoadReport(tuple(loaded), skipped)


def _head_names(model: nn.Module) -> set[str]:
    """Parameter names of ``model.net.head``, the classifier on top of the features (every supervised net has one).

    All of it stays fresh for other classes, not only its last layer: a hidden layer trained to separate the old
    classes has collapsed its features onto them (in the transfer benchmark, keeping the CNN's hidden head layer
    cost 1.1 points against re-initialising it).
    """
    head = getattr(getattr(model, "net", None), "head", None)
    if head is None:
        return set()
    return {f"net.head.{name}" for name, _ in head.named_parameters()}


def _normalization_names(model: nn.Module) -> set[str]:
    return {
        f"{prefix}.{name}"
        for prefix, module in model.named_modules()
        if isinstance(module, Standardize | Impute)
        for name, _ in module.named_buffers()
    }


def check_compatible(model: nn.Module, family: str, checkpoint: Mapping[str, Any], source: str) -> LoadReport:
    """The load plan of ``checkpoint`` into ``model``; raises InputError when the family differs or nothing fits.

    Guarantees: when it returns, at least one tensor matches in name and shape.
    """
    # a class path in the file is refused unless the config names the same one; nothing is imported from it
    theirs = checkpoint_family(checkpoint, source, allowed=family) if FAMILY_KEY in checkpoint else None
    if theirs is not None and theirs != family:
        raise InputError(
            f"model.init_from={source} holds a {theirs} model but model.family={family}; "
            f"set model.family={theirs} or start from a {family} model"
        )
    report = plan_load(model, checkpoint["state_dict"], saved_classes(checkpoint))
    if not report.loaded:
        raise InputError(
            f"model.init_from={source}: none of its {len(checkpoint['state_dict'])} tensors match the {family} model "
            "built from this config and data in name and shape; use the architecture it was trained with"
        )
    return report


def saved_classes(checkpoint: Mapping[str, Any]) -> list[str] | None:
    """The class names of the data a checkpoint's model was trained on (None when it does not say)."""
    data = (checkpoint.get("hyper_parameters") or {}).get("data") or {}
    return list(data["class_names"]) if data.get("class_names") else None


def load_matching(model: nn.Module, state_dict: Mapping[str, Any], classes: Iterable[str] | None = None) -> LoadReport:
    """Copy the tensors of ``state_dict`` that :func:`plan_load` accepts (same name and shape; not the output
    layer when ``classes``, the earlier model's, differ); the rest stay as they are.

    Marks the loaded parameters as the backbone (``model.backbone_names``) for ``optim.backbone_lr_scale``.
    """
    report = plan_load(model, state_dict, classes)
    own = model.state_dict()
    with torch.no_grad():
        for name in report.loaded:
            own[name].copy_(state_dict[name])
    params = {name for name, _ in model.named_parameters()}
    model.backbone_names = frozenset(name for name in report.loaded if name in params)
    return report


def match_prefixes(model: nn.Module, prefixes: Iterable[str]) -> list[str]:
    """Names of ``model``'s parameters starting with any of ``prefixes``.

    Raises:
        InputError: a prefix matches no parameter; the message names the closest parameter names.
    """
    names = [name for name, _ in model.named_parameters()]
    matched: list[str] = []
    for prefix in prefixes:
        hits = [name for name in names if name.startswith(prefix)]
        if not hits:
            close = difflib.get_close_matches(prefix, names, n=3, cutoff=0.3) or names[:3]
            raise InputError(f"model.freeze prefix {prefix!r} matches no parameter; closest: {', '.join(close)}")
        matched += [h for h in hits if h not in matched]
    return matched


class FreezeParameters(Callback):
    """Keeps the parameters named by ``prefixes`` fixed until epoch ``unfreeze_at_epoch`` (0: for the whole fit).

    The parameters stay in their optimizer groups and keep ``requires_grad``; their gradients are dropped after
    each backward pass, so the optimizer skips them (no step, no weight decay). Unlike toggling
    ``requires_grad`` or adding param groups at unfreeze time (``BaseFinetuning``), the optimizer's layout and DDP's
    gradient buckets never change, so a fit resumed from ``last.ckpt`` and a DDP fit behave like a single one.
    Buffers (BatchNorm running statistics) are not parameters and still update.
    """

    def __init__(self, prefixes: Iterable[str], unfreeze_at_epoch: int = 0) -> None:
        self.prefixes = tuple(prefixes)
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self._frozen: list[nn.Parameter] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        params = dict(pl_module.named_parameters())
        self._frozen = [params[name] for name in match_prefixes(pl_module, self.prefixes)]

    def frozen_now(self, epoch: int) -> bool:
        """Whether the parameters are held fixed during ``epoch`` (0-based)."""
        return self.unfreeze_at_epoch == 0 or epoch < self.unfreeze_at_epoch

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.frozen_now(trainer.current_epoch):
            for param in self._frozen:
                param.grad = None
