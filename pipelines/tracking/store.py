"""The tracking store: its URI, secrets kept out of it, connecting (first use locked), batched logging.

Everything MLflow-specific that the other tracking modules share lives here: ``_mlflow()`` (mlflow is imported on
first use only, so a job with tracking off never pays for it), ``_log_batch`` (as few ``log_batch`` calls as MLflow
allows, values clipped to its limits) and ``_active_run``.

Store: ``tracking.uri`` (default ``sqlite:///<project>/mlruns/mlflow.db``, artifacts in ``mlruns/artifacts``); any
MLflow URI works. A new experiment keeps its artifacts next to a sqlite file unless ``tracking.artifact_location``
says otherwise; an HTTP server decides for itself. An HTTP server that does not answer is an error before training
(``tracking.required=false``: a warning, and the run goes to the local default store instead).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import os
import re
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from dl_lightning.errors import InputError, clip
from pipelines.config import PROJECT_ROOT, Config, unflatten

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

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


def connect(cfg: Config, uri: str | None = None) -> str:
    """Point MLflow at the configured store (checking an HTTP server answers) and return the experiment id.

    Args:
        uri: the store ``_reachable_uri(cfg)`` already chose (its server check is not repeated).
    """
    mlflow = _mlflow()
    uri = uri or _reachable_uri(cfg)
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
        reason = clip(" ".join(str(exc).split()), 300)  # one line: SQLAlchemy's messages span several
        raise TrackingError(
            f"cannot use tracking store {redact_uri(uri)}: {type(exc).__name__}: {reason} "
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


def _ensure_connected(cfg: Config | None) -> None:
    if cfg is not None:
        connect(cfg)
    elif not _USED_URI:
        connect(Config())


def summary_fields(cfg: Config, logged: Any = None) -> dict[str, Any] | None:
    """Tracking facts for ``summary.json``: the store (credentials redacted), experiment, model URI and version.

    Args:
        logged: what a stage logged, with ``model_uri`` and ``model_version`` (``train_stage.LoggedOutputs``).
    """
    if not cfg.tracking.enabled:
        return None
    uri = _USED_URI.get(tracking_uri(cfg), tracking_uri(cfg))
    fields = {"uri": redact_uri(uri), "experiment": cfg.tracking.experiment}
    if logged is not None:
        fields |= {"model_uri": logged.model_uri, "model_version": logged.model_version}
    return fields


# ---------------------------------------------------------------- logging building blocks


def log_metrics(run_id: str | None, metrics: Mapping[str, float], step: int | None = None) -> None:
    """All ``metrics`` in one batched call (one ``log_metric`` per value is slow: 200 took seconds)."""
    if run_id is None or not metrics:
        return
    _log_batch(_mlflow().MlflowClient(), run_id, metrics={step or 0: metrics})


def set_tags(run_id: str | None, tags: Mapping[str, Any]) -> None:
    """Set ``tags`` (values as text, clipped to MLflow's limit) on the run in one call; raises on a store error."""
    if run_id is not None and tags:
        _log_batch(_mlflow().MlflowClient(), run_id, tags={k: str(v) for k, v in tags.items()})


def set_tags_safely(run_id: str | None, tags: Mapping[str, Any]) -> None:
    """``set_tags``, but a store error is a warning: for tags that must never fail the job that sets them."""
    _safe(set_tags, run_id, tags)


def set_description(run_id: str | None, text: str) -> None:
    """Set the run's description (MLflow's ``mlflow.note.content`` tag, rendered as markdown on the run page)."""
    if run_id is not None:
        _log_batch(_mlflow().MlflowClient(), run_id, tags={"mlflow.note.content": text})


def run_tag(run_id: str, key: str) -> str | None:
    """The value of tag ``key`` of run ``run_id`` (None when unset)."""
    return _mlflow().MlflowClient().get_run(run_id).data.tags.get(key)


def metric_history(run_id: str, prefixes: tuple[str, ...], skip: tuple[str, ...] = ()) -> dict[str, list]:
    """Every logged metric of the run named ``<prefix>…`` (except ``skip``): name → sorted ``(step, value)``."""
    from concurrent.futures import ThreadPoolExecutor

    client = _mlflow().MlflowClient()
    keys = [k for k in client.get_run(run_id).data.metrics if k.startswith(prefixes) and k not in skip]
    with ThreadPoolExecutor(max_workers=8) as pool:  # one request per metric: in parallel over HTTP
        histories = pool.map(lambda key: client.get_metric_history(run_id, key), keys)
        return {k: sorted((m.step, m.value) for m in h) for k, h in zip(keys, histories, strict=True)}


def log_artifact(run_id: str | None, path: str | Path, artifact_path: str | None = None) -> None:
    """Upload the file ``path`` into the run's ``artifact_path`` folder, in the background.

    The upload is queued and this returns at once; the file must not change afterwards. ``wait_for_uploads``
    (which ``runs.job_run`` calls before it ends the run, and the process calls at exit) guarantees it is in the run.
    """
    if run_id is not None:
        _UPLOADS.submit(lambda client: client.log_artifact(run_id, str(path), artifact_path), f"{path}")


def log_artifacts(run_id: str | None, folder: str | Path, artifact_path: str | None = None) -> None:
    """Upload what ``folder`` holds into the run's ``artifact_path`` in the background (as ``log_artifact``); a
    missing or empty folder uploads nothing."""
    if run_id is not None and Path(folder).is_dir() and any(Path(folder).iterdir()):
        _UPLOADS.submit(lambda client: client.log_artifacts(run_id, str(folder), artifact_path), f"{folder}/")


def wait_for_uploads(timeout: float | None = None) -> None:
    """Block until every queued artifact upload is done; raises ``TrackingError`` naming the first that failed."""
    _UPLOADS.wait(timeout)


class _Uploads:
    """One daemon thread uploading artifacts in order, so the job does not wait on the store's file copies or HTTP.

    Failures are kept and raised by ``wait``; ``wait`` also runs at interpreter exit, so an upload queued outside
    a run's ``job_run`` still completes before the process ends.
    """

    def __init__(self) -> None:
        self._pool: Any = None
        self._futures: list[tuple[str, Any]] = []
        self._lock = threading.Lock()

    def submit(self, upload: Any, what: str) -> None:
        client = _mlflow().MlflowClient()  # made here: it binds the tracking URI this thread set
        with self._lock:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlforge-mlflow-artifacts")
                atexit.register(self.wait, None, False)
            self._futures.append((what, self._pool.submit(upload, client)))

    def wait(self, timeout: float | None = None, raise_errors: bool = True) -> None:
        with self._lock:
            futures, self._futures = self._futures, []
        errors = []
        for what, future in futures:
            try:
                future.result(timeout)
            except Exception as exc:
                errors.append(f"{what}: {type(exc).__name__}: {clip(str(exc), 300)}")
        if errors and raise_errors:
            raise TrackingError(f"could not upload {len(errors)} artifact(s) to the tracking store; {errors[0]}")
        for error in errors:
            log.warning("artifact upload failed: %s", error)


_UPLOADS = _Uploads()


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
    param_rows = [Param(k, clip(v, _MAX_PARAM_VALUE)) for k, v in (params or {}).items()]
    tag_rows = [RunTag(k, clip(v, _MAX_TAG_VALUE)) for k, v in (tags or {}).items()]
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
