"""What the data tells the model: derived once at load time, stored in the checkpoint and the ONNX metadata."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["tabular", "image", "sequence", "text"]
Task = Literal["classification", "regression"]


@dataclass(frozen=True)
class DataSpec:
    """Facts derived from the train split; never written back into the config.

    Shapes are per example: tabular ``(F,)``, sequence ``(T, F)``, image ``(C, H, W)``, text ``(T,)`` token ids.
    ``mean``/``std`` are the normalization statistics fitted on the train split only — per feature for tabular and
    sequence data, per channel for images, empty for text — and are applied inside the net, so an exported model
    takes raw inputs.
    """

    kind: Kind
    task: Task
    input_shape: tuple[int, ...]
    num_outputs: int  # number of classes, or 1 for regression
    class_names: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    vocab: tuple[str, ...] = ()  # text: index → token; 0 is padding, 1 is unknown
    fingerprint: str = ""  # sha256 of the loaded arrays, a tag for the tracking run
    fill: tuple[float, ...] = ()  # data.impute: per-feature value replacing NaN (train split), applied in the net

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, str, int, float): safe for ``torch.load(weights_only=True)``."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DataSpec:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
