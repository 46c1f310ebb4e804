"""Checks that run before a job writes anything: the data loads, the family takes it, a resumed checkpoint fits.

Each raises InputError (one line, exit 2) before any MLflow run, output folder, tracking store or process exists,
so bad input never leaves a FAILED run or a half-made folder behind.
"""

from __future__ import annotations

from typing import Any

from dl_lightning.data import Splits
from dl_lightning.errors import InputError
from pipelines.config import Config


def check_data(cfg: Config) -> Splits:
    """Load and split ``cfg``'s data and build the family's model on it (cheap: no training).

    Returns the splits so the caller need not load the data again. Raises InputError when the source is missing
    or malformed or the family cannot take this kind of data.
    """
    from dl_lightning.registry import build_model
    from pipelines import finetune
    from pipelines.train import load_data, optim_settings

    if cfg.tracking.enabled:  # promotion searches the registry by this name: refuse one it cannot match, now
        from pipelines.tracking import filter_quote, registered_model_name

        filter_quote(registered_model_name(cfg))
    splits = load_data(cfg)
    model = build_model(cfg.model.family, splits.spec, cfg.model.arch(), optim_settings(cfg), source=cfg.data.source)
    finetune.check(cfg, model)  # init_from resolves and fits, freeze prefixes exist: before any run or folder
    return splits


def check_resume_fits(cfg: Config, splits: Splits, checkpoint: str) -> None:
    """Refuse a checkpoint whose tensors do not fit the model this config builds on this data.

    Lightning would otherwise fail deep inside ``load_state_dict`` with a "size mismatch" traceback after the
    run was opened. The checkpoint is read with ``weights_only`` (no code) and memory-mapped.
    """
    import torch

    from dl_lightning.registry import build_model
    from pipelines.train import optim_settings

    model = build_model(cfg.model.family, splits.spec, cfg.model.arch(), optim_settings(cfg), source=cfg.data.source)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get("state_dict") or {}
    mismatch = _first_mismatch(model.state_dict(), saved)
    if mismatch:
        raise InputError(
            f"--resume {checkpoint} was trained with another model or data ({mismatch}); pass the config it was "
            "trained with, or drop --resume to start afresh"
        )


def _first_mismatch(current: dict[str, Any], saved: dict[str, Any]) -> str | None:
    """A short description of the first tensor that differs in name or shape, else None."""
    missing = [name for name in current if name not in saved]
    if missing:
        return f"it has no tensor {missing[0]!r}"
    extra = [name for name in saved if name not in current]
    if extra:
        return f"its tensor {extra[0]!r} is not in this model"
    for name, tensor in current.items():
        theirs = saved[name]
        if hasattr(theirs, "shape") and tuple(theirs.shape) != tuple(tensor.shape):
            return f"{name} is {tuple(theirs.shape)} there, {tuple(tensor.shape)} here"
    return None
