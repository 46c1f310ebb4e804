"""``dlforge run``: sweep → train (DDP) → test → register → distill → export → quantize → gates → champion → report.

One MLflow parent run holds a child run per stage. Each stage is the function its own command calls,
``stage(cfg, upstream) -> <Stage>Result`` (:mod:`pipelines.stage_results`), given its own folder and the results
before it by value: paths, metrics, run ids — nothing looks up "the latest". The final fit runs as ``dlforge train``
in a child process (DDP re-launches that command). Each stage runs at most once per set of inputs (see
:mod:`pipelines.ledger`). The config is replaced once, after the sweep, with the best overrides.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dl_lightning.errors import InputError
from pipelines import tracking
from pipelines.config import Config, TuneConfig
from pipelines.ledger import StageLedger, stage_key
from pipelines.stage_results import PromoteResult, StageFailed, StageResults, Upstream

if TYPE_CHECKING:  # the stages' modules import torch: looked up when a stage runs
    from pipelines.compression.results import CompressResult
    from pipelines.sweep import SweepResult

QUICK = Path(__file__).resolve().parent.parent / "configs" / "quick.yaml"


@dataclass(frozen=True)
class PipelineResult:
    """One job: every stage's typed result, the stages skipped as done before, the reports and stage timings."""

    output_dir: str
    run_id: str | None
    stages: StageResults
    skipped: list[str]
    report_md: str
    report_html: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def champion(self) -> PromoteResult | None:
        """The promotion (None with tracking off)."""
        return self.stages.promote


def run_pipeline(cfg: Config, *, force: bool = False) -> PipelineResult:
    """Run every stage of ``cfg`` once (skipping those already done with the same inputs unless ``force``)."""
    out = Path(cfg.output_dir).absolute()
    ledger = StageLedger(out / "pipeline_state.json", force=force)
    timings: dict[str, float] = {}
    with tracking.job_run(cfg, kind="pipeline", name=_run_name(cfg), run_id=ledger.run_id) as parent:
        ledger.run_id = parent
        ledger.save()
        stages = _run_stages(cfg, ledger, Upstream(parent_run_id=parent), out, timings)
        report_md, report_html = _report(cfg, stages, out, parent)
    return PipelineResult(str(out), parent, stages, ledger.skipped, str(report_md), str(report_html), timings)


def _run_stages(cfg: Config, ledger: StageLedger, upstream: Upstream, out: Path, timings: dict) -> StageResults:
    """Each stage once, as ``stage(cfg, upstream)``: its config in its own folder under ``out``, and ``upstream``
    grown by each result. A stage is keyed by the (unstaged) config and the results it reads."""
    from pipelines.compression.results import CompressResult
    from pipelines.compression.stage import compress_stage
    from pipelines.promote import promote_stage
    from pipelines.train_stage import TrainStageResult, train_in_child

    def timed(name: str, key: str, work: Callable[[], Any], kind: type) -> Any:
        started = time.perf_counter()
        result = ledger.once(name, key, work, kind)
        timings[name] = round(time.perf_counter() - started, 2)
        _say(f"stage {name}: {'skipped (done before)' if name in ledger.skipped else 'done'} ({timings[name]}s)")
        return result

    sweep = _sweep_once(cfg, ledger, upstream, out, timed) if cfg.tune.enabled else None
    upstream = upstream.then(sweep=sweep)
    best = cfg.with_overrides(sweep.best_overrides) if sweep is not None else cfg
    key = stage_key(best.to_dict())
    resume = ledger.started_with("train", key)
    work = lambda: train_in_child(_staged(best, out, "train"), upstream, resume=resume)  # noqa: E731
    train = timed("train", key, work, TrainStageResult)
    upstream = upstream.then(train=train)
    work = lambda: _printed(compress_stage(_staged(best, out, "compress"), upstream))  # noqa: E731
    compress = timed("compress", stage_key(best.to_dict(), train), work, CompressResult)
    upstream = upstream.then(compress=compress)
    promote = timed("promote", stage_key(train, compress), lambda: promote_stage(best, upstream), PromoteResult)
    return StageResults(train=train, compress=compress, sweep=sweep, promote=promote)


def _sweep_once(cfg: Config, ledger: StageLedger, upstream: Upstream, out: Path, timed: Callable) -> SweepResult:
    """The sweep stage through ``timed`` (the ledger), keyed by the config; an interrupted one is continued."""
    from pipelines.sweep import SweepResult

    key = stage_key(cfg.to_dict())
    resume = ledger.started_with("sweep", key)
    work = lambda: sweep_stage(_staged(cfg, out, "sweep"), upstream, key=key, resume=resume)  # noqa: E731
    return timed("sweep", key, work, SweepResult)


def _staged(cfg: Config, out: Path, stage: str) -> Config:
    """``cfg`` writing into the stage's own folder ``<out>/<stage>``."""
    return cfg.with_overrides({"output_dir": str(out / stage)})


# ---------------------------------------------------------------- the sweep, as the pipeline continues it


def sweep_stage(cfg: Config, upstream: Upstream, *, key: str, resume: bool) -> SweepResult:
    """The sweep stage in ``<output_dir>/tune/sweep-<key>``: named by its inputs, so an interrupted pipeline finds
    it again.

    ``resume``: this stage was interrupted with the same config; its finished trials are kept and unfinished ones
    continue from their checkpoints (the folder is verified as dlforge's own before Ray reads it).

    Raises:
        StageFailed: no trial finished.
    """
    from pipelines.sweep import experiment_path, format_table, sweep
    from tune.sweep import is_experiment

    name = f"sweep-{key[:12]}"
    folder = experiment_path(cfg, name)
    if resume and is_experiment(str(folder)):
        _say(f"continuing the interrupted sweep in {folder}")
        result = sweep(cfg, upstream, resume=str(folder))
    else:
        shutil.rmtree(folder, ignore_errors=True)  # left by a run this ledger no longer continues (--force)
        result = sweep(cfg, upstream, experiment=name)
    print(format_table(result), flush=True)
    if result.best_trial is None:
        raise StageFailed("the sweep finished no trial; see the trials table above")
    return result


def _printed(result: CompressResult) -> CompressResult:
    """The compress stage's table on the terminal, as ``dlforge compress`` prints it."""
    from pipelines.compression.tables import print_report

    print_report(result)
    return result


# ---------------------------------------------------------------- report


def _report(cfg: Config, stages: StageResults, out: Path, parent: str | None) -> tuple[Path, Path]:
    from pipelines import front_page
    from pipelines.report import write_reports

    md, html = write_reports(cfg, stages, out)
    tracking.log_artifact(parent, md)
    tracking.log_artifact(parent, html)
    front_page.publish(cfg, parent, stages, out)  # headline metrics, description, links, the report's images
    return md, html


# ---------------------------------------------------------------- helpers


def _run_name(cfg: Config) -> str:
    return f"pipeline {cfg.model.family} {tracking.dataset_name(cfg.data.source)}"


def _say(line: str) -> None:
    print(f"dlforge: {line}", flush=True)


def quick_overrides() -> dict[str, Any]:
    """The ``--quick`` overlay: the same pipeline shrunk to minutes on 2 CPU cores."""
    import yaml

    from pipelines.config import flatten

    return flatten(yaml.safe_load(QUICK.read_text()))


# ---------------------------------------------------------------- what the command reports


def sweep_paths(sweep: SweepResult | None) -> dict[str, str]:
    """The files a sweep writes that a user opens: best config, results CSV, plot, and its Ray experiment."""
    if sweep is None:
        return {}
    keys = ("best_config", "results_csv", "plot", "experiment_path")
    plots = {f"sweep_{name}_plot": path for name, path in sweep.insight_plots.items()}
    return {key: getattr(sweep, key) for key in keys if getattr(sweep, key)} | plots


def compress_paths(compressed: CompressResult) -> dict[str, str]:
    """The compress stage's reports, ONNX files (``onnx_<artifact>``) and student checkpoints."""
    paths = {"compress_report_md": compressed.report_md, "compress_report_json": compressed.report_json}
    paths |= {f"onnx_{key.replace('-', '_')}": str(path) for key, path in compressed.files.items()}
    checkpoints = _read_report(compressed).get("checkpoints", {})
    cards = sorted((Path(compressed.output_dir) / "model_cards").glob("*/model_card.md"))
    paths |= {f"model_card_{card.parent.name.replace('-', '_')}": str(card) for card in cards}
    return paths | {key: path for key, path in checkpoints.items() if path}


def _read_report(compressed: CompressResult) -> dict[str, Any]:
    path = Path(compressed.report_json)
    return json.loads(path.read_text()) if path.is_file() else {}


def pipeline_paths(result: PipelineResult) -> dict[str, Any]:
    """Every file of the run a user opens or hands on, by name (``plots`` is a list); absent ones left out."""
    stages, trained = result.stages, result.stages.train.result
    paths: dict[str, Any] = {"report_md": result.report_md, "report_html": result.report_html}
    paths |= {f"sweep_{k}": v for k, v in sweep_paths(stages.sweep).items()}
    checkpoints = {"best_checkpoint": trained.best_checkpoint, "last_checkpoint": trained.last_checkpoint}
    paths |= {k: v for k, v in checkpoints.items() if v}
    out = Path(trained.output_dir)
    paths["train_config"] = str(out / "config.yaml")
    paths |= compress_paths(stages.compress)
    return paths | review_paths(out)


def review_paths(out: Path) -> dict[str, Any]:
    """A fit's review files under ``out``: ``plots`` (PNG, GAN samples too), ``review_reports`` (md, json) and the
    registered version's ``model_card`` (md)."""
    review = sorted(p for p in (out / "review").glob("*") if p.is_file())
    plots = [str(p) for p in review if p.suffix == ".png"] + sorted(str(p) for p in (out / "samples").glob("*.png"))
    reports = [str(p) for p in review if p.suffix != ".png"]
    card = out / "model_card.md"
    found: dict[str, Any] = {k: v for k, v in (("plots", plots), ("review_reports", reports)) if v}
    return found | ({"model_card": str(card)} if card.is_file() else {})


def registered_models(result: PipelineResult) -> list[dict[str, Any]]:
    """The versions this run registered, as ``models:/NAME/VERSION`` with their aliases after the promotion."""
    promote = result.stages.promote
    found: list[dict[str, Any]] = []
    version = result.stages.train.logged.model_version
    if version:
        found.append(_model_entry(promote.trained if promote else None, version, "pytorch"))
    for key, onnx_version in ((result.stages.compress.registered or {}).get("versions") or {}).items():
        found.append(_model_entry(promote, onnx_version, key))
    return found


def _model_entry(listing: PromoteResult | None, version: str, artifact: str) -> dict[str, Any]:
    rows = {row["version"]: row for row in (listing.versions if listing else [])}
    name = listing.name if listing else ""
    aliases = rows.get(str(version), {}).get("aliases", [])
    return {"uri": f"models:/{name}/{version}", "artifact": artifact, "aliases": aliases}


def champion_of(result: PipelineResult, tracked: bool) -> str | None:
    """The shipped artifact: promoted in the registry (tracking on), else the compress stage's choice."""
    if tracked:
        return result.champion.model if result.champion else None
    return result.stages.compress.champion


def exit_code(has_champion: bool, failed: list[dict[str, Any]], *, strict: bool) -> int:
    """0 when a champion was promoted; 1 when none was, or under ``--strict`` when any gate failed."""
    return 0 if has_champion and not (strict and failed) else 1


def unused_tune_keys(cfg: Config) -> list[str]:
    """``tune.*`` keys set away from their defaults (``tune.enabled`` aside): unused when no sweep runs."""
    default = TuneConfig()
    names = [f.name for f in dataclasses.fields(TuneConfig) if f.name != "enabled"]
    return [f"tune.{n}" for n in names if getattr(cfg.tune, n) != getattr(default, n)]


def check_pipeline(cfg: Config) -> None:
    """Refuse configs the pipeline cannot finish, before the first stage starts."""
    if cfg.compress.teacher == "ensemble" and not cfg.tune.enabled:
        raise InputError(
            "compress.teacher=ensemble distils from the best sweep trials, but the sweep is off; "
            "drop --no-sweep / set tune.enabled=true, or set compress.teacher=single"
        )
    if cfg.compress.register.startswith("ensemble") and cfg.compress.teacher != "ensemble":
        raise InputError(
            f"compress.register={cfg.compress.register} needs compress.teacher=ensemble; set compress.teacher=ensemble"
        )
    if cfg.trainer.num_nodes > 1:
        raise InputError(
            "dlforge run trains on this node only; launch multi-node training with torchrun or SLURM "
            "(dlforge train), then dlforge compress --teacher models:/NAME@candidate"
        )
