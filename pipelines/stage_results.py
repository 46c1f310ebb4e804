"""What the pipeline's stages hand each other: one frozen result per stage, each to and from plain JSON.

A stage is ``stage(cfg, upstream) -> <Stage>Result``: sweep → ``SweepResult`` (:mod:`pipelines.sweep`), train →
``TrainStageResult`` (:mod:`pipelines.train_stage`), compress → ``CompressResult``
(:mod:`pipelines.compression.results`), promote → :class:`PromoteResult`. Each has ``to_dict()`` / ``from_dict()``,
so the ledger (:mod:`pipelines.ledger`) keeps them as JSON and a resumed pipeline reads them back typed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.compression.results import CompressResult
    from pipelines.sweep import SweepResult
    from pipelines.train_stage import TrainStageResult


@dataclass(frozen=True)
class PromoteResult:
    """A registered model after the promotion: its versions and the one ``champion`` points at.

    ``versions``: rows of ``tracking.promote_best`` (version, aliases, gates, model, metric, run_id). ``model``: the
    shipped artifact (``teacher-int8``…) and ``uri`` its ``models:/NAME@champion``, both None without a champion.
    ``trained``: the trained PyTorch model's own promotion, beside the ONNX model's.
    """

    name: str
    champion: str | None = None
    versions: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None
    uri: str | None = None
    trained: PromoteResult | None = None

    @classmethod
    def from_listing(cls, listing: dict[str, Any], **extra: Any) -> PromoteResult:
        """From ``tracking.promote_best``'s ``{name, champion, versions}`` and the fields in ``extra``."""
        return cls(listing["name"], listing.get("champion"), list(listing.get("versions") or []), **extra)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromoteResult:
        trained = cls.from_dict(data["trained"]) if data.get("trained") else None
        names = {f.name for f in dataclasses.fields(cls)} - {"trained"}
        return cls(**{k: v for k, v in data.items() if k in names}, trained=trained)


@dataclass(frozen=True)
class StageResults:
    """Every stage's result in one job; ``sweep`` is None when the sweep is off, ``promote`` with tracking off."""

    train: TrainStageResult
    compress: CompressResult
    sweep: SweepResult | None = None
    promote: PromoteResult | None = None
