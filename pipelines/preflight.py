"""Checks that run before a job writes anything: the data loads, the family takes it, a resumed checkpoint fits.

Each raises InputError (one line, exit 2) before any MLflow run, output folder, tracking store or process exists,
so bad input never leaves a FAILED run or a half-made folder behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dl_lightning.data import Splits
from dl_lightning.data.user_datamodule import UserData
from dl_lightning.errors import InputError
from pipelines.config import Config


def check_data(cfg: Config) -> Splits | UserData:
    """Load and split ``cfg``'s data and build the family's model on it (cheap: no training).

    Returns the splits (or, for ``data.source=pkg.module:DataModule``, the user's DataModule set up for fitting,
    its spec read from one train batch) so the caller need not load the data again. Raises InputError when the
    source is missing or malformed, a DataModule's arguments or batches are wrong, or the family cannot take this
    kind of data.
    """
    from dl_lightning.registry import build_model
    from pipelines import finetune
    from pipelines.train import load_data, optim_settings

    if cfg.tracking.enabled:  # promotion searches the registry by this name: refuse one it cannot match, now
        from pipelines.tracking import filter_quote, registered_model_name

        filter_quote(registered_model_name(cfg))
    splits = load_data(cfg)
    if isinstance(splits, UserData):
        _check_datamodule_kind(cfg, splits)
    model = build_model(cfg.model.family, splits.spec, cfg.model.arch(), optim_settings(cfg), source=cfg.data.source)
    finetune.check(cfg, model)  # init_from resolves and fits, freeze prefixes exist: before any run or folder
    return splits


def check_warm_start(cfg: Config) -> None:
    """``tune.warm_start`` names a readable ``sweep_results.csv`` or a sweep run that has one (the configured store).

    Raises:
        InputError: a missing file, an unknown run id, or a table without a trial or a best-metric column.
    """
    import yaml

    from pipelines.sweep_insight import read_results, resolve_warm_start

    ref = cfg.tune.warm_start
    if not ref:
        return
    path = resolve_warm_start(ref, lambda run: _download_results(run, cfg))
    try:
        rows = read_results(path)
    except (OSError, KeyError, ValueError, yaml.YAMLError) as exc:  # not a table, or not sweep_results'
        raise InputError(f"tune.warm_start={ref}: cannot read it as sweep_results.csv ({type(exc).__name__})") from None
    if not any(row["best"] is not None for row in rows):
        raise InputError(f"tune.warm_start={ref}: no trial with a best metric in it; give another sweep's results")


def _download_results(run_id: str, cfg: Config) -> Path | None:
    """The sweep run's ``sweep_results.csv``, or None; a sqlite store that does not exist is not created to look."""
    from pipelines import tracking

    if missing_sqlite_store(cfg):
        return None
    return tracking.download_run_file(run_id, "sweep/sweep_results.csv", cfg)


def missing_sqlite_store(cfg: Config) -> bool:
    """Whether the configured store is a sqlite file that does not exist: a lookup must not create it."""
    from pipelines import tracking

    uri = tracking.tracking_uri(cfg)
    return uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file()


def _check_datamodule_kind(cfg: Config, data: UserData) -> None:
    """A DataModule's batches are what they are: name the families that take them (no ``data.kind`` reads them
    otherwise)."""
    from dl_lightning.registry import accepted_kinds, record_for

    accepts, kind = record_for(cfg.model.family).accepts, data.spec.kind
    if kind in accepts:
        return
    takers = " or ".join(name for name, kinds in accepted_kinds().items() if kind in kinds)
    raise InputError(
        f"model.family={cfg.model.family} needs {' or '.join(sorted(accepts))} data but {cfg.data.source} yields "
        f"{kind} batches of {data.spec.input_shape} per example; use model.family={takers}, or make it yield "
        f"{' or '.join(sorted(accepts))} batches"
    )


def check_resume_fits(cfg: Config, splits: Splits | UserData, checkpoint: str) -> None:
    """Refuse a checkpoint whose tensors do not fit the model this config builds on this data.

    Lightning would otherwise fail deep inside ``load_state_dict`` with a "size mismatch" traceback after the
    run was opened. The checkpoint is read with ``weights_only`` (no code) and memory-mapped.
    """
    import torch

    from dl_lightning.registry import build_model
    from pipelines.train import optim_settings

    loaded = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    check_family(loaded, f"--resume {checkpoint}", cfg.model.family)
    model = build_model(cfg.model.family, splits.spec, cfg.model.arch(), optim_settings(cfg), source=cfg.data.source)
    mismatch = _first_mismatch(model.state_dict(), loaded.get("state_dict") or {})
    if mismatch:
        raise InputError(
            f"--resume {checkpoint} was trained with another model or data ({mismatch}); pass the config it was "
            "trained with, or drop --resume to start afresh"
        )


def check_family(checkpoint: dict[str, Any], what: str, family: str) -> None:
    """Refuse a checkpoint of another family than ``family``, or naming a class path the config does not name.

    Nothing named inside the file is imported (``registry.checkpoint_family``); a checkpoint that names no family
    (not written by dlforge) is left to the tensor check.
    """
    from dl_lightning.modules.base import FAMILY_KEY
    from dl_lightning.registry import checkpoint_family

    if FAMILY_KEY not in checkpoint:
        return
    theirs = checkpoint_family(checkpoint, what, allowed=family)
    if theirs != family:
        raise InputError(f"{what} holds a {theirs} model but model.family={family}; pass the config it was trained on")


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
