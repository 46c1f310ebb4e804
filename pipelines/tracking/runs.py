"""One MLflow run per job, even under DDP, retries and resumes: its lifecycle, status, owner and tags.

- ``job_run(cfg, kind=..., name=None, parent_run_id=None, run_id=None, tags=None)`` — context manager. On global
  rank 0 it creates a run (or, with ``run_id``, continues that run), logs the flattened config as params (secret
  looking names masked, credentials in URIs redacted) and as a YAML artifact, tags it (kind, family, dataset, git
  commit + dirty flag, host, command line, dlforge version, plus ``tags``), yields its id, and ends it FINISHED,
  FAILED on an exception, KILLED on Ctrl-C / SystemExit / SIGTERM. Other ranks get ``None`` and never touch MLflow.
  The run is tagged with its process (host, PID, start time); each job first closes as KILLED the RUNNING runs of
  its experiment whose process is gone from this host (``close_orphans``: kill -9, the OOM killer, a lost trial).
- ``lightning_callbacks(cfg, run_id)`` — give these to ``train()`` on every rank (``callback.TrackingCallback``).
- ``run_id_from_checkpoint(path)`` — the run a checkpoint belongs to; pass it as ``job_run(run_id=...)``.

Rank: ``RANK`` (torchrun), else ``SLURM_PROCID`` (multi-task SLURM), else ``NODE_RANK × devices + LOCAL_RANK``
(Lightning's DDP launcher sets ``LOCAL_RANK`` in the processes it re-launches).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from dl_lightning.errors import clip
from pipelines import processes
from pipelines.config import PROJECT_ROOT, Config, unflatten
from pipelines.tracking.store import (
    _MAX_TAG_VALUE,
    _UPLOADS,
    _log_batch,
    _mlflow,
    _param_text,
    _reachable_uri,
    _safe,
    connect,
    mask_params,
    redact_argv,
    redact_uri,
    wait_for_uploads,
)
from pipelines.version import dlforge_version

if TYPE_CHECKING:
    from lightning.pytorch.callbacks import Callback
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "dlforge_tracking"  # {"run_id": str, "pending": [[step, {name: value}], ...]}


def global_rank(devices_per_node: int) -> int:
    """This process's global rank, known before Lightning starts (see the module docstring)."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"])
    node = int(env.get("NODE_RANK", env.get("GROUP_RANK", "0")))
    return node * devices_per_node + int(env.get("LOCAL_RANK", "0"))


def run_id_from_checkpoint(path: str | Path | None) -> str | None:
    """The tracking run recorded in a Lightning checkpoint by the tracking callback, if any."""
    if path is None:
        return None
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return (checkpoint.get(CHECKPOINT_KEY) or {}).get("run_id")


# ---------------------------------------------------------------- one run per job


@contextlib.contextmanager
def job_run(
    cfg: Config,
    *,
    kind: str,
    name: str | None = None,
    parent_run_id: str | None = None,
    run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
    background: bool = False,
) -> Iterator[Any]:
    """One MLflow run for one job: created on global rank 0 only; yields its id (``None`` elsewhere or when off).

    Args:
        kind: what the job is (``train``, ``trial``, ``sweep``, ``pipeline``, ``distill``, ``export``…); a tag.
        name: a readable run name; default: family, dataset and key hyperparameters.
        parent_run_id: nest this run under a pipeline or sweep run.
        run_id: continue this run (a resumed job): params already logged are kept, changed ones become tags.
        tags: extra tags, e.g. ``{"ray.trial_id": ...}``.
        background: yield a ``PendingRun`` at once and open the run on a thread (importing mlflow and opening the
            store take seconds, which then overlap the job's own work). A server that does not answer is still
            refused before this yields; any other failure to open is raised by ``PendingRun.run_id()`` and by
            leaving the block. Only a single-process job without system metrics opens in the background (DDP
            ranks need the id at setup; the sampler belongs to the thread that ends the run); others get a
            ``PendingRun`` that is already open.
    """
    if not cfg.tracking.enabled or global_rank(cfg.trainer.devices) != 0:
        yield None
        return
    args = (cfg, kind, name, parent_run_id, run_id, tags)
    if background:
        with _background_run(*args) as pending:
            yield pending
        return
    client, run_id = _open_run(*args, activate=True)
    with _ending(client, run_id):
        yield run_id


def _open_run(
    cfg: Config,
    kind: str,
    name: str | None,
    parent_run_id: str | None,
    run_id: str | None,
    tags: Mapping[str, Any] | None,
    *,
    activate: bool,
    uri: str | None = None,
) -> tuple[MlflowClient, str]:
    """Connect, close orphans, create or continue the run and log its config; a config that fails to log ends the
    run FAILED. ``activate``: also make it this thread's active run (``mlflow.start_run``)."""
    experiment_id = connect(cfg, uri)
    client = _mlflow().MlflowClient()
    close_orphans(client, experiment_id)  # before continuing a run: a resumed job closes the orphan it finds
    run_id, resumed = _create_or_continue(client, cfg, experiment_id, kind, name, parent_run_id, run_id, tags)
    if activate:
        _activate(cfg, run_id)
    try:
        _log_config(client, cfg, run_id, resumed)
    except BaseException as exc:
        _safe(client.set_tag, run_id, "dlforge.error", clip(f"{type(exc).__name__}: {exc}", 2000))
        _end_run(client, run_id, _status_for(exc))
        raise
    return client, run_id


@contextlib.contextmanager
def _ending(client: MlflowClient, run_id: str) -> Iterator[None]:
    """End the run when the block ends: FINISHED with every upload in it, else FAILED or KILLED (``_status_for``)."""
    status = "FINISHED"
    try:
        yield
        wait_for_uploads()  # the run ends FINISHED only with every artifact in it
    except BaseException as exc:
        status = _status_for(exc)
        _safe(client.set_tag, run_id, "dlforge.error", clip(f"{type(exc).__name__}: {exc}", 2000))
        raise
    finally:
        _UPLOADS.wait(raise_errors=False)  # a failed job still keeps what it uploaded
        _end_run(client, run_id, status)


class PendingRun:
    """A job's run while it is being opened on a background thread (``job_run(background=True)``).

    Guarantees: ``run_id()`` returns the id once the run exists with its params, tags and config, or raises what
    opening raised (``TrackingError`` for a store that cannot be used); ``error()`` never waits.
    """

    def __init__(self, open_run: Any = None, *, opened: tuple[MlflowClient, str] | None = None) -> None:
        from concurrent.futures import Future

        self._future: Future = Future()
        if opened is not None:
            self._future.set_result(opened)
        else:
            threading.Thread(target=self._open, args=(open_run,), name="dlforge-mlflow-open", daemon=True).start()

    def _open(self, open_run: Any) -> None:
        try:
            self._future.set_result(open_run())
        except BaseException as exc:  # handed to whoever waits for the id
            self._future.set_exception(exc)

    def run_id(self, timeout: float | None = None) -> str:
        """The run's id, waiting until it is open; raises what opening raised."""
        return self._future.result(timeout)[1]

    def client(self) -> MlflowClient:
        """The client that opened the run (waits as ``run_id``)."""
        return self._future.result()[0]

    def error(self) -> BaseException | None:
        """What opening raised, once it has failed; never waits."""
        return self._future.exception() if self._future.done() else None


@contextlib.contextmanager
def _background_run(
    cfg: Config,
    kind: str,
    name: str | None,
    parent_run_id: str | None,
    run_id: str | None,
    tags: Mapping[str, Any] | None,
) -> Iterator[PendingRun]:
    args = (cfg, kind, name, parent_run_id, run_id, tags)
    if cfg.trainer.devices * cfg.trainer.num_nodes > 1 or _system_metrics(cfg):
        pending = PendingRun(opened=_open_run(*args, activate=True))
    else:
        uri = _reachable_uri(cfg)  # an HTTP server that does not answer: refused now, before the job starts
        pending = PendingRun(functools.partial(_open_run, *args, activate=False, uri=uri))
    try:
        yield pending
    except BaseException as exc:
        if pending.error() is exc:  # the job stopped because the run could not be opened: no run to end
            raise
        with _ending(*_opened_or_raise(pending, exc)):
            raise
    else:
        with _ending(pending.client(), pending.run_id()):
            pass


def _opened_or_raise(pending: PendingRun, exc: BaseException) -> tuple[MlflowClient, str]:
    """The open run, to be ended with the job's own exception; when opening failed too, the job's exception."""
    try:
        return pending.client(), pending.run_id()
    except BaseException as failed:
        log.warning("the MLflow run could not be opened either: %s", failed)
        raise exc from None


def _create_or_continue(
    client: MlflowClient,
    cfg: Config,
    experiment_id: str,
    kind: str,
    name: str | None,
    parent_run_id: str | None,
    run_id: str | None,
    tags: Mapping[str, Any] | None,
) -> tuple[str, bool]:
    """The run's id, and whether it is an existing run being continued."""
    mlflow = _mlflow()
    job_tags = {**job_tags_for(cfg, kind), **{k: str(v) for k, v in (tags or {}).items()}}
    if run_id is not None and not _run_exists(client, run_id):
        log.warning("run %s is not in %s; starting a new run", run_id, redact_uri(mlflow.get_tracking_uri()))
        job_tags["dlforge.resumed_from_run"] = run_id
        run_id = None
    resumed = run_id is not None
    if run_id is None:
        if parent_run_id:
            job_tags["mlflow.parentRunId"] = parent_run_id
        run_name = name or default_run_name(cfg, kind)
        created = client.create_run(experiment_id, tags=_resolve_tags(job_tags), run_name=run_name)
        run_id = created.info.run_id
    else:
        _log_batch(client, run_id, tags={**job_tags, "dlforge.resumed": "true"})
    return run_id, resumed


def _activate(cfg: Config, run_id: str) -> None:
    """Make the run this thread's active run (MLflow keeps one per thread): system metrics need one."""
    mlflow = _mlflow()
    active = mlflow.active_run()
    mlflow.start_run(run_id=run_id, nested=active is not None, log_system_metrics=_system_metrics(cfg))


OWNER_PID_TAG = "dlforge.pid"
OWNER_STARTED_TAG = "dlforge.pid_started"
ORPHAN_TAG = "dlforge.closed_as_orphan"


def close_orphans(client: MlflowClient, experiment_id: str) -> list[str]:
    """End as KILLED every RUNNING run of the experiment whose owning process, on this host, is gone.

    A job killed outright (kill -9, the OOM killer, a lost Ray worker) cannot end its own run; the next job in the
    experiment does. Runs of other hosts and runs without an owner tag are left alone: from here it cannot be told
    whether their process lives. Never fails the job: a store error is a warning.
    """
    host, closed = socket.gethostname(), []
    try:
        for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
            tags = run.data.tags
            pid = tags.get(OWNER_PID_TAG, "")
            if tags.get("dlforge.host") != host or not pid.isdigit():
                continue
            if not processes.alive(int(pid), tags.get(OWNER_STARTED_TAG) or None):
                _end_orphan(client, run.info.run_id, f"its process {pid} on {host} ended without closing it")
                closed.append(run.info.run_id)
    except Exception as exc:
        log.warning("could not check for runs left RUNNING: %s", exc)
    return closed


def close_unfinished_children(parent_run_id: str | None, reason: str) -> list[str]:
    """End as KILLED every child of ``parent_run_id`` still RUNNING; for callers that know none can still run.

    A sweep calls it once Ray Tune has returned: a trial stopped by the time budget, lost with its worker or
    interrupted with the driver has no process left that would end its run.
    """
    if parent_run_id is None:
        return []
    client = _mlflow().MlflowClient()
    closed = []
    try:
        experiment_id = client.get_run(parent_run_id).info.experiment_id
        query = f"attributes.status = 'RUNNING' and tags.`mlflow.parentRunId` = '{parent_run_id}'"
        for run in client.search_runs([experiment_id], query, max_results=10000):
            _end_orphan(client, run.info.run_id, reason)
            closed.append(run.info.run_id)
    except Exception as exc:
        log.warning("could not close the unfinished runs under %s: %s", parent_run_id, exc)
    return closed


def _end_orphan(client: MlflowClient, run_id: str, reason: str) -> None:
    client.set_tag(run_id, ORPHAN_TAG, reason)
    client.set_terminated(run_id, "KILLED")
    log.warning("closed MLflow run %s as KILLED: %s", run_id, reason)


def _run_exists(client: MlflowClient, run_id: str) -> bool:
    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except Exception:
        return False


def _system_metrics(cfg: Config) -> bool:
    if not cfg.tracking.system_metrics:
        return False
    import importlib.util

    if importlib.util.find_spec("psutil") is None:
        log.warning("tracking.system_metrics needs the psutil package (pip install psutil); not logging them")
        return False
    return True


def _log_config(client: MlflowClient, cfg: Config, run_id: str, resumed: bool) -> None:
    """Params once per run; a resumed job records changed values as tags (MLflow refuses to change a param)."""
    params = {k: _param_text(v) for k, v in mask_params(cfg.flat()).items()}
    config_yaml = yaml.safe_dump(unflatten(mask_params(cfg.flat())), sort_keys=False)
    if resumed:
        logged = client.get_run(run_id).data.params
        changed = {k: v for k, v in params.items() if k in logged and logged[k] != v}
        params = {k: v for k, v in params.items() if k not in logged}
        _log_batch(client, run_id, tags={f"dlforge.changed.{k}": f"{logged[k]} -> {v}" for k, v in changed.items()})
        artifact = f"config.resume-{time.strftime('%Y%m%dT%H%M%S')}.yaml"
    else:
        artifact = "config.yaml"
    _log_batch(client, run_id, params=params)
    client.log_text(run_id, config_yaml, artifact)


def _status_for(exc: BaseException) -> str:
    """Ctrl-C and SIGTERM mean KILLED (Lightning turns them into SystemExit(1) and SIGTERMException); errors FAILED."""
    lightning_errors = sys.modules.get("lightning.pytorch.utilities.exceptions")  # only Lightning raises its own
    sigterm = (lightning_errors.SIGTERMException,) if lightning_errors else ()
    if isinstance(exc, (KeyboardInterrupt, *sigterm)):
        return "KILLED"
    if isinstance(exc, SystemExit):
        return "FINISHED" if exc.code in (0, None) else "KILLED"
    return "FAILED"


def _end_run(client: MlflowClient, run_id: str, status: str) -> None:
    mlflow = _mlflow()
    try:
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            mlflow.end_run(status)  # also stops the system-metrics sampler
        else:
            client.set_terminated(run_id, status)
    except Exception as exc:  # the store went away: never mask the job's own outcome
        log.warning("could not mark MLflow run %s %s: %s", run_id, status, exc)


# ---------------------------------------------------------------- names and tags


def default_run_name(cfg: Config, kind: str) -> str:
    """``cnn-digits lr=0.001 bs=64 e=10`` (prefixed by the kind unless it is a plain training job)."""
    name = f"{cfg.model.family}-{dataset_name(cfg.data.source)} lr={cfg.optim.lr:g} bs={cfg.data.batch_size}"
    name += f" e={cfg.trainer.max_epochs}"
    return name if kind == "train" else f"{kind} {name}"


def dataset_name(source: str) -> str:
    """``builtin:digits`` → ``digits``; a DataModule ``pkg.mod:MyData`` or ``file.py:MyData`` → ``MyData``; a file or
    folder → its name without suffix."""
    if source.startswith("builtin:"):
        return source.removeprefix("builtin:")
    if ":" in source:
        return source.rsplit(":", 1)[1]
    return Path(source).stem or source


def job_tags_for(cfg: Config, kind: str) -> dict[str, str]:
    """The tags every job's run gets: kind, family, dataset, owner process, command, version, git state."""
    commit, dirty = _git_state()
    tags = {
        "dlforge.kind": kind,
        "dlforge.family": cfg.model.family,
        "dlforge.dataset": dataset_name(cfg.data.source),
        "dlforge.host": socket.gethostname(),
        OWNER_PID_TAG: str(os.getpid()),  # with the host and start time: whether the run's process still lives
        OWNER_STARTED_TAG: processes.started_at(os.getpid()) or "",
        "dlforge.command": clip(_command_line(), _MAX_TAG_VALUE),
        "dlforge.version": dlforge_version(),
        "dlforge.world_size": str(cfg.trainer.devices * cfg.trainer.num_nodes),
        # the runs table's Source column: the command a reviewer would type, not the interpreter's __main__.py
        "mlflow.source.name": _source_name(kind),
        "mlflow.source.type": "LOCAL",
    }
    if commit:
        tags |= {"mlflow.source.git.commit": commit, "dlforge.git_dirty": str(dirty).lower()}
    return tags


def _source_name(kind: str) -> str:
    """``dlforge <command>`` (a sweep trial, a pipeline stage: the job kind) for the Source column."""
    command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), kind)
    return f"dlforge {command}" if command.isidentifier() else f"dlforge {kind}"


def _command_line() -> str:
    """argv with secret-looking ``key=value`` overrides masked and URI credentials redacted."""
    return shlex.join(redact_argv(sys.argv))


@functools.lru_cache(maxsize=1)
def _git_state() -> tuple[str | None, bool]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=10)
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        commit = git("rev-parse", "HEAD")
        return (commit or None), bool(commit and git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, False


def _resolve_tags(tags: dict[str, str]) -> dict[str, str]:
    """Add MLflow's own context tags (user, source name and type) as ``mlflow.start_run`` would."""
    try:
        from mlflow.tracking.context.registry import resolve_tags

        return resolve_tags(tags)
    except Exception:  # an internal API: degrade to our tags rather than fail the job
        return tags


def lightning_callbacks(cfg: Config, run_id: str | PendingRun | None) -> list[Callback]:
    """The callbacks ``train()`` needs for tracking; give them on every rank (the id reaches the others).

    ``run_id`` may be a ``PendingRun`` (``job_run(background=True)``): the fit starts while the run opens.
    The callback module (hence Lightning and torch) is imported only here: ``dlforge predict models:/…`` downloads
    through this package and must not pay for them.
    """
    if not cfg.tracking.enabled:
        return []
    from pipelines.tracking.callback import TrackingCallback

    return [TrackingCallback(run_id)]


def fit_history(callbacks: Sequence[Any], prefixes: tuple[str, ...], skip: tuple[str, ...] = ()) -> dict | None:
    """The metric history (name → sorted ``(epoch, value)``) that the tracking callback among ``callbacks`` kept of
    a fit, as ``store.metric_history`` would read it back; None without one, or when the fit was resumed."""
    module = sys.modules.get("pipelines.tracking.callback")  # not imported: no tracking callback exists
    for callback in callbacks if module is not None else ():
        if isinstance(callback, module.TrackingCallback):
            return callback.history(prefixes, skip)
    return None
