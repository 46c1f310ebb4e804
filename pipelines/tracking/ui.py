"""The dashboard: the MLflow UI served on the configured store, stopped as one process group on every way out."""

from __future__ import annotations

import os
import sys

from pipelines import processes
from pipelines.config import Config
from pipelines.tracking.store import _USED_URI, _artifact_location, _mlflow, connect, redact_uri, tracking_uri

LOCAL_DASHBOARD = "http://127.0.0.1:5000"  # where ``dlforge ui`` serves a local store by default


def experiment_url(base: str, experiment_id: str) -> str:
    """The runs table of an experiment (MLflow 3's UI otherwise opens a GenAI overview page)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs"


def run_url(cfg: Config, run_id: str) -> str:
    """The run's page: on the tracking server, or (local store) where ``dlforge ui`` serves it by default.

    The store this process logged to (after a fallback, the local one); credentials are never in the link.
    """
    uri = _USED_URI.get(tracking_uri(cfg)) or tracking_uri(cfg)
    server = uri.startswith(("http://", "https://"))
    experiment_id = _mlflow().MlflowClient(tracking_uri=uri).get_run(run_id).info.experiment_id
    return f"{experiment_url(redact_uri(uri) if server else LOCAL_DASHBOARD, experiment_id)}/{run_id}"


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
