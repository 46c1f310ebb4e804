"""What the pipeline's stages hand each other: one frozen result per stage, each to and from plain JSON.

A stage is ``stage(cfg, upstream) -> <Stage>Result``: ``cfg`` holds its own ``output_dir``, and ``upstream``
(:class:`Upstream`) what came before it — the earlier stages' results, a model the user named, and the run its own run
nests under. The same function serves its ``dlforge`` command and ``dlforge run``:

- sweep: :func:`pipelines.sweep.sweep` → ``SweepResult``; its run ``kind="sweep"``;
- train: :func:`pipelines.train_stage.train_stage` → ``TrainStageResult``; ``kind="train"`` (``dlforge run`` calls
  it through ``dlforge train`` in a child process, :func:`pipelines.train_stage.train_in_child`, for DDP's relaunch);
- compress: :func:`pipelines.compression.stage.compress_stage` → ``CompressResult``; ``kind="compress"``;
- promote: :func:`pipelines.promote.promote_stage` → :class:`PromoteResult`; no run (it moves registry aliases);
- predict: :func:`pipelines.predict.predict_stage` → :class:`PredictResult`; no run.

A stage with a run opens it with ``tracking.job_run(cfg, kind=…, parent_run_id=upstream.parent_run_id)``. Each
result has ``to_dict()`` / ``from_dict()``, so the ledger (:mod:`pipelines.ledger`) keeps them as JSON and a resumed
pipeline reads them back typed. This module imports no stage (nor torch): every command may import it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.compression.results import CompressResult
    from pipelines.sweep import SweepResult
    from pipelines.train_stage import TrainStageResult


class StageFailed(RuntimeError):
    """A stage ended without a usable result (its own output says why); the CLI prints it and exits 1."""

    exit_code = 1


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
class PredictResult:
    """Predictions written: the model that made them (a path or ``models:/`` URI), the input, the CSV and its rows."""

    model: str
    source: str
    output: str
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PredictResult:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class Upstream:
    """What a stage is handed besides its config; a stage reads the fields it needs, each None when absent.

    ``parent_run_id``: the pipeline's run, under which the stage's own run nests. ``model``: a model the user named
    instead of an earlier stage making it — a checkpoint, run id or ``models:/`` URI (compress's teacher, the version
    promote moves ``champion`` to, the model predict runs).
    """

    parent_run_id: str | None = None
    sweep: SweepResult | None = None
    train: TrainStageResult | None = None
    compress: CompressResult | None = None
    promote: PromoteResult | None = None
    model: str | None = None

    def then(self, **results: Any) -> Upstream:
        """This upstream with the results of the stage just finished added (``then(train=…)``)."""
        return dataclasses.replace(self, **results)


NO_UPSTREAM = Upstream()  # a stage run on its own, by its command


@dataclass(frozen=True)
class StageResults:
    """Every stage's result in one job; ``sweep`` is None when the sweep is off, ``promote`` with tracking off."""

    train: TrainStageResult
    compress: CompressResult
    sweep: SweepResult | None = None
    promote: PromoteResult | None = None
