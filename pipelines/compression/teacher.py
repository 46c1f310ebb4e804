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
from dl_lightning.registry import FAMILY_KEY, load_model
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


def load_teacher(ref: str, cfg: Config | None = None) -> Teacher:
    """The teacher module (in eval mode) from a checkpoint path, an MLflow run id or ``models:/<name>@<alias>``.

    Raises:
        InputError: the reference resolves to nothing, or the file is not a dlforge checkpoint.
    """
    path, run_id = resolve_teacher(ref, cfg)
    try:
        module = load_model(path)
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except InputError:
        raise
    except Exception as exc:  # a truncated zip, a pickle refused by weights_only, ...
        raise InputError(
            f"cannot read teacher checkpoint {path!r} ({type(exc).__name__}); pass a dlforge .ckpt"
        ) from None
    hparams = dict(checkpoint["hyper_parameters"])
    spec = DataSpec.from_dict(hparams.pop("data"))
    epochs = int((hparams.pop("optim", None) or {}).get("max_epochs") or 0)
    run_id = run_id or tracking.run_id_from_checkpoint(path)  # the run tracking's callback recorded, if any
    return Teacher(module.eval(), path, checkpoint[FAMILY_KEY], spec, hparams, run_id, epochs)


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
