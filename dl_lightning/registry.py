"""Family name (or a user's class path) → its record and module; the ways pipelines meet a model: build, load, monitor.

Every stage asks :func:`record_for` what a family is (``dl_lightning.families.Family``) instead of branching on its
name. A class path (``pkg.module:Class`` or ``path/to/file.py:Class``) is the user's own model: it is imported only
when the configuration names it, and a checkpoint naming a class path is loaded only when it matches the configured one.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import torch

from dl_lightning import families
from dl_lightning.data.kinds import KindChoice, choose_kind, mismatch_message
from dl_lightning.data.loaders import source_kind
from dl_lightning.data.spec import DataSpec
from dl_lightning.errors import InputError
from dl_lightning.families import Family
from dl_lightning.modules.base import FAMILY_KEY

FAMILIES: dict[str, Family] = families._RECORDS  # the live table: a family registered later shows here too


def record_for(family: str) -> Family:
    """The record of a registered family, or of a user's class path (built from the class: imports it).

    Raises:
        InputError: an unknown name (the closest one suggested), or a class path that does not import.
    """
    record = families.find(family)
    if record is not None:
        return record
    if families.is_class_path(family):
        from dl_lightning.user_model import user_record

        return user_record(family)
    raise InputError(families.unknown_message(family))


def build_model(
    family: str, spec: DataSpec, arch: dict[str, Any], optim: dict[str, Any], *, source: str | None = None
) -> L.LightningModule:
    """A fresh module of ``family`` for data described by ``spec``.

    Args:
        arch: the family's keyword arguments (``ModelConfig.arch()``: its section plus ``dropout``, or
            ``model.args`` for a class path).
        optim: OptimConfig fields plus ``max_epochs``.
        source: the data source, only to name it in the error when the family cannot take this kind of data.

    Raises:
        InputError: unknown family, one that cannot take ``spec.kind`` (the message names every fix), or a class
            path whose constructor does not take ``arch``.
    """
    record = record_for(family)
    if spec.kind not in record.accepts:
        raise InputError(mismatch_message(family, accepted_kinds(), spec.kind, source or "the data"))
    if families.is_class_path(family):
        from dl_lightning.user_model import build_user_module

        return build_user_module(family, spec.to_dict(), arch, optim)
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in arch.items() if k not in record.fit_only_keys}
    return record.module_class()(data=spec.to_dict(), optim=dict(optim), **plain)


def accepted_kinds() -> dict[str, frozenset[str]]:
    """Family name → the data kinds it takes."""
    return {name: record.accepts for name, record in FAMILIES.items()}


def kind_for_family(
    family: str, source: str, *, kind: str | None = None, target: str | None = None, text_column: str | None = None
) -> KindChoice:
    """The ``data.kind`` to load ``source`` with for ``family``; cheap (array headers, or the table for CSV and
    Parquet; nothing is split, built or trained), so a pipeline can call it before any stage starts.

    A 2-D numeric source for cnn, rnn or transformer is read as signals (``KindChoice.note`` says so, for the
    caller to print). Raises InputError for an unknown family, a missing source, or data the family cannot
    take, naming every valid fix.
    """
    record = record_for(family)
    natural, shape = source_kind(source, target=target, text_column=text_column)
    kinds = {**accepted_kinds(), family: record.accepts}
    return choose_kind(family, kinds, natural, kind=kind, shape=shape, source=source)


def checkpoint_family(checkpoint: dict[str, Any], path: str, allowed: str | None = None) -> str:
    """The family a checkpoint names, refused unless it is registered or is exactly the class path ``allowed``.

    A checkpoint is data from anywhere: the class path inside it is never imported on its own say-so (LightningCLI's
    ``_class_path`` in checkpoints became a code-execution hole, Lightning #21832).

    Raises:
        InputError: no family, or a class path other than ``allowed`` (one line; nothing is imported).
    """
    family = checkpoint.get(FAMILY_KEY)
    if not isinstance(family, str) or not family:
        raise InputError(f"{path} is not a dlforge model checkpoint (no known family); pass one")
    if families.find(family) is not None and not families.is_class_path(family):
        return family
    if families.is_class_path(family) and family == allowed:
        return family
    if families.is_class_path(family):
        raise InputError(
            f"{path} names the class {family!r}, which the config does not (model.family={allowed}); dlforge imports "
            "only a class the config names — set model.family to that class path if you trust it"
        )
    raise InputError(f"{path} holds an unknown family {family!r}; use one of {', '.join(FAMILIES)}")


def load_model(checkpoint_path: str, allowed: str | None = None) -> L.LightningModule:
    """The module saved in a Lightning checkpoint, on CPU in eval mode.

    Reads with ``torch.load(weights_only=True)``: hyperparameters are plain types and the family name (or class
    path) is stored under its own key, so no pickled classes are needed.

    Args:
        allowed: the class path the configuration names; a checkpoint naming any other class path is refused
            before anything is imported (:func:`checkpoint_family`).
    """
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    family = checkpoint_family(checkpoint, checkpoint_path, allowed)
    if families.is_class_path(family):
        from dl_lightning.user_model import load_user_module

        return load_user_module(checkpoint).eval()
    model = record_for(family).module_class()(**checkpoint["hyper_parameters"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def saved_model(checkpoint: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(data, arch, optim)`` a checkpoint's model was built with: its data facts (``DataSpec.to_dict()``), the
    family's keyword arguments (a class path's ``model.args``) and the optimizer settings (``max_epochs`` included)."""
    if families.is_class_path(checkpoint.get(FAMILY_KEY) or ""):
        from dl_lightning.user_model import saved_facts

        facts = saved_facts(checkpoint)
        return dict(facts["data"]), dict(facts["args"]), dict(facts.get("optim") or {})
    hparams = dict(checkpoint["hyper_parameters"])
    return hparams.pop("data"), hparams, dict(hparams.pop("optim", None) or {})


def monitor_for(family: str, task: str) -> tuple[str | None, str]:
    """Default checkpoint/early-stopping metric and mode (the record's); ``(None, "min")`` when it has no good one."""
    return record_for(family).default_monitor(task)
