"""``dlforge run``: sweep → train (DDP) → test → register → distill → export → quantize → gates → champion → report.

One MLflow parent run holds a child run per stage. Each stage runs at most once per set of inputs (see
:mod:`pipelines.ledger`) and hands its result to the next by value: paths, metrics, run ids — nothing looks up
"the latest". The config is replaced once, after the sweep, with the best overrides.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dl_lightning.errors import InputError
from pipelines import tracking
from pipelines.config import Config, dump_yaml
from pipelines.ledger import StageLedger, stage_key
from pipelines.outputs import write_text_atomic

CHAMPION = "champion"
QUICK = Path(__file__).resolve().parent.parent / "configs" / "quick.yaml"


class StageFailed(RuntimeError):
    """A stage ended without a usable result (its own output says why); the CLI prints it and exits 1."""

    exit_code = 1


@dataclass(frozen=True)
class PipelineResult:
    output_dir: str
    run_id: str | None
    stages: dict[str, dict[str, Any]]
    skipped: list[str]
    champion: dict[str, Any] | None
    report_md: str
    report_html: str
    timings: dict[str, float] = field(default_factory=dict)


def run_pipeline(cfg: Config, *, force: bool = False) -> PipelineResult:
    """Run every stage of ``cfg`` once (skipping those already done with the same inputs unless ``force``)."""
    out = Path(cfg.output_dir).absolute()
    ledger = StageLedger(out / "pipeline_state.json", force=force)
    timings: dict[str, float] = {}
    with tracking.job_run(cfg, kind="pipeline", name=_run_name(cfg), run_id=ledger.run_id) as parent:
        ledger.run_id = parent
        ledger.save()
        stages = _run_stages(cfg, ledger, parent, out, timings)
        report_md, report_html = _report(cfg, stages, out, parent)
    return PipelineResult(
        str(out), parent, stages, ledger.skipped, stages.get("promote"), str(report_md), str(report_html), timings
    )


def _run_stages(cfg: Config, ledger: StageLedger, parent: str | None, out: Path, timings: dict) -> dict[str, Any]:
    def timed(name: str, key: str, work) -> dict[str, Any]:
        started = time.perf_counter()
        result = ledger.once(name, key, work)
        timings[name] = round(time.perf_counter() - started, 2)
        _say(f"stage {name}: {'skipped (done before)' if name in ledger.skipped else 'done'} ({timings[name]}s)")
        return result

    stages: dict[str, Any] = {}
    if cfg.tune.enabled:
        stages["sweep"] = timed("sweep", stage_key(cfg.to_dict()), lambda: sweep_stage(cfg, out / "sweep", parent))
    best = cfg.with_overrides(stages["sweep"]["best_overrides"]) if "sweep" in stages else cfg
    train_key = stage_key(best.to_dict())
    resume = ledger.started_with("train", train_key)
    stages["train"] = timed("train", train_key, lambda: train_stage(best, out / "train", parent, resume=resume))
    compress_key = stage_key(best.to_dict(), stages["train"])
    stages["compress"] = timed(
        "compress", compress_key, lambda: compress_stage(best, stages["train"], out / "compress", parent)
    )
    promote_key = stage_key(stages["train"], stages["compress"])
    stages["promote"] = timed("promote", promote_key, lambda: promote_stage(best, stages["train"], stages["compress"]))
    return stages


# ---------------------------------------------------------------- stages


def sweep_stage(cfg: Config, out: Path, parent: str | None) -> dict[str, Any]:
    from pipelines.sweep import format_table, sweep

    result = sweep(cfg.with_overrides({"output_dir": str(out)}), parent_run_id=parent)
    print(format_table(result), flush=True)
    if result.best_trial is None:
        raise StageFailed("the sweep finished no trial; see the trials table above")
    return _plain(dataclasses.asdict(result)) | {"stopped_early": result.stopped_early, "errored": result.errored}


def train_stage(cfg: Config, out: Path, parent: str | None, *, resume: bool) -> dict[str, Any]:
    """The final fit in a child process: under DDP Lightning re-launches *that* command per rank, not the pipeline.

    ``resume``: this stage was interrupted with the same config, so its last checkpoint is continued.
    """
    staged = cfg.with_overrides({"output_dir": str(out), "tracking.register": cfg.tracking.enabled})
    config_file = write_text_atomic(out / "config.yaml", dump_yaml(staged))
    command = [sys.executable, "-m", "pipelines", "train", str(config_file)]
    command += ["--parent-run-id", parent] if parent else []
    command += ["--resume", "auto"] if resume else []
    if subprocess.run(command).returncode != 0:
        raise StageFailed(f"training failed; its output is above and in {out}")
    return _read_json(out / "summary.json")


def compress_stage(cfg: Config, trained: dict[str, Any], out: Path, parent: str | None) -> dict[str, Any]:
    from pipelines.compress import compress, print_report

    teacher = trained["paths"]["best_checkpoint"] or trained["paths"]["last_checkpoint"]
    result = compress(cfg.with_overrides({"output_dir": str(out)}), teacher, parent_run_id=parent)
    print_report(result)
    return _plain(dataclasses.asdict(result)) | {"passed": result.passed}


def promote_stage(cfg: Config, trained: dict[str, Any], compressed: dict[str, Any]) -> dict[str, Any] | None:
    """Record the gates on the trained version; move ``champion`` to the best version that passed its gates."""
    version = (trained.get("tracking") or {}).get("model_version")
    if version is None:
        return None
    name = tracking.registered_model_name(cfg)
    tracking.tag_model_version(name, version, {"dlforge.gates": "passed" if compressed["passed"] else "failed"})
    return tracking.promote_best(name, CHAMPION, metric=_test_metric(trained), mode=_mode(trained))


def _test_metric(trained: dict[str, Any]) -> str:
    metrics = trained["metrics"]
    return next((m for m in ("test/acc", "test/mse", "test/g_loss") if m in metrics), sorted(metrics)[0])


def _mode(trained: dict[str, Any]) -> str:
    return "max" if _test_metric(trained).endswith("acc") else "min"


# ---------------------------------------------------------------- report


def _report(cfg: Config, stages: dict[str, Any], out: Path, parent: str | None) -> tuple[Path, Path]:
    from pipelines.report import write_reports

    md, html = write_reports(cfg, stages, out)
    tracking.log_artifact(parent, md)
    tracking.log_artifact(parent, html)
    return md, html


# ---------------------------------------------------------------- helpers


def _run_name(cfg: Config) -> str:
    return f"pipeline {cfg.model.family} {tracking.dataset_name(cfg.data.source)}"


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise StageFailed(f"{path} was not written; the stage did not finish")
    return json.loads(path.read_text())


def _plain(value: Any) -> Any:
    """JSON-able copy (paths → str) for the ledger."""
    return json.loads(json.dumps(value, default=str))


def _say(line: str) -> None:
    print(f"dlforge: {line}", flush=True)


def quick_overrides() -> dict[str, Any]:
    """The ``--quick`` overlay: the same pipeline shrunk to minutes on 2 CPU cores."""
    import yaml

    from pipelines.config import flatten

    return flatten(yaml.safe_load(QUICK.read_text()))


def check_pipeline(cfg: Config) -> None:
    """Refuse configs the pipeline cannot finish, before the first stage starts."""
    if cfg.trainer.num_nodes > 1:
        raise InputError(
            "dlforge run trains on this node only; launch multi-node training with torchrun or SLURM "
            "(dlforge train), then dlforge compress --teacher models:/NAME@candidate"
        )
