"""The teacher: resolved from a checkpoint, an MLflow run id or a registered model, loaded, checked against data."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch

from dl_lightning.data.spec import DataSpec
from dl_lightning.errors import InputError, clip, one_line
from dl_lightning.families import Family
from dl_lightning.registry import checkpoint_family, load_model, record_for, saved_model
from pipelines import tracking
from pipelines.config import Config

RUN_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Teacher:
    """The trained model being compressed, with what its checkpoint says about its data and training."""

    module: L.LightningModule
    checkpoint: str
    family: str
    spec: DataSpec
    arch: dict[str, Any]  # the family's keyword arguments, without data and optim
    run_id: str | None
    epochs: int = 0  # the teacher's own trainer.max_epochs: the student's budget under compress.epochs=auto
    # compress.teacher=ensemble: what the student learns from instead of ``module``, and the members' checkpoints
    ensemble: torch.nn.Module | None = None
    members: tuple[str, ...] = ()

    @property
    def record(self) -> Family:
        """The teacher's family record: what the stages ask (generative, sequence axis, student widths)."""
        return record_for(self.family)


def load_teacher(ref: str, cfg: Config | None = None) -> Teacher:
    """The teacher module (in eval mode) from a checkpoint path, an MLflow run id or ``models:/<name>@<alias>``.

    Raises:
        InputError: the reference resolves to nothing, or the file is not a dlforge checkpoint.
    """
    path, run_id = resolve_teacher(ref, cfg)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        # a class path inside the file is imported only when the config names the same one
        family = checkpoint_family(checkpoint, path, allowed=cfg.model.family if cfg is not None else None)
        module = load_model(path, allowed=family)
        data, arch, optim = saved_model(checkpoint)
    except InputError:
        raise
    except Exception as exc:  # a truncated zip, a pickle refused by weights_only, ...
        raise InputError(
            f"cannot read teacher checkpoint {path!r} ({type(exc).__name__}); pass a dlforge .ckpt"
        ) from None
    epochs = int(optim.get("max_epochs") or 0)
    run_id = run_id or tracking.run_id_from_checkpoint(path)  # the run tracking's callback recorded, if any
    return Teacher(module.eval(), path, family, DataSpec.from_dict(data), arch, run_id, epochs)


def resolve_teacher(ref: str, cfg: Config | None = None) -> tuple[str, str | None]:
    """(checkpoint path, run id or None).

    A run id or ``models:/<name>@<alias>`` is resolved in ``cfg``'s tracking store (without ``cfg``: the default
    one), even with ``tracking.enabled=false`` — it only reads — and downloaded to ``<output_dir>/teacher``.
    """
    path = Path(ref).expanduser()
    if path.is_file():
        return str(path.absolute()), None
    if ref.startswith("models:/") or RUN_ID.fullmatch(ref):
        dest = Path(cfg.output_dir).absolute() / "teacher" if cfg is not None else None
        try:
            return tracking.resolve_checkpoint(ref, cfg, dest=dest)
        except InputError as exc:
            raise InputError(f"teacher {one_line(exc)}") from None
    raise InputError(f"teacher {ref!r} is not a checkpoint file, an MLflow run id or models:/<name>@<alias>")


def check_compatible(teacher: DataSpec, data: DataSpec) -> None:
    """The data must look to the teacher like the data it was trained on (shape, outputs, kind, vocabulary).

    Raises:
        InputError: naming the first fact that differs.
    """
    for name in ("kind", "task", "input_shape", "num_outputs", "vocab"):
        if getattr(teacher, name) != getattr(data, name):
            raise InputError(
                f"the teacher was trained on data with {name}={_short(getattr(teacher, name))} but data.source gives "
                f"{_short(getattr(data, name))}; pass the teacher's data config"
            )


def _short(value: Any) -> str:
    return clip(repr(value), 60)


# ---------------------------------------------------------------- the ensemble teacher (compress.teacher=ensemble)


def ensemble_members(sweep: dict[str, Any], k: int) -> list[str]:
    """The best checkpoints of the ``k`` best finished trials of a sweep stage's result, best first.

    ``sweep`` is ``SweepResult`` as a dict: trials ranked by their best metric under its mode; a trial's checkpoint
    is ``<output_dir>/trials/<trial_id>/train/checkpoints/best.ckpt``.
    """
    finished = [t for t in sweep.get("trials") or [] if isinstance(t.get("best"), (int, float))]
    finished.sort(key=lambda t: t["best"], reverse=sweep.get("mode") == "max")
    root = Path(sweep["output_dir"]) / "trials"
    found = [root / t["trial_id"] / "train" / "checkpoints" / "best.ckpt" for t in finished]
    return [str(path) for path in found if path.is_file()][:k]


def load_ensemble(members: list[str], teacher: Teacher, cfg: Config) -> torch.nn.Module:
    """The members as one frozen teacher (:class:`dl_lightning.distill.EnsembleTeacher`) at
    ``compress.temperature``.

    Raises:
        InputError: fewer than two members, or one that does not fit the teacher's data.
    """
    from dl_lightning.distill import EnsembleTeacher

    if len(members) < 2:
        raise InputError(
            f"compress.teacher=ensemble needs at least 2 finished sweep trials with checkpoints, found {len(members)}; "
            "run it under dlforge run with the sweep on (tune.num_samples ≥ 2) or set compress.teacher=single"
        )
    nets = []
    for path in members:
        member = load_teacher(path, cfg)
        check_compatible(teacher.spec, member.spec)
        nets.append(member.module)
    return EnsembleTeacher(nets, teacher.spec.task or "classification", cfg.compress.temperature)
