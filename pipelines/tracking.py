"""MLflow tracking: exactly one run per job, even under DDP, retries and resumes. The only module importing mlflow.

The API every stage uses (all of it is a no-op returning ``None`` when ``tracking.enabled=false``, and mlflow is
then never imported):

- ``job_run(cfg, kind=..., name=None, parent_run_id=None, run_id=None, tags=None)`` — context manager. On global
  rank 0 it creates a run (or, with ``run_id``, continues that run), logs the flattened config as params (secret
  looking names masked, credentials in URIs redacted) and as a YAML artifact, tags it (kind, family, dataset, git
  commit + dirty flag, host, command line, dlforge version, plus ``tags``), yields its id, and ends it FINISHED,
  FAILED on an exception, KILLED on Ctrl-C / SystemExit / SIGTERM. Other ranks get ``None`` and never touch MLflow.
  The run is tagged with its process (host, PID, start time); each job first closes as KILLED the RUNNING runs of
  its experiment whose process is gone from this host (``close_orphans``: kill -9, the OOM killer, a lost trial).
- ``lightning_callbacks(cfg, run_id)`` — give these to ``train()`` on every rank: the callback broadcasts rank 0's
  run id in ``setup``, sends each epoch's ``train/*`` and ``val/*`` metrics as one batch with ``step = epoch``
  (0-based) from a background thread (training never waits on the store), stores the run id and every epoch the
  store has not confirmed in each checkpoint, and on resume sends those, skipping epochs the run already has — so
  the history has no duplicate and no missing step, even after kill -9 or a store outage.
- ``run_id_from_checkpoint(path)`` — the run a checkpoint belongs to; pass it as ``job_run(run_id=...)``.
- ``log_train_result(run_id, cfg, result)`` — after a fit, on rank 0: test metrics, learning curves, confusion
  matrix + per-class report or residual plot, GAN samples, best checkpoint, the model with a float signature and
  input example, and (``tracking.register=true``) a registry version with alias ``candidate``.
- Building blocks: ``connect``, ``log_metrics``, ``log_artifact``, ``log_artifacts``, ``set_tags``, ``log_model``
  (PyTorch, ``pt2``), ``log_onnx_model`` (one file), ``register_model`` (alias ``candidate``), ``set_alias``,
  ``tag_model_version``, ``promote_best``, ``registered_model_name``, ``resolve_checkpoint`` (run id or
  ``models:/…`` → local .ckpt), ``download_onnx``, ``tracking_uri``, ``redact_uri``, ``mask_params``,
  ``summary_fields``, ``experiment_url``, ``serve_ui``.

Store: ``tracking.uri`` (default ``sqlite:///<project>/mlruns/mlflow.db``, artifacts in ``mlruns/artifacts``); any
MLflow URI works. A new experiment keeps its artifacts next to a sqlite file unless ``tracking.artifact_location``
says otherwise; an HTTP server decides for itself. An HTTP server that does not answer is an error before training
(``tracking.required=false``: a warning, and the run goes to the local default store instead).

Rank: ``RANK`` (torchrun), else ``SLURM_PROCID`` (multi-task SLURM), else ``NODE_RANK × devices + LOCAL_RANK``
(Lightning's DDP launcher sets ``LOCAL_RANK`` in the processes it re-launches).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import math
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import yaml

from dl_lightning.errors import InputError
from pipelines import processes
from pipelines.config import PROJECT_ROOT, Config, unflatten

if TYPE_CHECKING:  # Lightning (hence torch) is imported on use: predict downloads models through this module
    import lightning.pytorch as L
    import torch
    from lightning.pytorch.callbacks import Callback
    from mlflow import MlflowClient

    from pipelines.train import TrainResult

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "dlforge_tracking"  # {"run_id": str, "pending": [[step, {name: value}], ...]}
CANDIDATE = "candidate"
MASK = "***"
_SECRET_WORDS = frozenset(
    {"password", "passwd", "pwd", "token", "secret", "key", "apikey", "credential", "credentials"}
)
_MAX_PARAM_VALUE = 6000  # MLflow 3 limits
_MAX_TAG_VALUE = 8000
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
_USED_URI: dict[str, str] = {}  # configured URI → the one this process logs to (they differ after a fallback)


class TrackingError(InputError):
    """The tracking store cannot be used; the message names the URI (redacted) and the fix."""


# ---------------------------------------------------------------- URIs, secrets, rank


def tracking_uri(cfg: Config) -> str:
    """``tracking.uri``, or the embedded sqlite store under ``<project>/mlruns``."""
    return cfg.tracking.uri or f"sqlite:///{PROJECT_ROOT / 'mlruns' / 'mlflow.db'}"


def redact_uri(uri: str) -> str:
    """``scheme://user:pass@host`` → ``scheme://***@host``; safe to print, log and write to summaries."""
    return re.sub(r"(?<=://)[^/@\s]+@", f"{MASK}@", uri)


def filter_quote(value: str) -> str:
    """``value`` quoted for an MLflow filter string (``name = …``): in single quotes, or in double quotes when it
    holds a single quote (``team's``); MLflow's parser has no escape, so a value with both kinds is refused."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise InputError(f"{value!r} holds both ' and \", which MLflow's search cannot match; remove one of them")


def looks_secret(name: str) -> bool:
    """True when a word of ``name`` (split at ``._-`` and camelCase) is password, token, secret, key, …"""
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower())
    return any(word in _SECRET_WORDS for word in words)


def mask_params(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Secret-looking names get ``***`` (unless empty); credentials inside URI values are redacted."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if looks_secret(key) and value not in (None, ""):
            out[key] = MASK
        elif isinstance(value, str) and "://" in value:
            out[key] = redact_uri(value)
        else:
            out[key] = value
    return out


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
) -> Iterator[str | None]:
    """One MLflow run for one job: created on global rank 0 only; yields its id (``None`` elsewhere or when off).

    Args:
        kind: what the job is (``train``, ``trial``, ``sweep``, ``pipeline``, ``distill``, ``export``…); a tag.
        name: a readable run name; default: family, dataset and key hyperparameters.
        parent_run_id: nest this run under a pipeline or sweep run.
        run_id: continue this run (a resumed job): params already logged are kept, changed ones become tags.
        tags: extra tags, e.g. ``{"ray.trial_id": ...}``.
    """
    if not cfg.tracking.enabled or global_rank(cfg.trainer.devices) != 0:
        yield None
        return
    mlflow = _mlflow()
    experiment_id = connect(cfg)
    client = mlflow.MlflowClient()
    close_orphans(client, experiment_id)  # before continuing a run: a resumed job closes the orphan it finds
    run_id, resumed = _create_or_continue(client, cfg, experiment_id, kind, name, parent_run_id, run_id, tags)
    status = "FINISHED"
    try:
        _log_config(client, cfg, run_id, resumed)
        yield run_id
    except BaseException as exc:
        status = _status_for(exc)
        _safe(client.set_tag, run_id, "dlforge.error", _clip(f"{type(exc).__name__}: {exc}", 2000))
        raise
    finally:
        _end_run(client, run_id, status)


def connect(cfg: Config) -> str:
    """Point MLflow at the configured store (checking an HTTP server answers) and return the experiment id."""
    mlflow = _mlflow()
    uri = _reachable_uri(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    if redact_uri(uri) != uri:  # MLflow prints "View run … at http://user:password@host/…" after each run
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    _USED_URI[tracking_uri(cfg)] = uri
    try:
        with _first_use_lock(uri):
            return _experiment_id(uri, cfg.tracking.experiment, _artifact_location(cfg, uri))
    except Exception as exc:
        raise TrackingError(
            f"cannot use tracking store {redact_uri(uri)}: {type(exc).__name__}: {_clip(str(exc), 300)} "
            "— fix tracking.uri or set tracking.enabled=false"
        ) from exc


@contextlib.contextmanager
def _first_use_lock(uri: str) -> Iterator[None]:
    """One process at a time opens a sqlite store for the first time.

    Jobs started together on a new file (8 trials, an array job) otherwise race MLflow's table creation and fail
    with "table alembic_version already exists". Once the tables exist, SQLite's own locking and MLflow's 20 s
    busy timeout serialize the writers.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    with open(uri.removeprefix("sqlite:///") + ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, even if this process dies
        yield


def _reachable_uri(cfg: Config) -> str:
    uri = tracking_uri(cfg)
    if not uri.startswith(("http://", "https://")) or _server_answers(uri):
        return uri
    message = f"tracking server {redact_uri(uri)} does not answer"
    if cfg.tracking.required:
        raise TrackingError(f"{message}; start it, fix tracking.uri, or set tracking.required=false to log locally")
    fallback = tracking_uri(Config())
    log.warning("%s; logging to the local store %s instead (tracking.required=false)", message, fallback)
    return fallback


def _server_answers(uri: str, timeout: float = 5.0) -> bool:
    parts = urlsplit(uri)
    netloc = parts.netloc.rpartition("@")[2]  # /health needs no credentials
    try:
        with urllib.request.urlopen(f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}/health", timeout=timeout):
            return True
    except OSError:
        return False


def _artifact_location(cfg: Config, uri: str) -> str | None:
    """Where a *new* experiment keeps artifacts: configured, else beside a sqlite file, else the server's choice."""
    if cfg.tracking.artifact_location:
        return cfg.tracking.artifact_location
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").absolute().as_uri()
    return None


@functools.lru_cache(maxsize=16)
def _experiment_id(uri: str, name: str, artifact_location: str | None) -> str:
    client = _mlflow().MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # another process created it between our get and create
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


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
    # Make it the active run of this thread too: mlflow.pytorch.log_model and system metrics need one.
    active = mlflow.active_run()
    mlflow.start_run(run_id=run_id, nested=active is not None, log_system_metrics=_system_metrics(cfg))
    return run_id, resumed


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
    return source.removeprefix("builtin:") if source.startswith("builtin:") else Path(source).stem or source


def job_tags_for(cfg: Config, kind: str) -> dict[str, str]:
    commit, dirty = _git_state()
    tags = {
        "dlforge.kind": kind,
        "dlforge.family": cfg.model.family,
        "dlforge.dataset": dataset_name(cfg.data.source),
        "dlforge.host": socket.gethostname(),
        OWNER_PID_TAG: str(os.getpid()),  # with the host and start time: whether the run's process still lives
        OWNER_STARTED_TAG: processes.started_at(os.getpid()) or "",
        "dlforge.command": _clip(_command_line(), _MAX_TAG_VALUE),
        "dlforge.version": _version(),
        "dlforge.world_size": str(cfg.trainer.devices * cfg.trainer.num_nodes),
    }
    if commit:
        tags |= {"mlflow.source.git.commit": commit, "dlforge.git_dirty": str(dirty).lower()}
    return tags


def _command_line() -> str:
    """argv with secret-looking ``key=value`` overrides masked and URI credentials redacted."""
    return shlex.join(redact_argv(sys.argv))


def redact_argv(argv: list[str]) -> list[str]:
    """``argv`` safe to print and store: secret-looking ``key=value`` masked, URI credentials redacted."""
    shown = []
    for arg in argv:
        key, sep, _ = arg.partition("=")
        shown.append(f"{key}={MASK}" if sep and looks_secret(key) else redact_uri(arg))
    return shown


def redacted_config(cfg: Config) -> dict[str, Any]:
    """``cfg.to_dict()`` with secret-looking values masked and URI credentials redacted (for summaries)."""
    return unflatten(mask_params(cfg.flat()))


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


@functools.lru_cache(maxsize=1)
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dlforge")
    except PackageNotFoundError:
        return "unknown"


def _resolve_tags(tags: dict[str, str]) -> dict[str, str]:
    """Add MLflow's own context tags (user, source name and type) as ``mlflow.start_run`` would."""
    try:
        from mlflow.tracking.context.registry import resolve_tags

        return resolve_tags(tags)
    except Exception:  # an internal API: degrade to our tags rather than fail the job
        return tags


# ---------------------------------------------------------------- logging building blocks


def log_metrics(run_id: str | None, metrics: Mapping[str, float], step: int | None = None) -> None:
    """All ``metrics`` in one batched call (one ``log_metric`` per value is slow: 200 took seconds)."""
    if run_id is None or not metrics:
        return
    _log_batch(_mlflow().MlflowClient(), run_id, metrics={step or 0: metrics})


def set_tags(run_id: str | None, tags: Mapping[str, Any]) -> None:
    if run_id is not None and tags:
        _log_batch(_mlflow().MlflowClient(), run_id, tags={k: str(v) for k, v in tags.items()})


def log_artifact(run_id: str | None, path: str | Path, artifact_path: str | None = None) -> None:
    if run_id is not None:
        _mlflow().MlflowClient().log_artifact(run_id, str(path), artifact_path)


def log_artifacts(run_id: str | None, folder: str | Path, artifact_path: str | None = None) -> None:
    if run_id is not None and Path(folder).is_dir() and any(Path(folder).iterdir()):
        _mlflow().MlflowClient().log_artifacts(run_id, str(folder), artifact_path)


def log_model(
    run_id: str,
    net: torch.nn.Module,
    example: torch.Tensor,
    *,
    name: str = "model",
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Log ``net`` to ``run_id`` so that ``mlflow.pyfunc.load_model(uri).predict(x)`` works; returns the model URI.

    Saved as ``pt2`` (``torch.export``: no pickle, loads without dlforge installed) with a dynamic batch dimension;
    a net ``torch.export`` cannot trace falls back to pickle. The signature is inferred from ``example`` (a batch
    of float32 — or int64 token ids for text) and the net's output on it. Puts ``net`` in eval mode.
    """
    import torch
    from mlflow.models import infer_signature

    net = net.eval().cpu()
    example = example.float() if example.is_floating_point() else example
    if len(example) < 2:  # torch.export fixes a batch of 1 as a constant; 2 keeps the batch dimension dynamic
        example = torch.cat([example, example])
    with torch.no_grad():
        output = net(example).float()
    sample, signature = example.numpy(), infer_signature(example.numpy(), output.numpy())
    requirements = [f"torch=={torch.__version__.split('+')[0]}", "numpy"]
    with _active_run(run_id):
        for fmt in ("pt2", "pickle"):
            try:
                info = _mlflow_pytorch().log_model(
                    net,
                    name=name,
                    signature=signature,
                    input_example=sample,
                    pip_requirements=requirements,
                    serialization_format=fmt,
                    metadata=dict(metadata or {}),
                )
                return info.model_uri
            except Exception as exc:
                if fmt == "pickle":
                    raise
                log.warning("torch.export could not trace %s (%s); logging it pickled", type(net).__name__, exc)
    raise AssertionError("unreachable")


def registered_model_name(cfg: Config) -> str:
    """``<experiment>-<family>``: one registered model per experiment and family."""
    return f"{cfg.tracking.experiment}-{cfg.model.family}"


def register_model(
    model_uri: str,
    *,
    name: str,
    run_id: str | None,
    alias: str | None = CANDIDATE,
    tags: Mapping[str, Any] | None = None,
) -> str:
    """Register ``model_uri`` as a new version of ``name``, tagged with its source run; point ``alias`` at it.

    Returns the version number as a string (what ``models:/name/<version>`` takes).
    """
    mlflow = _mlflow()
    version_tags = {"dlforge.source_run_id": run_id or "", **{k: str(v) for k, v in (tags or {}).items()}}
    with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints "Created version …"; dlforge reports it itself
        version = mlflow.register_model(model_uri, name, tags=version_tags)
    if alias:
        set_alias(name, alias, version.version)
    return str(version.version)


def set_alias(name: str, alias: str, version: str | int) -> None:
    """Move ``alias`` (``candidate``, ``champion``) of registered model ``name`` to ``version``."""
    _mlflow().MlflowClient().set_registered_model_alias(name, alias, str(version))


def resolve_checkpoint(ref: str, cfg: Config | None = None, dest: str | Path | None = None) -> tuple[str, str]:
    """A run id or ``models:/<name>@<alias>`` / ``models:/<name>/<version>`` → (local .ckpt path, source run id).

    Downloads the run's ``checkpoints/`` artifacts (``best.ckpt`` preferred) into ``dest`` (default: a new temp
    folder). ``cfg`` names the store; without it the store this process already uses, else the default one.
    """
    _ensure_connected(cfg)
    client = _mlflow().MlflowClient()
    run_id = _source_run(client, ref) if ref.startswith("models:/") else ref
    folder = Path(dest or tempfile.mkdtemp(prefix="dlforge-ckpt-"))
    try:
        local = Path(client.download_artifacts(run_id, "checkpoints", str(folder)))
    except Exception as exc:
        raise InputError(f"{ref}: run {run_id} has no checkpoints/ artifacts to resolve ({_first_line(exc)})") from exc
    found = sorted(local.glob("*.ckpt"), key=lambda p: p.name != "best.ckpt")
    if not found:
        raise InputError(f"{ref}: run {run_id} logged no .ckpt file; pass a checkpoint path instead")
    return str(found[0]), run_id


def log_onnx_model(
    run_id: str,
    onnx_path: str | Path,
    *,
    name: str,
    input_example: Any,
    output_example: Any = None,
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Log a single-file ONNX model (no external data) with a signature from the examples; returns its URI.

    ``input_example``/``output_example`` are numpy arrays (float32 — or int64 token ids); this module reads the
    file as bytes, so it does not import onnx itself.
    """
    from mlflow.models import infer_signature

    onnx_flavor = _mlflow_flavor("onnx")
    signature = infer_signature(input_example, output_example)
    with _active_run(run_id):
        info = onnx_flavor.log_model(
            Path(onnx_path).read_bytes(),
            name=name,
            signature=signature,
            input_example=input_example,
            save_as_external_data=False,  # one file: the external-data default splits small models (mlflow#8522)
            pip_requirements=["onnxruntime", "numpy"],
            metadata=dict(metadata or {}),
        )
    return info.model_uri


def download_onnx(ref: str, cfg: Config | None = None, dest: str | Path | None = None) -> Path:
    """``models:/<name>@<alias>`` (or any model URI) of an ONNX model → the local ``.onnx`` file."""
    _ensure_connected(cfg)
    folder = Path(dest or tempfile.mkdtemp(prefix="dlforge-onnx-"))
    try:
        local = Path(_mlflow().artifacts.download_artifacts(artifact_uri=ref, dst_path=str(folder)))
    except Exception as exc:  # unknown name or alias, a store without the artifacts
        raise InputError(
            f"{ref}: cannot download it from the tracking store ({_first_line(exc)}); {known_models()}"
        ) from exc
    found = sorted(local.rglob("*.onnx"))
    if not found:
        raise InputError(f"{ref} holds no .onnx file; register an ONNX model (dlforge compress) or pass a file")
    return found[0]


def _source_run(client: MlflowClient, ref: str) -> str:
    name, _, which = ref.removeprefix("models:/").partition("@")
    try:
        if which:
            version = client.get_model_version_by_alias(name, which)
        else:
            name, _, number = name.partition("/")
            version = client.get_model_version(name, number)
    except Exception as exc:
        raise InputError(
            f"{ref} is not a registered model version in the tracking store ({_first_line(exc)}); {known_models()}"
        ) from exc
    run_id = version.tags.get("dlforge.source_run_id") or version.run_id
    if not run_id:
        raise InputError(f"{ref} records no source run; pass the checkpoint path instead")
    return run_id


def known_models(limit: int = 10) -> str:
    """What the store does hold, for an error about a model it does not: ``name@alias,alias (N versions)``."""
    try:
        models = _mlflow().MlflowClient().search_registered_models(max_results=limit + 1)
    except Exception:  # the store itself is the problem: the caller's message says so
        return "the registered models could not be listed"
    if not models:
        return "the store has no registered models yet (dlforge train tracking.register=true makes one)"
    shown = []
    for model in models[:limit]:
        aliases = ",".join(sorted(model.aliases or {}))
        shown.append(f"models:/{model.name}@{aliases}" if aliases else f"models:/{model.name}/<version>")
    more = f" and {len(models) - limit} more" if len(models) > limit else ""
    return f"registered here: {'; '.join(shown)}{more}"


def _ensure_connected(cfg: Config | None) -> None:
    if cfg is not None:
        connect(cfg)
    elif not _USED_URI:
        connect(Config())


@contextlib.contextmanager
def _active_run(run_id: str) -> Iterator[None]:
    """Make ``run_id`` this thread's active run for fluent APIs, without ending it afterwards."""
    mlflow = _mlflow()
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield
        return
    status = mlflow.MlflowClient().get_run(run_id).info.status
    mlflow.start_run(run_id=run_id, nested=active is not None)
    try:
        yield
    finally:
        mlflow.end_run(status)  # pop it, restoring the status it had (start_run set it RUNNING)


def _log_batch(
    client: MlflowClient,
    run_id: str,
    *,
    metrics: Mapping[int, Mapping[str, float]] | None = None,
    params: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
) -> None:
    """``metrics`` is step → {name: value}; everything goes in as few ``log_batch`` calls as MLflow allows."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    metric_rows = [Metric(k, float(v), now, int(s)) for s, values in (metrics or {}).items() for k, v in values.items()]
    param_rows = [Param(k, _clip(v, _MAX_PARAM_VALUE)) for k, v in (params or {}).items()]
    tag_rows = [RunTag(k, _clip(v, _MAX_TAG_VALUE)) for k, v in (tags or {}).items()]
    for i in range(0, len(metric_rows), _METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metric_rows[i : i + _METRICS_PER_BATCH])
    for i in range(0, len(param_rows), _PARAMS_PER_BATCH):
        client.log_batch(run_id, params=param_rows[i : i + _PARAMS_PER_BATCH])
    if tag_rows:
        client.log_batch(run_id, tags=tag_rows)


def _param_text(value: Any) -> str:
    """YAML spelling (``true``, ``null``, ``[64, 32]``) so a param can be pasted back as an override."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return json.dumps(list(value))
    return str(value)


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip()
    return _clip(text.splitlines()[0] if text else type(exc).__name__, limit)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _safe(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception as exc:
        log.warning("MLflow call %s failed: %s", getattr(fn, "__name__", fn), exc)


def _mlflow() -> Any:
    """Import mlflow on first use only: a job with tracking off never pays for it."""
    import mlflow

    return mlflow


def _mlflow_pytorch() -> Any:
    # mlflow.pytorch imports its Lightning-autolog module, which imports the separate ``pytorch_lightning`` package:
    # a second Lightning under the old namespace (the mix behind ray#39715), its import time, and its log lines.
    # dlforge logs through its own callbacks, never autolog, so that module is kept out: a None entry in
    # sys.modules fails its import, which mlflow.pytorch catches.
    sys.modules.setdefault("mlflow.pytorch._lightning_autolog", None)  # type: ignore[arg-type]
    return _mlflow_flavor("pytorch")


def _mlflow_flavor(name: str) -> Any:
    """``mlflow.<name>``, imported on first use (each flavor pulls in its framework)."""
    import importlib

    return importlib.import_module(f"mlflow.{name}")


# ---------------------------------------------------------------- Lightning


def lightning_callbacks(cfg: Config, run_id: str | None) -> list[Callback]:
    """The callbacks ``train()`` needs for tracking; give them on every rank (the id reaches the others)."""
    return [_tracking_callback_class()(run_id)] if cfg.tracking.enabled else []


@functools.cache
def _tracking_callback_class() -> type[Callback]:
    """``TrackingCallback``: the hooks below on Lightning's ``Callback``, built on first use so that importing this
    module imports neither Lightning nor torch (``dlforge predict models:/…`` downloads through it)."""
    from lightning.pytorch.callbacks import Callback

    return type("TrackingCallback", (_TrackingHooks, Callback), {"__module__": __name__})


def __getattr__(name: str) -> Any:
    if name == "TrackingCallback":
        return _tracking_callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _TrackingHooks:
    """Per-epoch metrics of one run, from rank 0, one batch per epoch at ``step = epoch`` (0-based).

    Guarantees: every rank ends ``setup`` holding rank 0's run id (``strategy.broadcast``: torchrun, SLURM and
    multi-node alike). Batches are sent from a background thread, so training never waits on the store, and every
    epoch the store has not confirmed yet is written into each checkpoint: after a crash, a kill or an outage the
    resumed job sends those epochs, skipping any the run already has — no missing and no duplicate step.
    """

    def __init__(self, run_id: str | None) -> None:
        self.run_id = run_id
        self._sender: _EpochSender | None = None
        self._restored: dict[int, dict[str, float]] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.run_id = trainer.strategy.broadcast(self.run_id, src=0)
        if not (trainer.is_global_zero and self.run_id and stage == "fit"):
            return
        client = _mlflow().MlflowClient(tracking_uri=_mlflow().get_tracking_uri())
        logged = {int(m.step) for m in client.get_metric_history(self.run_id, "epoch")}
        self._sender = _EpochSender(client, self.run_id, logged)
        spec = getattr(trainer.datamodule, "spec", None)
        if spec is not None:
            tags = {
                "dlforge.data_fingerprint": spec.fingerprint,
                "dlforge.data_kind": spec.kind,
                "dlforge.task": spec.task,
            }
            _safe(functools.partial(_log_batch, tags=tags), client, self.run_id)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        state = checkpoint.get(CHECKPOINT_KEY) or {}
        if self._sender is not None and state.get("run_id") == self.run_id:
            for step, values in state.get("pending", []):
                self._sender.add(int(step), values)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs before ModelCheckpoint's hook (Lightning calls monitoring callbacks last), so the epoch is pending
        # by the time its checkpoint is written.
        if self._sender is not None and not trainer.sanity_checking:
            self._sender.add(trainer.current_epoch, epoch_metrics(trainer))

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        unsent = self._sender.unsent() if self._sender is not None else {}
        checkpoint[CHECKPOINT_KEY] = {"run_id": self.run_id, "pending": [[s, v] for s, v in sorted(unsent.items())]}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._close()  # a failed run still gets the epochs it finished

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._close()

    def _close(self) -> None:
        if self._sender is not None:
            if not self._sender.drain(timeout=60.0):
                log.warning(
                    "MLflow did not take %d epoch(s) of metrics; the checkpoint keeps them", len(self._sender.unsent())
                )
            self._sender.close()
            self._sender = None


class _EpochSender:
    """A daemon thread sending ``step → metrics`` batches of one run; ``unsent()`` is what the store lacks.

    Epochs that end within ``interval`` seconds of the last send share the next batch: short epochs cost one
    store round trip per few seconds instead of one each, and the dashboard is never more than that behind.
    """

    def __init__(self, client: MlflowClient, run_id: str, logged: set[int], interval: float = 3.0) -> None:
        self._client, self._run_id, self._logged, self._interval = client, run_id, logged, interval
        self._pending: dict[int, dict[str, float]] = {}
        self._lock = threading.Lock()
        self._wake, self._sent = threading.Event(), threading.Event()
        self._closed = self._force = False
        self._failures, self._retry_at, self._last_send = 0, 0.0, -math.inf
        threading.Thread(target=self._loop, name="dlforge-mlflow-metrics", daemon=True).start()

    def add(self, step: int, metrics: dict[str, float]) -> None:
        with self._lock:
            if step not in self._logged:
                self._pending[step] = metrics
        self._wake.set()

    def unsent(self) -> dict[int, dict[str, float]]:
        with self._lock:
            return dict(self._pending)

    def drain(self, timeout: float) -> bool:
        """Send now and wait until nothing is left, the store fails again, or ``timeout``; True when all sent."""
        deadline = time.monotonic() + timeout
        while self.unsent() and time.monotonic() < deadline:
            failures = self._failures
            self._force = True  # ignores the interval and the back-off
            self._sent.clear()
            self._wake.set()
            self._sent.wait(max(0.0, deadline - time.monotonic()))
            if self.unsent() and self._failures > failures:
                break
        return not self.unsent()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    def _loop(self) -> None:
        while not self._closed:
            due = max(self._retry_at, self._last_send + self._interval) - time.monotonic()
            self._wake.wait(timeout=max(due, 0.0) if self.unsent() else None)
            self._wake.clear()
            if not self._closed:
                self._send()
            self._sent.set()

    def _send(self) -> None:
        forced, self._force = self._force, False
        batch = self.unsent()
        due = max(self._retry_at, self._last_send + self._interval)
        if not batch or (not forced and time.monotonic() < due):
            return
        self._last_send = time.monotonic()
        try:
            _log_batch(self._client, self._run_id, metrics=batch)
        except Exception as exc:  # a store that went away must not stop (or stall) the training
            self._failures += 1
            self._retry_at = time.monotonic() + min(300.0, 15.0 * 2**self._failures)
            log.warning("MLflow unreachable (%s); %d epoch(s) of metrics kept for later", exc, len(batch))
            return
        with self._lock:
            for step in batch:
                self._pending.pop(step, None)
            self._logged |= set(batch)
        self._failures = 0


def epoch_metrics(trainer: L.Trainer) -> dict[str, float]:
    """This epoch's ``train/*`` and ``val/*`` values (one host sync per epoch), the lr and the epoch itself."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
    if trainer.optimizers:
        metrics["train/lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
    metrics["epoch"] = float(trainer.current_epoch)
    return metrics


# ---------------------------------------------------------------- after a fit


@dataclass(frozen=True)
class LoggedOutputs:
    """What ``log_train_result`` put in the run."""

    model_uri: str | None = None
    model_version: str | None = None
    artifacts: tuple[str, ...] = ()


def log_train_result(run_id: str | None, cfg: Config, result: TrainResult) -> LoggedOutputs:
    """On rank 0 after a fit: test metrics, review plots, GAN samples, the best checkpoint, the model, registry.

    A review plot that fails is a warning and a ``dlforge.review_error`` tag, not a failed job: the model was
    trained. Failing to log the model or register it raises — later stages depend on them. Once per run and
    epoch count: a resumed job whose fit was already done (tag ``dlforge.train_outputs``) gets the earlier outputs.
    """
    if run_id is None or not result.is_global_zero:
        return LoggedOutputs()
    client = _mlflow().MlflowClient()
    previous = _logged_before(client, run_id, result.epochs)
    if previous is not None:  # a resumed job that found the fit already done: test/* and the version exist
        return previous
    _log_batch(client, run_id, metrics={result.epochs: result.metrics}, tags=_data_tags(result.data))
    checkpoint = result.best_checkpoint or result.last_checkpoint
    module = _load_module(checkpoint) if checkpoint else None
    review = Path(cfg.output_dir).absolute() / "review"  # kept beside the checkpoints: reports embed them
    review.mkdir(parents=True, exist_ok=True)
    files = _review_files(client, run_id, cfg, module, result, review)
    for path in files:
        client.log_artifact(run_id, str(path), "review")
    log_artifacts(run_id, Path(cfg.output_dir) / "samples", "samples")
    if checkpoint:
        client.log_artifact(run_id, checkpoint, "checkpoints")
    if module is None:
        return LoggedOutputs(artifacts=tuple(p.name for p in files))
    net, example = module.export_net()
    model_uri = log_model(run_id, net, example, metadata={"data": result.data_brief()})
    version = None
    if cfg.tracking.register:
        version = register_model(model_uri, name=registered_model_name(cfg), run_id=run_id, tags=_version_tags(result))
    logged = LoggedOutputs(model_uri, version, tuple(p.name for p in files))
    outputs = {"epochs": result.epochs, "model_uri": model_uri, "model_version": version, "artifacts": logged.artifacts}
    _safe(client.set_tag, run_id, OUTPUTS_TAG, json.dumps(outputs))
    return logged


OUTPUTS_TAG = "dlforge.train_outputs"  # what log_train_result logged, and after how many epochs


def _logged_before(client: MlflowClient, run_id: str, epochs: int) -> LoggedOutputs | None:
    """What an earlier job of this run logged after the same number of epochs; None when it has not.

    Resuming a finished fit retrains nothing; this keeps it from logging test/* a second time and registering a
    second version of the same model. A fit continued to more epochs is a new model and is logged again.
    """
    try:
        done = json.loads(client.get_run(run_id).data.tags.get(OUTPUTS_TAG) or "null")
    except (ValueError, TypeError):
        return None
    if not isinstance(done, dict) or done.get("epochs") != epochs:
        return None
    return LoggedOutputs(done.get("model_uri"), done.get("model_version"), tuple(done.get("artifacts") or ()))


def _review_files(
    client: MlflowClient, run_id: str, cfg: Config, module: Any, result: TrainResult, folder: Path
) -> list[Path]:
    try:
        files = [p for p in [_learning_curve(client, run_id, folder)] if p]
        if module is not None and cfg.model.family != "gan":
            files += _evaluation_files(cfg, module, result, folder)
        return files
    except Exception as exc:
        log.warning("review plots failed: %s: %s", type(exc).__name__, exc)
        _safe(client.set_tag, run_id, "dlforge.review_error", _clip(f"{type(exc).__name__}: {exc}", 2000))
        return []


def summary_fields(cfg: Config, logged: LoggedOutputs | None = None) -> dict[str, Any] | None:
    """Tracking facts for ``summary.json``: the store (credentials redacted), experiment, model URI and version."""
    if not cfg.tracking.enabled:
        return None
    uri = _USED_URI.get(tracking_uri(cfg), tracking_uri(cfg))
    fields = {"uri": redact_uri(uri), "experiment": cfg.tracking.experiment}
    if logged is not None:
        fields |= {"model_uri": logged.model_uri, "model_version": logged.model_version}
    return fields


def _load_module(checkpoint: str) -> Any:
    from dl_lightning.registry import load_model

    return load_model(checkpoint)


def _learning_curve(client: MlflowClient, run_id: str, folder: Path) -> Path | None:
    from pipelines.plots import plot_learning_curves

    keys = [k for k in client.get_run(run_id).data.metrics if k.startswith(("train/", "val/")) and k != "train/lr"]
    with ThreadPoolExecutor(max_workers=8) as pool:  # one request per metric: in parallel over HTTP
        histories = pool.map(lambda key: client.get_metric_history(run_id, key), keys)
        history = {k: sorted((m.step, m.value) for m in h) for k, h in zip(keys, histories, strict=True)}
    return plot_learning_curves(history, folder / "learning_curves.png") if history else None


def _evaluation_files(cfg: Config, module: Any, result: TrainResult, folder: Path) -> list[Path]:
    """Predictions of the best checkpoint on the test split → confusion matrix + report, or residual plot."""
    import numpy as np
    import torch

    from pipelines import plots
    from pipelines.train import load_data

    x, y = load_data(cfg).test
    net, _ = module.export_net()
    net.eval()
    with torch.no_grad():
        out = torch.cat([net(torch.from_numpy(x[i : i + 1024])) for i in range(0, len(x), 1024)]).float().numpy()
    if result.data.get("task") == "classification":
        names = [str(n) for n in result.data.get("class_names") or range(out.shape[1])]
        return plots.classification_review(y, np.argmax(out, axis=1), names, folder)
    return [plots.plot_residuals(y, out.reshape(-1), folder / "residuals.png")]


def _data_tags(data: Mapping[str, Any]) -> dict[str, str]:
    tags = {"dlforge.data_fingerprint": data.get("fingerprint"), "dlforge.data_kind": data.get("kind")}
    return {k: str(v) for k, v in tags.items() if v}


def _version_tags(result: TrainResult) -> dict[str, str]:
    tags = {f"metric.{k}": f"{v:.6g}" for k, v in result.metrics.items()}
    return tags | _data_tags(result.data)


# ---------------------------------------------------------------- the dashboard


def experiment_url(base: str, experiment_id: str) -> str:
    """The runs table of an experiment (MLflow 3's UI otherwise opens a GenAI overview page)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs"


def ui_server_env() -> dict[str, str]:
    """Environment for an ``mlflow server`` that only shows runs: MLflow 3's job runner (GenAI scorers, seven
    huey consumer processes) is left off unless the caller's environment turns it on."""
    return {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}


def serve_ui(cfg: Config, *, host: str = "127.0.0.1", port: int = 5000) -> int:
    """Serve the MLflow UI on the configured store until Ctrl-C, SIGTERM or SIGHUP; an HTTP store is only linked to.

    No server process outlives the command: the whole process group it started is stopped on every way out.
    """
    experiment_id = connect(cfg)
    uri = _mlflow().get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        print(f"dashboard: {experiment_url(redact_uri(uri), experiment_id)}", flush=True)
        return 0
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host]
    command += ["--port", str(port), "--workers", "1"]  # one user's dashboard: one worker is plenty
    location = _artifact_location(cfg, uri)
    if location:
        command += ["--default-artifact-root", location]
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving {host}: anyone who can reach it can read and change runs; see MLflow's auth app")
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"dashboard: {experiment_url(f'http://{shown_host}:{port}', experiment_id)}  (Ctrl-C stops it)", flush=True)
    # Its own session, stopped as one on Ctrl-C, SIGTERM or SIGHUP: the uvicorn workers it forks go with it.
    return processes.serve(command, env=ui_server_env())


# ---------------------------------------------------------------- promotion


def tag_model_version(name: str, version: str | int, tags: Mapping[str, Any]) -> None:
    client = _mlflow().MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


def promote_best(
    name: str, alias: str, *, metric: str | None, mode: str, where: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Point ``alias`` at the version of ``name`` with the best ``metric`` among those whose gates passed.

    A version's gates and test metrics are its tags (``dlforge.gates``, ``metric.<name>``); ``where`` narrows the
    candidates to versions with those tags (``{"dlforge.model": "teacher-int8"}``). Without a metric (a generator)
    the newest passing version wins. When no version has passed, the alias stays where it was. Returns the registry
    as the report shows it.
    """
    client = _mlflow().MlflowClient()
    versions = client.search_model_versions(f"name = {filter_quote(name)}")
    passed = [
        v
        for v in versions
        if v.tags.get("dlforge.gates") == "passed" and all(v.tags.get(k) == w for k, w in (where or {}).items())
    ]
    scored = [v for v in passed if f"metric.{metric}" in v.tags]
    if scored:
        best = (max if mode == "max" else min)(scored, key=lambda v: float(v.tags[f"metric.{metric}"]))
        client.set_registered_model_alias(name, alias, best.version)
    elif passed and metric is None:
        client.set_registered_model_alias(name, alias, max(passed, key=lambda v: int(v.version)).version)
    aliases = client.get_registered_model(name).aliases  # alias → version, after the move
    rows = [
        {
            "version": str(v.version),
            "aliases": sorted(a for a, ver in aliases.items() if str(ver) == str(v.version)),
            "gates": v.tags.get("dlforge.gates", "—"),
            "model": v.tags.get("dlforge.model", ""),  # which artifact an ONNX version is (teacher-int8, student…)
            "metric": float(v.tags[f"metric.{metric}"]) if f"metric.{metric}" in v.tags else None,
            "run_id": v.run_id,
        }
        for v in sorted(versions, key=lambda v: int(v.version))
    ]
    return {"name": name, "metric": metric, "champion": aliases.get(alias), "versions": rows}
