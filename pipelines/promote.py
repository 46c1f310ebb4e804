"""The promote stage: move ``champion`` in the model registry; ``dlforge promote`` and ``dlforge run`` call it.

``promote_stage(cfg, upstream)`` promotes what upstream holds:

- the train and compress stages' results (``dlforge run``, or a ``dlforge run`` folder read back): the trained
  PyTorch version is tagged with the teacher's gates and its model's ``champion`` moves to its best passing
  version; the ONNX model's ``champion`` moves to the best registered version of the artifact the compress stage
  chose — the first of ``compress.register``'s preference order whose own gates passed — so a failing student never
  blocks a passing teacher INT8;
- a compress result alone (a ``dlforge compress`` folder): the ONNX part only;
- a version the user names (``upstream.model``, ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``): ``champion``
  moves to it, unless its own gates failed.

It opens no run: the registry's aliases and tags are all it changes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dl_lightning.errors import InputError
from pipelines import tracking
from pipelines.config import Config
from pipelines.stage_results import NO_UPSTREAM, PromoteResult, StageFailed, Upstream

if TYPE_CHECKING:  # the stages' modules import torch; their results are only read here
    from pipelines.compression.results import CompressResult
    from pipelines.train_stage import TrainStageResult

CHAMPION = "champion"
TEST_METRICS = ("test/acc", "test/mse", "test/g_loss")  # a model's headline test metric, first found


def promote_stage(cfg: Config, upstream: Upstream = NO_UPSTREAM) -> PromoteResult | None:
    """Move ``champion`` to what ``upstream`` holds (see the module); None when nothing was registered.

    Raises:
        InputError: upstream holds neither a compress result nor a model version, or the version is not registered.
        StageFailed: the named version failed its own gates.
    """
    if upstream.model:
        return promote_version(cfg, upstream.model)
    if upstream.compress is None:
        raise InputError("promote needs a compress result or a registered version; pass models:/NAME/VERSION")
    trained = None
    if upstream.train is not None:
        trained = _promote_trained(cfg, upstream.train, upstream.compress)
        if trained is None:  # tracking off: nothing was registered
            return None
    return _promote_shipped(upstream.compress, trained)


def _promote_trained(cfg: Config, trained: TrainStageResult, compressed: CompressResult) -> PromoteResult | None:
    """Record the teacher's gates on the trained PyTorch version; its model's ``champion`` to the best passing one."""
    version = trained.logged.model_version
    if version is None:
        return None
    name = tracking.registered_model_name(cfg)
    passed = _teacher_passed(compressed)
    tracking.tag_model_version(name, version, {"dlforge.gates": "passed" if passed else "failed"})
    metric = headline_metric(trained.result.metrics)
    return PromoteResult.from_listing(tracking.promote_best(name, CHAMPION, metric=metric, mode=mode_of(metric)))


def _promote_shipped(compressed: CompressResult, trained: PromoteResult | None) -> PromoteResult | None:
    """The ONNX model's ``champion`` to the best registered version of the artifact the compress stage chose."""
    registered, chosen = compressed.registered or {}, compressed.champion
    if not registered or chosen is None:
        return dataclasses.replace(trained, champion=None, trained=trained) if trained else None
    where = {"dlforge.model": chosen}
    metric = compressed.metric
    onnx = tracking.promote_best(registered["name"], CHAMPION, metric=metric, mode=mode_of(metric), where=where)
    uri = f"models:/{onnx['name']}@{CHAMPION}" if onnx["champion"] else None
    return PromoteResult.from_listing(onnx, model=chosen if onnx["champion"] else None, uri=uri, trained=trained)


def promote_version(cfg: Config, ref: str) -> PromoteResult:
    """``champion`` to the version ``ref`` names, whatever the other versions score: a person's choice.

    Raises:
        InputError: ``ref`` is no registered version in ``cfg``'s store.
        StageFailed: the version's own gates failed (tag ``dlforge.gates``); ``champion`` stays where it was.
    """
    found = tracking.model_version(ref, cfg)
    if found is None:
        raise InputError(f"{ref} is not a registered model version in the tracking store; {tracking.known_models()}")
    if found.tags.get("dlforge.gates") == "failed":
        raise StageFailed(f"{found.name} version {found.version} failed its own gates; champion was not moved")
    metric = next((m for m in TEST_METRICS if f"metric.{m}" in found.tags), None)
    listing = tracking.promote_version(found.name, CHAMPION, found.version, metric=metric)
    model = found.tags.get("dlforge.model") or "pytorch"  # ONNX versions name their artifact; trained ones do not
    return PromoteResult.from_listing(listing, model=model, uri=f"models:/{found.name}@{CHAMPION}")


def _teacher_passed(compressed: CompressResult) -> bool:
    """Whether every gate guarding the teacher's (or generator's) fp32 file passed."""
    roles = {"teacher", "generator"}
    return all(g.passed for g in compressed.gates if not g.guards or roles & set(g.guards))


def headline_metric(metrics: dict[str, float]) -> str:
    """The headline test metric of a fit's metrics (the first of ``TEST_METRICS`` present, else the first name)."""
    return next((m for m in TEST_METRICS if m in metrics), sorted(metrics)[0])


def mode_of(metric: str | None) -> str:
    """``max`` for an accuracy, ``min`` for a loss or error (and for none: then the newest passing version wins)."""
    return "max" if (metric or "").endswith("acc") else "min"


# ---------------------------------------------------------------- a finished job's folder, read back


def upstream_of(folder: str | Path) -> Upstream:
    """The results a finished job left in ``folder``: ``dlforge run``'s ledger (train and compress) or
    ``dlforge compress``'s ``summary.json`` (compress).

    Raises:
        InputError: the folder holds neither a finished compress stage nor a ``dlforge compress`` summary.
    """
    from pipelines.compression.results import CompressResult  # plain records: no torch
    from pipelines.train_stage import TrainStageResult

    folder = Path(folder)
    stages = _read(folder / "pipeline_state.json").get("stages") or {}
    if (stages.get("compress") or {}).get("finished"):
        train = stages.get("train") or {}
        trained = TrainStageResult.from_dict(train["result"]) if train.get("finished") else None
        return Upstream(train=trained, compress=CompressResult.from_dict(stages["compress"]["result"]))
    summary = _read(folder / "summary.json")
    if summary.get("command") == "compress":
        return Upstream(compress=CompressResult.from_dict(_compress_fields(folder, summary)))
    raise InputError(
        f"{folder} holds no finished compress stage (pipeline_state.json of dlforge run or summary.json of "
        "dlforge compress); pass such a folder or models:/NAME/VERSION"
    )


def _compress_fields(folder: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """``dlforge compress``'s summary in ``CompressResult``'s fields (what promotion reads is all there)."""
    paths = summary.get("paths") or {}
    kept = ("metric", "rows", "gates", "teacher_run_id", "student", "registered", "champion")
    return {k: summary.get(k) for k in kept} | {
        "output_dir": str(folder),
        "files": {},
        "report_md": paths.get("compress_report_md", ""),
        "report_json": paths.get("compress_report_json", ""),
        "run_id": summary.get("mlflow_run_id"),
        "student": summary.get("student") or {},
    }


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        found = json.loads(path.read_text())
    except ValueError:
        raise InputError(f"{path} is not JSON; pass the output folder of a finished job") from None
    return found if isinstance(found, dict) else {}
