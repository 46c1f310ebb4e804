"""The sweep driver: a Ray Tune ``Tuner`` over a trial function it is handed (it never imports pipelines).

``run_sweep(trial_fn, space, job)`` starts or joins Ray, runs the trials with the configured search algorithm
and scheduler, and returns one :class:`TrialRecord` per trial. The trial function receives the trial's sampled
values (dotted config key → value) and a :class:`TrialContext` with its stable folder and the checkpoint to resume
from, whichever way the trial (re)started: first run, retry after a crash, PBT exploit, HyperBand resume or
``Tuner.restore`` after the driver died.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FunctionType
from typing import Any

import ray
from ray import tune as ray_tune
from ray.tune import Callback, Stopper, schedulers
from ray.tune.search.basic_variant import BasicVariantGenerator

from dl_lightning.errors import InputError, clip
from tune import prestart
from tune.callbacks import CHECKPOINT_FILE, TrialTable
from tune.integrity import guarded_files, record_digests, verify_experiment
from tune.prestart import PRESTART_DIR_ENV
from tune.settings import SweepJob, TuneConfig
from tune.space import Dimension, pbt_mutations, to_ray

TRIAL_DRIVER_CPU = 0.01  # the trial process of a multi-worker trial only waits on its workers; Ray refuses 0
TRIAL_STATE_FILE = "trial_state.json"  # in each trial's folder: what TrialContext.save_state kept
STOP_GRACE_S = 30  # how long a stopped trial may take to close its MLflow run and Lightning state
LOOPBACK = "127.0.0.1"
IDLE_WORKER_KEEP_MS = 3_600_000  # a sweep's own Ray: its prestarted workers wait for trials
PRESTART_WAIT_S = 10.0  # for a local Ray's prestarted workers to register (about 1 s on an idle machine)


@dataclass(frozen=True)
class TrialContext:
    """What a trial function knows about itself."""

    trial_id: str
    trial_dir: str  # absolute; the same folder on every (re)start of this trial
    checkpoint: str | None  # a Lightning checkpoint to resume from, or None for a fresh start
    workers: int = 1
    node_id: str = ""  # the Ray node this start of the trial runs on (a cluster spreads trials over nodes)

    def load_state(self) -> dict[str, Any]:
        """Values saved by an earlier start of this trial (e.g. its MLflow run id); empty on the first start."""
        path = Path(self.trial_dir) / TRIAL_STATE_FILE
        return json.loads(path.read_text()) if path.is_file() else {}

    def save_state(self, **values: Any) -> None:
        """Merge ``values`` into the trial's state file (atomic: a killed trial never leaves half a file)."""
        path = Path(self.trial_dir) / TRIAL_STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**self.load_state(), **values}))
        os.replace(tmp, path)


TrialFn = Callable[[dict[str, Any], TrialContext], None]


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the sweep ended: its sampled values, how it ended, and its metric history."""

    trial_id: str
    params: dict[str, Any]
    status: str  # "finished" | "stopped" (by the scheduler, time budget or timeout) | "error" | "not run"
    epochs: int
    last: float | None  # the metric at the trial's last report
    best: float | None  # the best value of the metric over the trial's reports
    time_s: float  # training time reported by Tune (all starts of the trial together)
    history: list[dict[str, Any]] = field(default_factory=list)  # one row of metrics per reported epoch
    last_result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    state: dict[str, Any] = field(default_factory=dict)  # what the trial saved with TrialContext.save_state


@dataclass(frozen=True)
class SweepOutcome:
    trials: list[TrialRecord]
    best: TrialRecord | None
    experiment_path: str
    ray_start_s: float
    tune_wall_s: float
    concurrency: int
    startup_s: float | None = None  # Tuner start to the first trial running: trial processes start, import torch
    handoff_s: float | None = None  # median gap between a trial's end and the next trial's start on the freed slot


def run_sweep(
    trial_fn: TrialFn,
    space: Mapping[str, Dimension],
    job: SweepJob,
    *,
    resume: str | None = None,
) -> SweepOutcome:
    """Run (or, with ``resume`` = an experiment folder, continue) a sweep and collect its trials.

    Ray is joined when already initialized in this process, connected to when ``job.tune.ray_address`` or
    ``RAY_ADDRESS`` is set, and otherwise started locally with this machine's CPUs and no dashboard; only a Ray
    started here is shut down here.
    """
    if resume is not None:
        verify_experiment(resume)  # before Ray unpickles anything in it
    if resume is not None and not is_experiment(resume):
        raise InputError(f"{resume} is not a sweep folder Ray can restore; pass the experiment_path of a sweep")
    _quiet_tune()
    started_here = not ray.is_initialized() and not ray_address(job.tune.ray_address)
    with ray_session(job.tune.ray_address, preload=trial_modules(trial_fn)) as ray_start_s:
        concurrency = max_concurrency(job.tune)
        clock = TrialClock()  # its clock starts now: building the Tuner counts as Tune's time
        tuner = _restored_tuner(trial_fn, job, resume) if resume else _new_tuner(trial_fn, space, job, clock)
        with trials_in_prestarted_workers() if started_here else contextlib.nullcontext():
            grid = tuner.fit()
        tune_wall_s = time.monotonic() - clock.fit_started
    records = [_record(result, job) for result in grid]
    records.sort(key=lambda r: r.trial_id)
    return SweepOutcome(
        trials=records,
        best=best_trial(records, job.mode),
        experiment_path=str(grid.experiment_path),
        ray_start_s=ray_start_s,
        tune_wall_s=tune_wall_s,
        concurrency=concurrency,
        startup_s=clock.startup_s(),
        handoff_s=clock.handoff_s(concurrency),
    )


def is_experiment(path: str) -> bool:
    return Path(path).is_dir() and ray_tune.Tuner.can_restore(os.path.abspath(path))


def best_trial(records: list[TrialRecord], mode: str) -> TrialRecord | None:
    """The trial with the best metric at any epoch (the epoch a checkpoint monitor would keep)."""
    scored = [r for r in records if r.best is not None and not math.isnan(r.best)]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda r: r.best)


# ---------------------------------------------------------------- Ray session and resources


@contextlib.contextmanager
def ray_session(address: str | None, *, preload: tuple[str, ...] = ()) -> Iterator[float]:
    """Yield the seconds it took to start or join Ray; shut down only a Ray that this call started.

    ``preload``: modules a Ray started here imports in its worker processes as they start (see start_local_ray).
    """
    if ray.is_initialized():
        yield 0.0
        return
    started = time.perf_counter()
    address = ray_address(address)
    with keeping_sigterm_handler():
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            start_local_ray(preload)
    try:
        yield time.perf_counter() - started
    finally:
        ray.shutdown()  # a connected driver only disconnects; the cluster keeps running


@contextlib.contextmanager
def keeping_sigterm_handler() -> Iterator[None]:
    """Give SIGTERM back to the Python handler the caller had installed before ``ray.init``, if any.

    ``ray.init`` installs its own: it kills the local Ray processes from inside the handler and exits, and the
    driver then aborts (exit 134 with a C++ stack dump) instead of unwinding. With the caller's handler back, a
    SIGTERM unwinds the driver normally: ``finally`` blocks run and ``ray.shutdown`` stops Ray. Without one
    (the default action), Ray's stays: it at least stops the Ray it started.
    """
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    before = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if callable(before):
            signal.signal(signal.SIGTERM, before)


def ray_address(configured: str | None) -> str | None:
    """The Ray cluster a sweep joins: ``tune.ray_address``, else ``RAY_ADDRESS``; None for a Ray of its own."""
    return configured or os.environ.get("RAY_ADDRESS") or None


def trial_modules(trial_fn: TrialFn) -> tuple[str, ...]:
    """The modules a trial process imports before it can run ``trial_fn``: its own and this one (the trainable)."""
    owner = trial_fn if isinstance(trial_fn, type | FunctionType) else type(trial_fn)
    return tuple(dict.fromkeys([owner.__module__, __name__]))


def start_local_ray(preload: tuple[str, ...] = ()) -> None:
    """A Ray on this machine alone: all its CPUs, no dashboard, trial output kept out of the driver's terminal.

    Its processes listen on 127.0.0.1 only: a local sweep has no other node to talk to, and Ray's ports on every
    interface would let anyone on the network submit work to it.

    The raylet starts one worker process per CPU as soon as it is up, while ``ray.init`` is still finishing, and
    each imports ``preload`` (for a trial: torch, Lightning and the trial's code) once it has registered. Trials
    then start in these processes (see trials_in_prestarted_workers) instead of starting Python and importing
    torch after the Tuner has started: on 2 cores that was 7.5 s of every sweep. Ray gives a trial asked for
    before they have registered a process of its own, so this waits (at most PRESTART_WAIT_S) until each has
    said it registered (``tune.prestart``); their imports go on meanwhile.
    """
    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="dlforge-ray-") as ready:
        with _loopback_node(), _environment(PRESTART_DIR_ENV, ready):  # the raylet, and so its workers, inherit it
            ray.init(
                num_cpus=cpus,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
                _node_ip_address=LOOPBACK,
                _system_config={
                    "enable_worker_prestart": True,  # at the raylet's start, not once the driver has connected
                    "prestart_worker_first_driver": False,  # which would start a second set
                    # Ray stops a worker idle for a second: it stopped the prestarted ones about a second after
                    # the driver connected, often before the Tuner asked for trials, and started new ones for them
                    "idle_worker_killing_time_threshold_ms": IDLE_WORKER_KEEP_MS,
                    "preload_python_modules": [prestart.__name__, *preload],
                },
            )
        _wait_for_files(Path(ready), cpus, PRESTART_WAIT_S)


def _wait_for_files(folder: Path, count: int, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while len(list(folder.iterdir())) < count and time.monotonic() < deadline:
        time.sleep(0.05)


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


@contextlib.contextmanager
def trials_in_prestarted_workers() -> Iterator[None]:
    """While a sweep runs on a Ray started here, let its trials take the worker processes Ray prestarted.

    Ray hands a prestarted process (started with no runtime environment) only to work that asks for none, and
    Tune gives every trial actor one: ``PL_DISABLE_FORK=1`` (ray#28197), a switch Lightning stopped reading in 1.8.
    Each trial then waited for a process of its own. Without that variable the trials' environment is empty and
    they take the prestarted, preloaded processes; the workers of a Ray started here inherit the driver's
    environment anyway. Variables Tune forwards from the driver (Ray Train's settings, cloud credentials) still
    give the trials an environment, and processes of their own, when they are set.
    """
    from ray.tune.execution import class_cache  # Ray's own module: Tune reads this dict as each trial starts

    defaults = getattr(class_cache, "DEFAULT_ENV_VARS", None)
    if not isinstance(defaults, dict):  # another Ray version: trials start as Tune starts them
        yield
        return
    saved = dict(defaults)
    defaults.clear()
    try:
        yield
    finally:
        defaults.update(saved)


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """Let ``_node_ip_address=127.0.0.1`` stand: on Linux Ray swaps a loopback address for the machine's own IP,
    and its gcs_server, raylet and workers then listen on every interface. With the swap off (Ray's own switch, as
    on macOS) they listen on 127.0.0.1 only."""
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def max_concurrency(settings: TuneConfig) -> int:
    """Trials that fit at once in the cluster's resources, capped by ``max_concurrent``.

    Tune does not see the resources of Ray Train workers (Train asks for them itself), so for multi-worker trials
    the cap is what keeps Tune from starting trials whose workers could never be placed — which on a small machine
    waits forever (the worker group times out and retries without end).
    """
    total = ray.cluster_resources()
    r = settings.resources_per_trial
    driver_cpu = TRIAL_DRIVER_CPU if settings.workers_per_trial > 1 else 0.0
    fits = [math.floor(total.get("CPU", 0) / (r.cpu + driver_cpu) + 1e-9)]
    if r.gpu > 0:
        fits.append(math.floor(total.get("GPU", 0) / r.gpu + 1e-9))
    fit = min(fits)
    if fit < 1:
        have = f"{total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs"
        raise InputError(
            f"one trial needs {r.cpu:g} CPUs and {r.gpu:g} GPUs but Ray has {have}; lower tune.resources_per_trial"
        )
    return min(fit, settings.max_concurrent) if settings.max_concurrent else fit


def trial_resources(settings: TuneConfig) -> dict[str, float]:
    """What Tune reserves for the trial process itself (multi-worker trials: a sliver, workers ask for theirs)."""
    if settings.workers_per_trial > 1:
        return {"cpu": TRIAL_DRIVER_CPU}
    return {"cpu": settings.resources_per_trial.cpu, "gpu": settings.resources_per_trial.gpu}


# ---------------------------------------------------------------- Tuner


def _quiet_tune() -> None:
    """Our ProgressLines replace Ray's boxes and warnings; the experiment state is saved often."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Snapshot the experiment state every second, not every 10+: a killed driver then loses at most the last
    # second of trial bookkeeping, and --resume finds every trial that had started (ray#58179, #28082).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # Set before Ray starts, so the trial processes of a local Ray inherit it: on actor reuse, Tune waits this long
    # for a stopped trial's thread (see _graceful) instead of 2 s, after which it starts a fresh process instead.
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", str(STOP_GRACE_S))
    # "Started a local Ray instance", "Wrote the latest version of all result files…": info, not for the terminal
    for name in ("ray", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Ray's notice that token auth is on, as by default: nothing to act on. Its other warnings (auth off) still show.
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_not_auth_notice)


def _not_auth_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Token authentication is enabled")


def _new_tuner(trial_fn: TrialFn, space: Mapping[str, Dimension], job: SweepJob, clock: Callback) -> Any:
    t = job.tune
    concurrency = max_concurrency(t)
    tune_config = ray_tune.TuneConfig(
        metric=job.metric,
        mode=job.mode,
        search_alg=_search_alg(job, concurrency),
        scheduler=_scheduler(space, job),
        num_samples=1 if t.search == "grid" else t.num_samples,
        # Ray applies this cap to a Searcher only; the basic generator carries its own (see _search_alg)
        max_concurrent_trials=concurrency if t.search == "optuna" else None,
        time_budget_s=t.time_budget_s or None,
        # A fresh process per trial pays Ray's actor start and the trial's imports (torch, Lightning: 5-12 s on 2
        # cores); a reused one only a reset (~20 ms). On a cluster, though, a reused actor takes the next trial onto
        # the node that came up first while the trial's own placement on another node is dropped.
        reuse_actors=t.workers_per_trial == 1 and not ray_address(t.ray_address),
        trial_name_creator=_trial_name,
        trial_dirname_creator=_trial_name,
    )
    return ray_tune.Tuner(
        _trainable(trial_fn, job),
        param_space=to_ray(space, t.search),
        tune_config=tune_config,
        run_config=_run_config(job, clock),
    )


def _restored_tuner(trial_fn: TrialFn, job: SweepJob, path: str) -> Any:
    # Unfinished trials continue from their last checkpoint; errored ones get another full set of retries.
    return ray_tune.Tuner.restore(
        os.path.abspath(path), _trainable(trial_fn, job), resume_unfinished=True, restart_errored=True
    )


def _run_config(job: SweepJob, clock: Callback) -> Any:
    stop = TrialTimeout(job.tune.trial_timeout_s) if job.tune.trial_timeout_s else None
    progress = [TrialTable(job.metric, job.mode, job.max_epochs)] if job.verbose else []
    return ray_tune.RunConfig(
        name=job.name,
        storage_path=job.storage_path,
        failure_config=ray_tune.FailureConfig(max_failures=job.tune.max_failures),
        checkpoint_config=ray_tune.CheckpointConfig(num_to_keep=2),  # PBT clones the donor's latest
        stop=stop,
        callbacks=[clock, *progress, DigestRecorder(str(Path(job.storage_path) / job.name))],
        verbose=0,
    )


def _trial_name(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def _search_alg(job: SweepJob, concurrency: int) -> Any:
    if job.tune.search == "optuna":
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(sampler=TPESampler(seed=job.seed), points_to_evaluate=list(job.points) or None)
    return BasicVariantGenerator(
        max_concurrent=concurrency, random_state=job.seed, points_to_evaluate=list(job.points) or None
    )


def _scheduler(space: Mapping[str, Dimension], job: SweepJob) -> Any:
    t, common = job.tune, {"time_attr": "training_iteration"}
    # max_t is the whole epoch budget: a trial that passes every rung trains as long as the final fit would
    max_t, factor = job.max_epochs, t.reduction_factor
    grace = min(t.grace_period, max_t)
    return {
        "fifo": lambda: schedulers.FIFOScheduler(),
        "asha": lambda: schedulers.ASHAScheduler(**common, max_t=max_t, grace_period=grace, reduction_factor=factor),
        "hyperband": lambda: schedulers.HyperBandScheduler(**common, max_t=max_t, reduction_factor=factor),
        "median": lambda: schedulers.MedianStoppingRule(**common, grace_period=grace, min_samples_required=2),
        "pbt": lambda: schedulers.PopulationBasedTraining(
            **common,
            perturbation_interval=t.perturbation_interval,
            hyperparam_mutations=pbt_mutations(space),
            # synchronous: every trial reaches the interval before the bottom ones clone the top ones, so
            # exploits happen on a small sweep too (async PBT skips them while a trial's actor is still starting)
            synch=True,
        ),
    }[t.scheduler]()


def _trainable(trial_fn: TrialFn, job: SweepJob) -> Any:
    trials_dir, workers = job.trials_dir, job.tune.workers_per_trial

    def trainable(config: dict[str, Any]) -> None:
        trial_id = ray_tune.get_context().get_trial_id()
        checkpoint = ray_tune.get_checkpoint()
        with checkpoint.as_directory() if checkpoint else contextlib.nullcontext(None) as folder:
            path = str(Path(folder) / CHECKPOINT_FILE) if folder else None
            node = ray.get_runtime_context().get_node_id()
            trial_fn(dict(config), TrialContext(trial_id, str(Path(trials_dir) / trial_id), path, workers, node))

    return ray_tune.with_resources(_graceful(trainable), trial_resources(job.tune))


def _graceful(trainable: Callable[[dict[str, Any]], None]) -> type:
    """The function trainable, but let a stopped trial finish its ``finally`` blocks before its actor goes.

    Ray stops a function trial by raising SystemExit in ``report()`` and, when the actor is torn down, does not
    wait for the training thread (``finish(timeout=0)``); the trial's MLflow run then never got ended and stayed
    RUNNING. Waiting up to STOP_GRACE_S lets Lightning tear down and the run end FINISHED.
    """
    from ray.train._internal.session import get_session, shutdown_session
    from ray.tune.trainable import wrap_function

    class GracefulTrainable(wrap_function(trainable)):
        def cleanup(self) -> None:
            session = get_session()
            try:
                session.finish(timeout=STOP_GRACE_S)
            finally:
                session._report_thread_runner_error()
                shutdown_session()

    GracefulTrainable.__name__ = "trial"
    return GracefulTrainable


def _record(result: Any, job: SweepJob) -> TrialRecord:
    metrics = dict(result.metrics or {})
    history = _history(result)
    values = [row[job.metric] for row in history if _is_number(row.get(job.metric))]
    epochs = int(metrics.get("training_iteration", 0) or 0)
    if result.error is not None:
        status = "error"
    elif not metrics:
        status = "not run"
    else:
        status = "finished" if epochs >= job.max_epochs else "stopped"
    pick = max if job.mode == "max" else min
    trial_id = str(metrics.get("trial_id") or Path(result.path).name.removeprefix("trial_"))
    state = TrialContext(trial_id, str(Path(job.trials_dir) / trial_id), None).load_state()
    if status == "not run" and state.get("timed_out"):
        status = "stopped"  # hung before its first report; the trial function's watchdog ended it
    return TrialRecord(
        trial_id=trial_id,
        params=dict(result.config or {}),
        status=status,
        epochs=epochs,
        last=values[-1] if values else None,
        best=pick(values) if values else None,
        time_s=float(metrics.get("time_total_s", 0.0) or 0.0),
        history=history,
        last_result={k: v for k, v in metrics.items() if k != "config"},
        error=_first_line(result.error) if result.error is not None else None,
        state=state,
    )


def _history(result: Any) -> list[dict[str, Any]]:
    frame = result.metrics_dataframe
    if frame is None or frame.empty:
        return []
    keep = [c for c in frame.columns if c.startswith(("train/", "val/")) or c in ("epoch", "training_iteration")]
    return frame[keep].to_dict("records")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    cause = [line for line in text if line.strip() and not line.startswith((" ", "Traceback"))]
    return clip(cause[-1] if cause else type(error).__name__, 300)


# ---------------------------------------------------------------- Tune callbacks (driver side)


class TrialTimeout(Stopper):
    """Stop a trial whose training time passed ``limit_s`` (checked at each of its reports)."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return result.get("time_total_s", 0.0) > self.limit_s

    def stop_all(self) -> bool:
        return False


class DigestRecorder(Callback):
    """Whenever the files a restore would unpickle change, sign their digests (``tune.integrity``).

    Ray saves its state into a staging folder and copies it into the experiment folder in the background, so the
    folder is checked at every step of the driver's loop (a ``stat`` per file; hashing only after a change) and at
    every state save; the staging folder too (its path is the trials' ``storage``), so a save that a killed driver
    copied after the last check is already recorded. It holds only the folder's path: it is pickled into
    ``tuner.pkl``, the key never is.
    """

    def __init__(self, experiment_path: str) -> None:
        self.experiment_path = experiment_path
        self._seen: tuple = ()
        self._staging: str | None = None

    def refresh(self) -> None:
        folder, staging = Path(self.experiment_path), getattr(self, "_staging", None)
        roots = [folder, *([Path(staging)] if staging else [])]
        try:
            files = [p for root in roots if root.is_dir() for p in guarded_files(root)]
            seen = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
            if seen != getattr(self, "_seen", ()):
                record_digests(folder, staging)
                self._seen = seen
        except OSError:  # Ray renamed a temp file between listing and reading: the next step records it
            self._seen = ()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if getattr(self, "_staging", None) is None:
            self._staging = next((t.storage.experiment_driver_staging_path for t in trials if t.storage), None)
        self.refresh()

    def get_state(self) -> dict | None:
        self.refresh()  # called as Ray saves the experiment state
        return None  # nothing of its own to restore

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.refresh()

    def __getstate__(self) -> dict[str, Any]:
        return {"experiment_path": self.experiment_path, "_seen": (), "_staging": None}


class TrialClock(Callback):
    """When each trial first ran and last ended, to tell the sweep's start-up and hand-offs from training time."""

    def __init__(self) -> None:
        self.fit_started = time.monotonic()
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.started.setdefault(trial.trial_id, time.monotonic())

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended[trial.trial_id] = time.monotonic()

    on_trial_error = on_trial_complete

    def startup_s(self) -> float | None:
        return min(self.started.values()) - self.fit_started if self.started else None

    def handoff_s(self, concurrency: int) -> float | None:
        """Median wait from a trial's end to the next start; the first ``concurrency`` starts wait on start-up."""
        gaps = []
        for start in sorted(self.started.values())[concurrency:]:
            before = [end for end in self.ended.values() if end <= start]
            if before:
                gaps.append(start - max(before))
        return statistics.median(gaps) if gaps else None
