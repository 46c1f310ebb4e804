"""The student: the teacher's (or a named family's) architecture shrunk to a parameter budget, then distilled.

The same student is also trained from scratch (``compress.scratch``) with the same seed, budget and schedule, so the
difference between the two is the teacher's.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as L

from dl_lightning.data import Splits
from dl_lightning.data.balance import balanced_class_weights
from dl_lightning.data.user_datamodule import UserData
from dl_lightning.distill import DistillModule
from dl_lightning.families import Family
from dl_lightning.inherit import inherit
from dl_lightning.registry import build_model, record_for
from pipelines.compression.measure import count_params
from pipelines.compression.teacher import Teacher
from pipelines.config import Config
from pipelines.guards import newest_checkpoint
from pipelines.ledger import stage_key
from pipelines.outputs import write_text_atomic
from pipelines.train import fit_module, make_datamodule, optim_settings

INPUTS_FILE = "inputs.key"  # beside a student fit: the hash of what it was trained from


def student_epochs(cfg: Config, teacher: Teacher) -> int:
    """The student's budget: ``compress.epochs``, or under ``auto`` the teacher's own epochs (10 when unknown)."""
    epochs = cfg.compress.epochs
    if epochs == "auto":
        return teacher.epochs or 10
    return int(epochs)


def student_arch(cfg: Config, teacher: Teacher, width: float | None = None) -> tuple[str, dict[str, Any]]:
    """The student's family and keyword arguments: the starting architecture shrunk by ``compress.student``
    (``depth`` 0: the family's own student depth, else the starting architecture's)."""
    s = cfg.compress.student
    if s.family == "same":
        family, arch = teacher.family, dict(teacher.arch)
    else:  # a named family starts from its config section (a class path or a sectionless family: from nothing)
        family, arch = s.family, dataclasses.replace(cfg.model, family=s.family, args={}).arch()
    record = record_for(family)
    shrunk = shrink(arch, s.width if width is None else width, s.depth or record.student_depth, record)
    return family, {**shrunk, **s.args}


def sized_student_arch(cfg: Config, teacher: Teacher) -> tuple[str, dict[str, Any]]:
    """:func:`student_arch`, narrowed (width × 0.9 per step) until it has at most ``compress.student.max_params``
    of the teacher's parameters — widths 0.5 of an MLP quarter its hidden layers but only halve its input layer."""
    s = cfg.compress.student
    family, arch = student_arch(cfg, teacher)
    if not s.max_params or not record_for(family).width_keys:  # nothing to narrow: compress.student.args sizes it
        return family, arch
    budget = s.max_params * count_params(teacher.module.export_net()[0])
    width = s.width
    while count_params(build_model(family, teacher.spec, arch, {}).export_net()[0]) > budget and width > 0.02:
        width *= 0.9
        family, arch = student_arch(cfg, teacher, width)
    return family, arch


def shrink(arch: dict[str, Any], width: float, depth: int, record: Family) -> dict[str, Any]:
    """The record's width keys × ``width`` (at least 1); with ``depth`` > 0, its depth keys cut to ``depth`` layers
    (a list to its first ``depth`` items, an int to ``depth``).

    A key of ``record.multiple_of`` stays a multiple of its partner (a transformer's ``d_model`` of ``nhead``:
    attention splits it evenly between heads).
    """
    out = dict(arch)
    for key in record.width_keys:
        if isinstance(out.get(key), list | tuple):
            out[key] = [max(1, round(v * width)) for v in out[key]]
        elif isinstance(out.get(key), int) and not isinstance(out[key], bool):
            out[key] = max(1, round(out[key] * width))
    for key in record.depth_keys if depth else ():
        if isinstance(out.get(key), list | tuple):
            out[key] = list(out[key])[:depth]
        elif isinstance(out.get(key), int) and not isinstance(out[key], bool):
            out[key] = depth
    for key, of in record.multiple_of:
        if key in out and of in out:
            out[key] = max(out[of], round(out[key] / out[of]) * out[of])
    return out


def train_students(
    cfg: Config, teacher: Teacher, splits: Splits | UserData, family: str, arch: dict[str, Any]
) -> tuple[L.LightningModule, L.LightningModule | None]:
    """The distilled student and (when ``compress.scratch``) its twin: the same student trained on labels alone.

    Both start from the same seed — under ``compress.inherit`` the distilled student then takes its teacher's weights,
    the twin stays random — and get the same epochs, data, batches, mixed copies (``compress.mixup``), optimizer and
    lr schedule; the twin reads labels where the student reads the teacher (:class:`DistillModule` with no teacher), so
    the difference between them is the teacher's. Both come back in eval mode, at their last epoch's weights.
    """
    c = cfg.compress
    fit_cfg = student_fit_config(cfg, teacher, family)
    inputs = stage_key(fit_cfg.to_dict(), arch, family, _fingerprint(teacher.checkpoint))
    if teacher.ensemble is not None:  # compress.teacher=ensemble: another teacher, another student
        inputs = stage_key(inputs, [_fingerprint(m) for m in teacher.members])
    distilled = _build_student(fit_cfg, teacher, splits, family, arch)
    if c.inherit:
        inherit_teacher(distilled, teacher, family)
    taught_by = teacher.ensemble if teacher.ensemble is not None else teacher.module
    module = DistillModule(distilled, taught_by, teacher.spec.task, c.alpha, c.temperature, c.mixup)
    _fit(fit_cfg, module, splits, "student", inputs)
    if not c.scratch:
        return distilled, None
    scratch = _build_student(fit_cfg, teacher, splits, family, arch)
    twin = DistillModule(scratch, None, teacher.spec.task, c.alpha, c.temperature, c.mixup)
    _fit(fit_cfg, twin, splits, "scratch", inputs)
    return distilled, scratch


def inherit_teacher(student: L.LightningModule, teacher: Teacher, family: str) -> None:
    """``compress.inherit``: the student starts from slices of its teacher (``dl_lightning.inherit``: a layer with
    BatchNorm keeps its most important units, others their first ones); what was copied is kept as
    ``student.inherited`` (one line, for the report). Another family shares no names: no-op."""
    if family != teacher.family:
        return
    done = inherit(student.export_net()[0], teacher.module.export_net()[0])
    student.inherited = done.summary()
    print(f"dlforge: the student inherits its teacher's weights: {student.inherited}", flush=True)


def student_fit_config(cfg: Config, teacher: Teacher, family: str) -> Config:
    """The training config of a student fit: the compress budget and schedule, one process.

    A patient schedule (Beyer et al. 2022): as many epochs as the teacher had under ``compress.epochs=auto``, the lr
    decaying on a cosine to its end under ``compress.schedule=cosine``.
    """
    overrides: dict[str, Any] = {
        "model.family": family,
        "trainer.max_epochs": student_epochs(cfg, teacher),
        "trainer.devices": 1,  # a small student on one process: DDP would relaunch the whole command
        "trainer.num_nodes": 1,
        "trainer.strategy": "auto",
        "trainer.early_stopping_patience": 0,  # patience (Beyer et al. 2022): a student gains late, never cut short
    }
    if cfg.compress.schedule == "cosine":
        overrides["optim.scheduler"] = "cosine"
    if record_for(family).section is not None and cfg.model.args:  # a built-in student of a user's class: no args
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, family=family, args={}))
    return cfg.with_overrides(overrides)


def _build_student(
    fit_cfg: Config, teacher: Teacher, splits: Splits | UserData, family: str, arch: dict[str, Any]
) -> L.LightningModule:
    """A fresh student; under ``data.class_weights=balanced`` its hard-label loss weighs the classes as the
    teacher's did (inverse frequency in the train split)."""
    L.seed_everything(fit_cfg.seed, workers=True, verbose=False)
    student = build_model(family, teacher.spec, arch, optim_settings(fit_cfg))
    balanced = fit_cfg.data.class_weights == "balanced" and teacher.spec.task == "classification"
    if balanced and isinstance(splits, Splits) and hasattr(student, "set_class_weights"):
        student.set_class_weights(balanced_class_weights(splits.train[1], teacher.spec.num_outputs))
    return student


def _fit(cfg: Config, module: L.LightningModule, splits: Splits | UserData, name: str, inputs: str) -> None:
    folder = Path(cfg.output_dir).absolute() / name
    fit_cfg = cfg.with_overrides({"output_dir": str(folder)})
    resume = _continuable(folder, inputs)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = make_datamodule(cfg, splits)  # data.sampler=balanced draws the student's batches as the teacher's
    # the last epoch's weights, not the best-validated ones: picking a checkpoint on a small validation split is early
    # stopping by another name, and a student gains late (patience, Beyer et al. 2022); twins are treated alike
    fit_module(fit_cfg, module, datamodule, splits.spec.task, test=False, resume=resume)
    module.eval()


def _continuable(folder: Path, inputs: str) -> str | None:
    """The last checkpoint of an interrupted fit of the same ``inputs`` in ``folder``, or None for a fresh start.

    A compress stopped during a student's fit (a killed pipeline, a preempted job) continues it on the next call
    instead of training again from epoch 0; a finished fit is only reloaded. A folder left by other inputs is
    cleared, so no stale checkpoint is ever continued.
    """
    stamp = folder / INPUTS_FILE
    if stamp.is_file() and stamp.read_text() == inputs:
        found = newest_checkpoint(folder / "checkpoints", folder)
        if found is not None:
            print(f"dlforge: continuing the interrupted {folder.name} fit from {found.name}", flush=True)
            return str(found)
    shutil.rmtree(folder, ignore_errors=True)
    write_text_atomic(stamp, inputs)
    return None


def _fingerprint(path: str) -> str:
    """Which teacher file (path, size, modification time): cheap, and changes whenever the teacher is retrained."""
    stat = Path(path).stat()
    return f"{Path(path).absolute()}:{stat.st_size}:{stat.st_mtime_ns}"
