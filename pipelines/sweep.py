"""The sweep stage: check the space, run the trials with Ray Tune, hand back the best config.

``sweep(cfg)`` opens a parent MLflow run; every trial is one nested child run that calls the same ``train()`` as
``dlforge train`` — one training loop — with the trial's overrides. A trial keeps its child run through retries,
PBT restarts and ``--resume`` (the run id lives in the trial's own folder), so no run is ever duplicated.

Files in ``output_dir``: ``best_config.yaml`` (what ``dlforge train`` takes unchanged; it trains into ``final/``),
``sweep_results.csv``, ``sweep_trials.png``, ``trials/<id>/`` (each trial's checkpoints and run id) and
``tune/<name>/`` (Ray's experiment, which ``--resume`` takes). The files are also logged to the parent run.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import dataclasses
import io
import json
import math
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from dl_lightning.data.class_path import anchored, argument_keys, import_class_path, is_class_spec
from dl_lightning.errors import InputError
from pipelines import tracking
from pipelines.config import Config, ConfigError, all_keys, build_config, dump_yaml
from pipelines.outputs import write_json_atomic, write_text_atomic
from pipelines.preflight import check_data
from pipelines.stage_results import NO_UPSTREAM, Upstream
from pipelines.sweep_insight import insight, read_results, resolve_warm_start, warm_start_points
from pipelines.train import resolve_monitor, train
from tune.settings import DEFAULT_SPACE, SweepJob
from tune.space import Dimension, check_search, parse_space

SWEEP_STATE_FILE = "dlforge_sweep.json"  # in the Ray experiment folder: the config and parent run of the sweep
WATCHDOG_GRACE_S = 30.0  # past tune.trial_timeout_s: the per-batch deadline and the final report go first
UNSWEEPABLE = ("tune.", "tracking.", "output_dir", "trainer.devices", "trainer.num_nodes", "trainer.strategy")


@dataclass(frozen=True)
class SweepPlan:
    """A sweep checked before Ray starts: its space, and the metric training is known to log."""

    space: dict[str, Dimension]
    metric: str
    mode: str


@dataclass(frozen=True)
class SweepResult:
    """What the sweep hands forward: the best config (a path and its overrides) and where everything is."""

    output_dir: str
    best_config: str | None
    best_overrides: dict[str, Any]
    best_metric: float | None
    best_trial: str | None
    metric: str
    mode: str
    trials: list[dict[str, Any]]
    results_csv: str
    plot: str | None
    experiment_path: str
    run_id: str | None
    timing: dict[str, float] = field(default_factory=dict)
    importance: dict[str, float] = field(default_factory=dict)  # fANOVA share of each searched key, largest first
    insight_plots: dict[str, str] = field(default_factory=dict)  # importance, parallel, metric_vs_size → .png

    @property
    def stopped_early(self) -> list[str]:
        return [t["trial_id"] for t in self.trials if t["status"] == "stopped"]

    @property
    def errored(self) -> list[str]:
        return [t["trial_id"] for t in self.trials if t["status"] == "error"]

    def to_dict(self) -> dict[str, Any]:
        """Every field, plus ``stopped_early`` and ``errored`` (trial ids), as JSON-able values."""
        return dataclasses.asdict(self) | {"stopped_early": self.stopped_early, "errored": self.errored}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepResult:
        """The result :meth:`to_dict` wrote (the trial-id lists are recomputed, not read)."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


# ---------------------------------------------------------------- checks before Ray


def plan_sweep(cfg: Config) -> SweepPlan:
    """Check the space, the search/scheduler combination and the metric; no Ray, no tracking, nothing written.

    Raises:
        InputError: one line naming the bad key, distribution, value or metric.
    """
    valid = [k for k in all_keys() if not k.startswith(UNSWEEPABLE)]
    raw_space = cfg.tune.space
    if is_class_spec(cfg.data.source):
        valid, raw_space = _datamodule_space(cfg, valid)
    if is_class_spec(cfg.model.family):  # a user's model: its own constructor arguments are keys too
        from dl_lightning.user_model import argument_keys as model_argument_keys

        valid = [*valid, *model_argument_keys(cfg.model.family)]
    space = parse_space(raw_space, valid)
    check_search(space, cfg.tune.search, cfg.tune.scheduler)
    _check_values(cfg, space)
    if cfg.tune.scheduler == "pbt" and cfg.tune.workers_per_trial > 1:
        raise InputError("tune.scheduler=pbt needs tune.workers_per_trial=1 (multi-worker trials do not checkpoint)")
    if "://" in (cfg.tune.storage_path or ""):
        raise InputError(
            f"tune.storage_path={cfg.tune.storage_path} is a URI; object stores are not supported yet — "
            "use a path every node mounts (NFS, Lustre)"
        )
    metric, mode = _metric_and_mode(cfg)
    return SweepPlan(space, metric, mode)


def _datamodule_space(cfg: Config, valid: list[str]) -> tuple[list[str], dict[str, Any]]:
    """A DataModule source makes its own loaders: its constructor's arguments (``data.args.<name>``) replace the
    ``data.*`` keys, and the default space's ``data.batch_size`` becomes ``data.args.batch_size`` (or is left out)."""
    arguments = argument_keys(import_class_path(cfg.data.source, "data.source"), "data.args")
    valid = [k for k in valid if not k.startswith("data.")] + arguments
    if cfg.tune.space != DEFAULT_SPACE:
        return valid, cfg.tune.space
    space = {k: v for k, v in cfg.tune.space.items() if k != "data.batch_size"}
    if "data.args.batch_size" in arguments:
        space["data.args.batch_size"] = cfg.tune.space["data.batch_size"]
    return valid, space


def _check_values(cfg: Config, space: dict[str, Dimension]) -> None:
    """Every bound and candidate must be a value the config accepts (type and range) for its key."""
    for key, dim in space.items():
        for value in dim.candidates():
            try:
                cfg.with_overrides({key: list(value) if isinstance(value, tuple) else value})
            except ConfigError as exc:
                raise InputError(
                    f"tune.space.{key}: {dim.describe()} allows a value the config refuses: {exc}"
                ) from None


def _metric_and_mode(cfg: Config) -> tuple[str, str]:
    """``tune.metric`` (auto: the checkpoint monitor), checked against what one real training step logs."""
    task = check_data(cfg).spec.task
    monitor, monitor_mode = resolve_monitor(cfg, task)
    metric = monitor if cfg.tune.metric == "auto" else cfg.tune.metric
    if metric is None:
        raise InputError(f"model.family={cfg.model.family} has no default metric; set tune.metric, e.g. val/g_loss")
    logged = {monitor} if metric == monitor else logged_metrics(cfg)  # the monitor is logged by every family
    if metric not in logged:
        raise InputError(f"tune.metric={metric} is never logged by training; choose one of {', '.join(sorted(logged))}")
    if cfg.tune.mode != "auto":
        return metric, cfg.tune.mode
    if metric == monitor:
        return metric, monitor_mode
    return metric, "min" if metric.endswith(("loss", "mse", "mae", "log_loss")) else "max"


def logged_metrics(cfg: Config) -> set[str]:
    """Names of the ``train/…`` and ``val/…`` values training logs, from a two-batch probe fit (about a second)."""
    names: set[str] = set()

    class Collect(Callback):
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            names.update(k for k in trainer.callback_metrics if k.startswith(("train/", "val/")))

    with tempfile.TemporaryDirectory(prefix="dlforge-probe-") as tmp:
        probe = cfg.with_overrides({**_single_process(), **_PROBE, "output_dir": tmp})
        with contextlib.redirect_stdout(io.StringIO()):
            train(probe, callbacks=[Collect()], test=False)
    return names


_PROBE = {  # 2 batches each: a limit of 1 means "all of them" (a fraction), above 1 a count
    "trainer.max_epochs": 1,
    "trainer.limit_train_batches": 2,
    "trainer.limit_val_batches": 2,
    "trainer.early_stopping_patience": 0,
    "tracking.enabled": False,
}


def _single_process() -> dict[str, Any]:
    return {"trainer.devices": 1, "trainer.num_nodes": 1, "trainer.strategy": "auto"}


# ---------------------------------------------------------------- the stage


def sweep(
    cfg: Config, upstream: Upstream = NO_UPSTREAM, *, resume: str | None = None, experiment: str | None = None
) -> SweepResult:
    """The sweep stage: run the sweep of ``cfg.tune`` (or continue the one in ``resume``) and write its outputs.

    Args:
        upstream: its ``parent_run_id`` (the pipeline's run) nests the sweep's run; a sweep reads nothing else.
        resume: the ``experiment_path`` of an interrupted sweep (``cfg`` must be its ``load_sweep_config``): its
            parent run continues, finished trials are kept, unfinished ones go on from their last checkpoint.
        experiment: the name of a new sweep's folder under the storage path (default: time-stamped).
    """
    from tune.sweep import run_sweep  # imports Ray: only once the input is known to be good

    started = time.perf_counter()
    parent_run_id = upstream.parent_run_id
    saved = _load_state(resume) if resume else None
    plan = plan_sweep(cfg)
    job = sweep_job(cfg, plan, experiment=Path(resume).name if resume else experiment)
    job = dataclasses.replace(job, points=() if resume else warm_start(cfg, plan))
    run_id = saved["run_id"] if saved else None
    with tracking.job_run(cfg, kind="sweep", name=_run_name(cfg), parent_run_id=parent_run_id, run_id=run_id) as run_id:
        experiment = Path(job.storage_path) / job.name
        _save_state(experiment, cfg, run_id)
        tracking.log_artifact(run_id, experiment / SWEEP_STATE_FILE)
        # trials run in their own folders: a DataModule or model file named relative to this one must still be found
        anchors = {key: anchored(cfg.flat()[key]) for key in ("data.source", "model.family")}
        trial_cfg = cfg.with_overrides(anchors)
        trial_fn = TrainingTrial(trial_cfg, plan.metric, run_id, job.storage_path)
        try:
            outcome = run_sweep(trial_fn, plan.space, job, resume=str(experiment) if resume else None)
        finally:  # Tune has returned or the driver is unwinding: no trial process is left to end its own run
            tracking.close_unfinished_children(run_id, "the sweep ended while this trial's run was open")
        _raise_input_errors(outcome)
        result = _write_outputs(cfg, plan, outcome, run_id, started)
        _log_to_parent(result, outcome, run_id)
    return result


def warm_start(cfg: Config, plan: SweepPlan) -> tuple[dict[str, Any], ...]:
    """``tune.warm_start``'s best configurations (up to half of ``tune.num_samples``) that fit this sweep's space.

    Values outside the space are dropped, said in one line.

    Raises:
        InputError: the reference is neither a ``sweep_results.csv`` nor a sweep run in the configured store.
    """
    ref = cfg.tune.warm_start
    if not ref:
        return ()
    path = resolve_warm_start(ref, lambda run: tracking.download_run_file(run, "sweep/sweep_results.csv", cfg))
    limit = max(1, cfg.tune.num_samples // 2)  # the other half still explores the new space
    points, dropped = warm_start_points(read_results(path), plan.space, plan.mode, limit)
    if dropped:
        print(f"tune.warm_start: dropped {len(dropped)} values outside the space: {'; '.join(dropped)}", flush=True)
    print(f"tune.warm_start: the first {len(points)} trials start from {ref}'s best configurations", flush=True)
    return tuple(points)


def _raise_input_errors(outcome: Any) -> None:
    """When no trial could use its input, the first trial's reason is the sweep's one-line error (exit 2)."""
    refused = [(r.trial_id, r.state["input_error"]) for r in outcome.trials if r.state.get("input_error")]
    if refused and outcome.best is None:
        trial_id, reason = refused[0]
        raise InputError(f"trial {trial_id}: {reason} (every trial refused its input; nothing was retried)")


def experiment_path(cfg: Config, name: str) -> Path:
    """Where the sweep of ``cfg`` named ``name`` keeps Ray's state: ``tune.storage_path`` or ``<output_dir>/tune``."""
    storage = cfg.tune.storage_path
    return (Path(storage) if storage else Path(cfg.output_dir) / "tune").absolute() / name


def sweep_job(cfg: Config, plan: SweepPlan, *, experiment: str | None = None) -> SweepJob:
    """The sweep as Ray Tune runs it: ``cfg.tune`` as it is, plus the plan's metric, absolute folders, the epoch
    budget, the experiment's name (``experiment``, or a new time-stamped one) and the seed."""
    output = Path(cfg.output_dir).absolute()
    folder = experiment_path(cfg, experiment or time.strftime("sweep-%Y%m%d-%H%M%S"))
    return SweepJob(
        tune=cfg.tune,
        metric=plan.metric,
        mode=plan.mode,
        storage_path=str(folder.parent),
        trials_dir=str(output / "trials"),
        max_epochs=cfg.trainer.max_epochs,
        name=folder.name,
        seed=cfg.seed,
    )


def _run_name(cfg: Config) -> str:
    t = cfg.tune
    return (
        f"sweep {cfg.model.family}-{tracking.dataset_name(cfg.data.source)} {t.search}+{t.scheduler} n={t.num_samples}"
    )


# ---------------------------------------------------------------- one trial (runs in a Ray worker process)


@dataclass(frozen=True)
class TrainingTrial:
    """The function every trial runs: one nested MLflow run around one ``train()``; picklable for Ray."""

    cfg: Config
    metric: str
    parent_run_id: str | None
    storage_path: str

    def __call__(self, params: dict[str, Any], ctx: Any) -> None:
        """One trial; bad input (InputError) ends it without a retry and is recorded for the driver to report.

        A single-process trial still running ``WATCHDOG_GRACE_S`` past ``tune.trial_timeout_s`` (hung before its
        first batch, where the per-batch deadline never runs) is interrupted and ends as stopped, not retried.
        """
        limit = self.cfg.tune.trial_timeout_s if ctx.workers == 1 else 0.0
        try:
            with watchdog(limit + WATCHDOG_GRACE_S if limit else 0.0):
                self._run(params, ctx)
        except InputError as exc:  # retrying cannot fix input: max_failures would rerun it with Ray's traceback
            ctx.save_state(input_error=str(exc))
        except TrialTimedOut:
            ctx.save_state(timed_out=f"still running {limit + WATCHDOG_GRACE_S:g}s after it started")

    def _run(self, params: dict[str, Any], ctx: Any) -> None:
        cfg = trial_config(self.cfg, params, ctx.trial_dir)
        earlier = ctx.load_state().get("run_id")
        tags = {"ray.trial_id": ctx.trial_id, "ray.node_id": ctx.node_id}
        name = trial_run_name(ctx.trial_id)
        with tracking.job_run(
            cfg, kind="trial", name=name, parent_run_id=self.parent_run_id, run_id=earlier, tags=tags
        ) as run_id:
            if run_id and run_id != earlier:
                ctx.save_state(run_id=run_id)
            payload = {"cfg": cfg, "run_id": run_id, "metric": self.metric, "resume": ctx.checkpoint}
            if ctx.workers == 1:
                fit_trial(payload)
                return
            from tune.ray_train import run_with_workers

            r = cfg.tune.resources_per_trial
            run_with_workers(
                fit_trial_on_worker,
                payload,
                num_workers=ctx.workers,
                cpu=r.cpu,
                gpu=r.gpu,
                storage_path=str(Path(ctx.trial_dir) / "ray_train"),
                name=f"trial_{ctx.trial_id}",
            )


def trial_run_name(trial_id: str) -> str:
    """``trial 3`` for Ray's ``ba4f0_00003``: short enough for the runs table's name column (the full id is the
    run's ``ray.trial_id`` tag; the sweep's parent run already tells sweeps apart)."""
    number = trial_id.rpartition("_")[2]
    return f"trial {int(number)}" if number.isdigit() else f"trial {trial_id}"


class TrialTimedOut(Exception):
    """Raised inside a trial by its watchdog: the trial ran past ``tune.trial_timeout_s`` plus a grace period."""


@contextlib.contextmanager
def watchdog(limit_s: float) -> Iterator[None]:
    """Raise TrialTimedOut in this thread once ``limit_s`` seconds have passed (0: never), wherever it is.

    Python delivers the exception at the thread's next bytecode, so a loop waiting on data is interrupted; a single
    C call that never returns is not.
    """
    if limit_s <= 0:
        yield
        return
    target, done = threading.get_ident(), threading.Event()

    def fire() -> None:
        if not done.wait(limit_s):
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target), ctypes.py_object(TrialTimedOut))

    timer = threading.Thread(target=fire, name="dlforge-trial-watchdog", daemon=True)
    timer.start()
    try:
        yield
    finally:
        done.set()
        timer.join()


def trial_config(cfg: Config, params: dict[str, Any], trial_dir: str) -> Config:
    """The sweep's config with the trial's values, its own output folder, one process and its CPU share."""
    r, workers = cfg.tune.resources_per_trial, cfg.tune.workers_per_trial
    threads = cfg.trainer.threads or max(1, math.floor(r.cpu / workers))  # 2 trials × 2 threads on 2 cores thrash
    fixed = {**_single_process(), "output_dir": str(Path(trial_dir) / "train"), "trainer.threads": threads}
    if r.gpu == 0:
        fixed["trainer.accelerator"] = "cpu"
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}
    return cfg.with_overrides({**values, **fixed, "tune.enabled": False})


def fit_trial(payload: dict[str, Any]) -> None:
    """Train one trial in this process, reporting every epoch to Tune; a Tune stop arrives as SystemExit(0)."""
    from tune.callbacks import trial_callbacks

    cfg, run_id = payload["cfg"], payload["run_id"]
    callbacks = [
        *tracking.lightning_callbacks(cfg, run_id),
        *trial_callbacks(
            payload["metric"],
            _optim(cfg),
            cfg.model.dropout,
            extra={"run_id": run_id or ""},
            timeout_s=cfg.tune.trial_timeout_s,
        ),
    ]
    train(cfg, resume=payload["resume"], callbacks=callbacks, run_id=run_id, test=False)


def fit_trial_on_worker(payload: dict[str, Any]) -> None:
    """One Ray Train worker of a multi-worker trial: join the DDP group and train (rank 0 owns the MLflow run)."""
    from tune.callbacks import trial_callbacks
    from tune.ray_train import ddp_overrides, world_rank

    base = payload["cfg"]
    cfg = base.with_overrides(ddp_overrides(base.tune.resources_per_trial.gpu > 0))
    run_id = payload["run_id"] if world_rank() == 0 else None
    if run_id:
        tracking.connect(cfg)  # a fresh process: point MLflow at the sweep's store before rank 0 logs
    callbacks = [
        *tracking.lightning_callbacks(cfg, run_id),
        *trial_callbacks(payload["metric"], _optim(cfg), cfg.model.dropout, checkpoint=False),
    ]
    train(cfg, callbacks=callbacks, run_id=run_id, test=False)


def _optim(cfg: Config) -> dict[str, Any]:
    return {k: getattr(cfg.optim, k) for k in ("lr", "weight_decay", "l1", "momentum")}


# ---------------------------------------------------------------- outputs


def _write_outputs(cfg: Config, plan: SweepPlan, outcome: Any, run_id: str | None, started: float) -> SweepResult:
    output = Path(cfg.output_dir).absolute()
    trials = [_trial_row(record) for record in outcome.trials]
    best = outcome.best
    best_config = None
    overrides: dict[str, Any] = {}
    if best is not None:
        overrides = {k: best.params[k] for k in plan.space if k in best.params}
        # its own output folder, so training it never overwrites the sweep's summary and files
        final = cfg.with_overrides({**_plain(overrides), "tune.enabled": False, "output_dir": str(output / "final")})
        best_config = str(write_text_atomic(output / "best_config.yaml", _best_yaml(final, best, plan)))
    results_csv = write_results_csv(output / "sweep_results.csv", trials, plan)
    plot = plot_trials(outcome.trials, plan, output / "sweep_trials.png", best.trial_id if best else None)
    seen = insight(trials, plan.space, plan.metric, plan.mode, output)
    return SweepResult(
        output_dir=str(output),
        best_config=best_config,
        best_overrides=overrides,
        best_metric=best.best if best else None,
        best_trial=best.trial_id if best else None,
        metric=plan.metric,
        mode=plan.mode,
        trials=trials,
        results_csv=str(results_csv),
        plot=str(plot) if plot else None,
        experiment_path=outcome.experiment_path,
        run_id=run_id,
        timing=_timing(outcome, started),
        importance=seen["importance"],
        insight_plots=seen["plots"],
    )


def _trial_row(record: Any) -> dict[str, Any]:
    return {
        "trial_id": record.trial_id,
        "status": record.status,
        "epochs": record.epochs,
        "best": record.best,
        "last": record.last,
        "time_s": round(record.time_s, 3),
        "run_id": record.state.get("run_id"),
        "params": {k: _plain_value(v) for k, v in record.params.items()},
        "error": record.error or record.state.get("input_error"),
    }


def _timing(outcome: Any, started: float) -> dict[str, float]:
    """Where the time went; overhead = wall / (sum of trial times / concurrency), 1.0 is perfect."""
    wall = time.perf_counter() - started
    trial_sum = sum(t.time_s for t in outcome.trials)
    ideal = trial_sum / max(1, outcome.concurrency)
    # once per sweep (trial processes start and import torch, Lightning), and per trial on a reused process
    marks = {"trial_startup_s": outcome.startup_s, "trial_handoff_s": outcome.handoff_s}
    return {
        "ray_start_s": round(outcome.ray_start_s, 3),
        "tune_wall_s": round(outcome.tune_wall_s, 3),
        "trial_time_sum_s": round(trial_sum, 3),
        "concurrency": outcome.concurrency,
        "overhead_ratio": round(outcome.tune_wall_s / ideal, 3) if ideal else 0.0,
        **{k: round(v, 3) for k, v in marks.items() if v is not None},
        "stage_wall_s": round(wall, 3),
    }


def _best_yaml(cfg: Config, best: Any, plan: SweepPlan) -> str:
    value = f"{best.best:.6g}" if best.best is not None else "n/a"
    header = f"# Best of a dlforge sweep: trial {best.trial_id}, {plan.metric} = {value} ({plan.mode}).\n"
    return header + "# Train it with: dlforge train <this file>\n" + dump_yaml(cfg)


def write_results_csv(path: Path, trials: list[dict[str, Any]], plan: SweepPlan) -> Path:
    """One row per trial: id, status, epochs, best/last metric, time, MLflow run, and each searched value."""
    keys = list(plan.space)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["trial_id", "status", "epochs", f"best {plan.metric}", f"last {plan.metric}", "time_s", "run_id"] + keys
    )
    for t in trials:
        writer.writerow(
            [t["trial_id"], t["status"], t["epochs"], t["best"], t["last"], t["time_s"], t["run_id"]]
            + [t["params"].get(k) for k in keys]
        )
    return write_text_atomic(path, out.getvalue())


def plot_trials(records: list[Any], plan: SweepPlan, path: Path, best_id: str | None) -> Path | None:
    """The metric per epoch of every trial; stopped trials dashed, the best one thick."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = [(r, [row.get(plan.metric) for row in r.history]) for r in records if r.history]
    if not curves:
        return None
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for record, values in curves:
        epochs = range(1, len(values) + 1)
        style = "--" if record.status == "stopped" else "-"
        width = 2.6 if record.trial_id == best_id else 1.0
        ax.plot(
            epochs,
            values,
            style,
            linewidth=width,
            marker="o",
            markersize=3,
            label=f"{record.trial_id} ({record.status})",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel(plan.metric)
    ax.set_title(f"sweep trials — {plan.metric} ({plan.mode}); dashed: stopped early")
    ax.grid(alpha=0.3)
    if len(curves) <= 16:
        ax.legend(fontsize="x-small", ncols=2)
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _log_to_parent(result: SweepResult, outcome: Any, run_id: str | None) -> None:
    if run_id is None:
        return
    for row in result.trials:
        tracking.set_tags(row["run_id"], {"dlforge.trial_status": row["status"], "dlforge.trial_epochs": row["epochs"]})
    metrics = {"sweep/trials": len(result.trials), "sweep/stopped_early": len(result.stopped_early)}
    metrics |= {f"sweep/{k}": v for k, v in result.timing.items()}
    metrics |= {f"sweep/importance/{k}": v for k, v in result.importance.items()}
    if result.best_metric is not None:
        metrics[f"best/{result.metric}"] = result.best_metric
    tracking.log_metrics(run_id, metrics)
    tracking.set_tags(
        run_id, {"dlforge.best_trial": result.best_trial or "", "dlforge.experiment_path": result.experiment_path}
    )
    for path in (result.results_csv, result.plot, result.best_config, *result.insight_plots.values()):
        if path:
            tracking.log_artifact(run_id, path, "sweep")


def format_table(result: SweepResult, limit: int = 20) -> str:
    """The trials, best first, as a plain-text table for the terminal."""
    keys = list(result.trials[0]["params"]) if result.trials else []
    sign = -1 if result.mode == "max" else 1
    rows = sorted(result.trials, key=lambda t: (t["best"] is None, sign * (t["best"] or 0)))
    header = ["trial", "status", "epochs", result.metric, *[k.split(".")[-1] for k in keys]]
    body = [
        [t["trial_id"], t["status"], str(t["epochs"]), _fmt(t["best"]), *[_fmt(t["params"].get(k)) for k in keys]]
        for t in rows[:limit]
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) for line in [header, *body]]
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more in {result.results_csv}")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _plain_value(v) for k, v in values.items()}


def _plain_value(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain_value(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars from the samplers
        return value.item()
    return value


# ---------------------------------------------------------------- resume state


def _save_state(experiment: Path, cfg: Config, run_id: str | None) -> None:
    path = experiment / SWEEP_STATE_FILE
    if not path.is_file():
        write_json_atomic(path, {"config": cfg.to_dict(), "run_id": run_id})


def load_sweep_config(resume: str) -> Config:
    """The config an interrupted sweep ran with (saved in its experiment folder)."""
    return build_config(_load_state(resume)["config"])


def _load_state(resume: str) -> dict[str, Any]:
    """The saved config and run of the sweep in ``resume``, once its files are known to be dlforge's own."""
    from tune.integrity import verify_experiment

    path = Path(resume).absolute() / SWEEP_STATE_FILE
    if not path.is_file():
        raise InputError(
            f"{resume} is not a dlforge sweep folder (no {SWEEP_STATE_FILE}); pass the experiment_path of a sweep"
        )
    for name in verify_experiment(resume):  # the folder may be on shared storage: its pickles are code
        print(f"dlforge: set aside {name}, saved by Ray after dlforge's last record; continuing from the save before")
    return json.loads(path.read_text())
