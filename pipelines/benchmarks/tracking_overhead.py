"""Tracking overhead: the same training job with MLflow on (a temporary sqlite store) and off.

Two jobs, each run with tracking on and off, interleaved:

- a toy job (5 epochs, 1 thread) in this process, running ``train_stage``'s own sequence — ``tracking.job_run``
  (opened in the background) → ``train`` with the tracking callbacks → ``train_stage.log_train_result`` — with
  timestamps between the phases, so run start, steady epochs and the end-of-job logging are each measured. A
  warm-up job (not counted) imports MLflow and creates the sqlite schema first: these are a warm process's costs;
- the job a user runs: ``dlforge train configs/digits_cnn.yaml`` (the main job's final fit: 25 epochs, its own
  thread count), a fresh process each time, so MLflow's imports and its store's first open are counted. The
  ≤ 1.10 on/off and ≤ 1.5 s fixed-cost targets are judged on this one.

The fixed cost per job (on − off) and the job length at which it stays within 5% come from the user's job.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from pipelines.benchmarks.common import (
    MAIN_CONFIG,
    BenchContext,
    BenchResult,
    Row,
    interleave,
    median,
    quiet,
    ratio_row,
    steady,
)
from pipelines.benchmarks.loop import EpochTimer, epoch_times
from pipelines.benchmarks.process import guarded, run_with_usage, verdict
from pipelines.config import Config, load_config

TITLE = "Tracking overhead: MLflow on vs off for the same job"
TARGET = 1.10  # the user's job, tracking on / off
FIXED_TARGET = 1.5  # seconds of tracking per job (fresh process)
EPOCH_TARGET = 1.05


def job(cfg: Config) -> dict[str, float]:
    """``train_stage``'s body (run opened in the background, curves from the callback) with timestamps between its
    phases; ``fit_s`` includes any wait for the run to open."""
    from pipelines import tracking
    from pipelines.train import load_data, train
    from pipelines.train_stage import HISTORY_PREFIXES, HISTORY_SKIP, log_train_result

    splits = load_data(cfg)  # the CLI's preflight loads the data before the run: not part of tracking's cost
    t0 = time.perf_counter()
    with quiet(), tracking.job_run(cfg, kind="train", background=True) as opening:
        t1 = time.perf_counter()
        timer = EpochTimer()
        callbacks = [*tracking.lightning_callbacks(cfg, opening), timer]
        result = train(cfg, callbacks=callbacks, splits=splits)
        run_id = opening.run_id() if opening is not None else None
        t2 = time.perf_counter()
        history = tracking.fit_history(callbacks, HISTORY_PREFIXES, HISTORY_SKIP)
        log_train_result(run_id, cfg, result, splits=splits, history=history)
        t3 = time.perf_counter()
    t4 = time.perf_counter()
    full, _ = epoch_times(timer.starts, timer.train_ends, timer.end)
    return {
        "total_s": t4 - t0,
        "start_s": t1 - t0,
        "fit_s": t2 - t1,
        "epoch_s": steady(full),
        "log_s": t3 - t2,
        "end_s": t4 - t3,
    }


def configs(ctx: BenchContext, epochs: int) -> tuple[Config, Config]:
    folder = ctx.folder("tracking")
    common = [
        "data.source=builtin:digits",
        "model.family=cnn",
        f"trainer.max_epochs={epochs}",
        "trainer.threads=1",
        f"output_dir={folder / 'out'}",
    ]
    on = load_config(None, [*common, f"tracking.uri=sqlite:///{folder / 'mlflow.db'}", "tracking.experiment=bench"])
    return on, load_config(None, [*common, "tracking.enabled=false"])


def cli_job(folder: Path, overrides: list[str]) -> dict[str, float]:
    """``dlforge train CONFIG overrides`` in a fresh process; its wall time as the user sees it."""
    command = [sys.executable, "-m", "pipelines", "train", str(MAIN_CONFIG), f"output_dir={folder / 'out'}"]
    usage, _ = run_with_usage([*command, *overrides])
    return {"total_s": usage["wall_s"], "cpu_s": usage["cpu_s"]}


def user_job_variants(ctx: BenchContext, epochs: int) -> dict[str, object]:
    folder = ctx.folder("tracking_cli")
    length = [f"trainer.max_epochs={epochs}"] if ctx.quick else []  # the full run keeps the config's 25 epochs
    on = [*length, f"tracking.uri=sqlite:///{folder / 'mlflow.db'}", "tracking.experiment=bench"]
    off = [*length, "tracking.enabled=false"]
    return {"on": lambda: cli_job(folder, on), "off": lambda: cli_job(folder, off)}


def run(ctx: BenchContext) -> BenchResult:
    toy_epochs, user_epochs = (2, 2) if ctx.quick else (5, 25)
    on, off = configs(ctx, toy_epochs)
    job(on)  # warm-up: schema migrations and imports
    toy = _series(interleave({"on": lambda: job(on), "off": lambda: job(off)}, ctx.repeats))
    variants = user_job_variants(ctx, user_epochs)
    if not ctx.quick:
        variants["on"]()  # warm-up: the store's schema, the OS file cache
    user = _series(interleave(variants, ctx.repeats))
    fixed = median([a - b for a, b in zip(user["on"]["total_s"], user["off"]["total_s"], strict=True)])
    fixed_cpu = median([a - b for a, b in zip(user["on"]["cpu_s"], user["off"]["cpu_s"], strict=True)])
    cpu_ratio = median([a / b for a, b in zip(user["on"]["cpu_s"], user["off"]["cpu_s"], strict=True)])
    warm_fixed = median([a - b for a, b in zip(toy["on"]["total_s"], toy["off"]["total_s"], strict=True)])
    user_name = f"dlforge train configs/digits_cnn.yaml ({user_epochs} epochs, fresh process)"
    on_off = guarded(
        ratio_row(f"user's job: {user_name}, on / off", user["on"]["total_s"], user["off"]["total_s"], TARGET)
    )
    judged = on_off.met is not None  # differences of noisy runs are judged no better than their ratio
    rows = [
        on_off,
        Row("user's job wall time with tracking off", median(user["off"]["total_s"]), "s"),
        Row(
            "fixed cost of tracking per job (fresh process: imports, store, logging), wall",
            fixed,
            "s",
            f"≤ {FIXED_TARGET:g}",
            fixed <= FIXED_TARGET if judged else None,
        ),
        Row(
            "the same in CPU seconds (user + system; steadier when other jobs share the cores)",
            fixed_cpu,
            "s",
            f"≤ {FIXED_TARGET:g}",
            fixed_cpu <= FIXED_TARGET if judged else None,
            note=f"CPU time on / off {cpu_ratio:.2f}×",
        ),
        Row(f"job length at which tracking stays within {TARGET - 1:.0%}", fixed / (TARGET - 1), "s"),
        ratio_row(
            f"toy job ({toy_epochs} epochs, warm process), on / off",
            toy["on"]["total_s"],
            toy["off"]["total_s"],
        ),
        guarded(ratio_row("steady epoch, on / off", toy["on"]["epoch_s"], toy["off"]["epoch_s"], EPOCH_TARGET)),
        Row(
            "run start, warm, as the job waits for it (the run opens on a thread during the fit)",
            median(toy["on"]["start_s"]),
            "s",
        ),
        Row(
            "end-of-job logging, warm (test metrics, curves, plots, checkpoint upload queued)",
            median([a - b for a, b in zip(toy["on"]["log_s"], toy["off"]["log_s"], strict=True)]),
            "s",
        ),
        Row(
            "toy job wall time with tracking off",
            median(toy["off"]["total_s"]),
            "s",
            note=f"fixed cost {warm_fixed:.2f} s",
        ),
    ]
    setup = {
        "user_job": f"{MAIN_CONFIG.name}, {user_epochs} epochs, a new process per run",
        "toy_job": f"digits CNN, defaults, {toy_epochs} epochs, 1 thread, in process",
        "store": "temporary sqlite",
    }
    return BenchResult("tracking", TITLE, rows, interpretation(rows, user_name), setup, {"toy": toy, "user": user})


def _series(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, list[float]]]:
    return {v: {k: [r[k] for r in runs[v]] for k in runs[v][0]} for v in runs}


def interpretation(rows: list[Row], user_name: str) -> str:
    user, user_wall, fixed, fixed_cpu, even, toy, epoch, start, end, toy_wall = rows
    return (
        f"- The ≤ {TARGET:g} target is judged on the job a user runs, {user_name}: tracking costs "
        f"{user.value:.2f}× the same job without ({verdict(user)}). The fixed cost is "
        f"{fixed.value:.1f} s per job in wall time and {fixed_cpu.value:.1f} s in CPU time (target ≤ {FIXED_TARGET:g} "
        f"s: {verdict(fixed)} / {verdict(fixed_cpu)}; importing MLflow, opening "
        f"the store, end-of-job logging), so any job longer than about {even.value:.0f} s stays "
        f"within {TARGET - 1:.0%}; this one takes {user_wall.value:.0f} s.\n"
        f"- Per epoch tracking costs {epoch.value:.2f}× (≤ {EPOCH_TARGET:g}: {verdict(epoch)}): "
        "metrics go to the store as one batch per epoch from a background thread, so training never waits on "
        "sqlite.\n"
        "- What was cut from the fixed cost: the MLflow model (a pt2 export with its signature, seconds per job) is "
        "logged only when the job registers it (`tracking.register=true`, as `dlforge run` does); artifact uploads "
        "(the best checkpoint, review plots) go to a background thread that the run waits for before it ends "
        "FINISHED, so none is lost; mlflow, onnx and ray are imported only when used (`python -X importtime`); "
        "the run opens on a thread while the fit starts, and only the first checkpoint waits for it (every "
        "checkpoint names its run, so a resume continues it); a server that does not answer is still refused "
        "before the fit; the learning curves come from the callback's own history and the "
        "test-split plots reuse the fit's data; the plots' titles are placed rather than measured against every "
        "tick label (the same pixels, a third less drawing); `dlforge` ends its process once every exit handler has "
        "run, instead of tearing down the interpreter object by object (1.5–3 s of CPU after the job was done, about "
        "1 s more with MLflow's modules loaded).\n"
        "- What is left (CPU seconds, measured per phase): importing MLflow (0.65–0.8 s, a third of it `mlflow.genai`, "
        "which `import mlflow` always loads and the SQLAlchemy store's tables import too, so it cannot be deferred) "
        "and its SQLAlchemy store module (0.5–0.8 s), opening the store and the run (about 0.3 s), all on a thread "
        "that holds the GIL, so it overlaps the fit only partly (started earlier, while torch and Lightning load, it "
        "overlapped even less and cost more CPU); the review plots after the fit, on the main thread (about 0.65 s "
        "of matplotlib: the learning curves, one panel per metric, 0.4 s; the confusion matrix 0.25 s). Moving the "
        "imports into a separate tracking process would overlap them with the fit on the other core.\n"
        f"- On the {toy_wall.value:.0f}-second toy job (warm process) the same fixed costs — {start.value:.2f} s to "
        f"open the run, {end.value:.2f} s of end-of-job logging (test metrics, learning curves, confusion matrix) "
        f"— make it {toy.value:.2f}×: a job that short is dominated by them, which is why the target is judged on a "
        "real job."
    )
