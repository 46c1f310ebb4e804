"""Fine-tuning and class balance around ``train()``: ``model.init_from``, ``model.freeze``, lineage, class weights.

``check`` runs in the pre-flight (before any run, lock or folder exists) and raises InputError for a source that
cannot be used; ``prepare`` applies the same plan to the model ``train()`` built; ``log_lineage`` records where the
weights came from on the run and the registered version.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from dl_lightning.data import Splits
from dl_lightning.data.balance import balanced_class_weights, imbalance_note
from dl_lightning.errors import InputError
from dl_lightning.registry import record_for
from dl_lightning.transfer import (
    FreezeParameters,
    check_compatible,
    load_matching,
    match_prefixes,
    read_checkpoint,
    saved_classes,
)
from pipelines.config import Config

RUN_ID = re.compile(r"^[0-9a-f]{32}$")  # what MLflow's stores issue


@dataclass(frozen=True)
class InitSource:
    """A resolved ``model.init_from``: the local checkpoint and where it came from."""

    ref: str
    path: str
    digest: str  # SHA-256 of the checkpoint file
    run_id: str | None = None
    model_version: str | None = None  # "NAME/VERSION" of a registered model

    def tags(self) -> dict[str, str]:
        """Lineage tags for the run and the registered version (empty values left out)."""
        tags = {
            "dlforge.init_from": self.ref,
            "dlforge.init_from.run_id": self.run_id,
            "dlforge.init_from.model_version": self.model_version,
            "dlforge.init_from.sha256": self.digest,
        }
        return {k: v for k, v in tags.items() if v}


_RESOLVED: dict[tuple[str, str | None], InitSource] = {}  # one download per process: pre-flight, then train()


def resolve(cfg: Config) -> InitSource | None:
    """``model.init_from`` as a local checkpoint file (downloaded once per process), or None when unset.

    Raises:
        InputError: the path does not exist, the reference is not a run id or ``models:/`` URI, the version is
            an ONNX-only one, or the store holds no checkpoint for it.
    """
    ref = cfg.model.init_from
    if not ref:
        return None
    key = (ref, cfg.tracking.uri)
    if key not in _RESOLVED:
        _RESOLVED[key] = _resolve(ref, cfg)
    return _RESOLVED[key]


def _resolve(ref: str, cfg: Config) -> InitSource:
    if ref.lower().endswith(".onnx"):
        raise InputError(f"model.init_from={ref} is an ONNX file; fine-tuning needs PyTorch weights (a .ckpt)")
    if Path(ref).is_file():
        return InitSource(ref, str(Path(ref).absolute()), sha256(ref))
    if not (ref.startswith("models:/") or RUN_ID.match(ref)):
        raise InputError(
            f"model.init_from={ref} is neither an existing file, an MLflow run id nor models:/NAME@ALIAS "
            "(or models:/NAME/VERSION); pass one of those"
        )
    from pipelines import tracking

    version = _registered_version(ref, cfg) if ref.startswith("models:/") else None
    path, run_id = tracking.resolve_checkpoint(ref, cfg)
    return InitSource(ref, path, sha256(path), run_id, version)


def _registered_version(ref: str, cfg: Config) -> str | None:
    """``NAME/VERSION`` of a ``models:/`` reference; refuses an ONNX-only version. None when the store has no such
    version (the checkpoint lookup that follows names what it does hold)."""
    from pipelines import tracking

    version = tracking.model_version(ref, cfg)
    if version is None:
        return None
    if "dlforge.quantization" in version.tags or version.name.endswith("-onnx"):
        raise InputError(
            f"model.init_from={ref} is an ONNX-only version; fine-tuning needs PyTorch weights — pass the trained "
            f"model (models:/{version.name.removesuffix('-onnx')}@candidate) or its run id"
        )
    return f"{version.name}/{version.version}"


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check(cfg: Config, model: Any) -> None:
    """Pre-flight: the fine-tuning keys make sense together, ``init_from`` fits ``model`` and every
    ``model.freeze`` prefix names parameters. Raises InputError (one line) otherwise; changes nothing."""
    m, t = cfg.model, cfg.trainer
    if cfg.optim.backbone_lr_scale != 1.0 and not m.init_from:
        raise InputError("optim.backbone_lr_scale scales the weights of model.init_from; set model.init_from too")
    if t.unfreeze_at_epoch and not m.freeze:
        raise InputError("trainer.unfreeze_at_epoch releases model.freeze; set model.freeze=[<prefixes>] too")
    if t.unfreeze_at_epoch >= t.max_epochs:
        raise InputError(
            f"trainer.unfreeze_at_epoch={t.unfreeze_at_epoch} is not before trainer.max_epochs={t.max_epochs}; "
            "lower it, or use 0 to keep model.freeze for the whole fit"
        )
    balancing = cfg.data.class_weights == "balanced" or cfg.data.sampler == "balanced"
    if balancing and (record_for(m.family).generative or model.data_spec["task"] != "classification"):
        raise InputError(
            "data.class_weights/data.sampler=balanced balance the classes of a classifier; set them to none"
        )
    if cfg.data.class_weights == "balanced" and not hasattr(model, "set_class_weights"):
        raise InputError(
            f"data.class_weights=balanced weighs dlforge's loss, but {m.family} computes its own; set it to none "
            "(data.sampler=balanced works for any model)"
        )
    match_prefixes(model, m.freeze or ())
    source = resolve(cfg)
    if source is not None:
        check_compatible(model, m.family, read_checkpoint(source.path), m.init_from)


def prepare(cfg: Config, model: Any, splits: Splits) -> dict[str, Any]:
    """Load ``init_from``'s matching tensors into ``model`` and set balanced class weights; print what was done.

    Returns what the run records (``TrainResult.extra``): ``init_from`` (source, loaded/skipped counts, lineage
    tags) when set. Safe on every DDP rank: each loads the same file; only rank 0 prints.
    """
    extra: dict[str, Any] = {}
    if cfg.data.class_weights == "balanced":
        model.set_class_weights(balanced_class_weights(splits.train[1], splits.spec.num_outputs))
    elif (
        isinstance(splits, Splits)  # a user's DataModule streams: no label counts to warn about
        and splits.spec.task == "classification"
        and cfg.data.sampler == "none"
        and not record_for(cfg.model.family).generative
    ):
        _say(imbalance_note(splits.train[1], splits.spec.num_outputs))
    source = resolve(cfg)
    if source is None:
        return extra
    checkpoint = read_checkpoint(source.path)
    check_compatible(model, cfg.model.family, checkpoint, source.ref)
    report = load_matching(model, checkpoint["state_dict"], saved_classes(checkpoint))
    _say(f"dlforge: init_from {source.ref}: {report.line()}")
    extra["init_from"] = {
        **source.tags(),
        "loaded": len(report.loaded),
        "skipped": len(report.skipped),
        "skipped_why": dict(list(report.skipped.items())[:20]),
    }
    return extra


def callbacks(cfg: Config) -> list[Callback]:
    """``model.freeze`` as a callback (held until ``trainer.unfreeze_at_epoch``), or none."""
    return [FreezeParameters(cfg.model.freeze, cfg.trainer.unfreeze_at_epoch)] if cfg.model.freeze else []


def log_lineage(cfg: Config, run_id: str | None, extra: dict[str, Any], model_version: str | None) -> None:
    """Tag the run (and the version registered from it) with where its starting weights came from."""
    init = extra.get("init_from")
    if not init or run_id is None:
        return
    from pipelines import tracking

    tags = {k: v for k, v in init.items() if k.startswith("dlforge.")}
    counts = {"dlforge.init_from.loaded": init["loaded"], "dlforge.init_from.skipped": init["skipped"]}
    tracking.set_tags(run_id, {**tags, **counts})
    if model_version:
        tracking.tag_model_version(tracking.registered_model_name(cfg), model_version, tags)


def summary_line(extra: dict[str, Any]) -> str | None:
    """The train summary's lineage line: source, run/version, digest prefix, loaded/skipped."""
    init = extra.get("init_from")
    if not init:
        return None
    came = init.get("dlforge.init_from.model_version") or init.get("dlforge.init_from.run_id") or "file"
    digest = init["dlforge.init_from.sha256"][:12]
    return f"{init['dlforge.init_from']} ({came}, sha256 {digest}…): {init['loaded']} loaded, {init['skipped']} fresh"


@rank_zero_only
def _say(line: str | None) -> None:
    if line:
        print(line, flush=True)
