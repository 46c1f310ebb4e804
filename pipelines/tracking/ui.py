"""The dashboard: the MLflow UI served on the configured store, stopped as one process group on every way out."""

from __future__ import annotations

import json
import os
import sys
from urllib.parse import quote

from pipelines import processes
from pipelines.config import Config
from pipelines.tracking.store import _USED_URI, _artifact_location, _mlflow, connect, redact_uri, tracking_uri

LOCAL_DASHBOARD = "http://127.0.0.1:5000"  # where ``dlforge ui`` serves a local store by default


# MLflow's shared views: an experiment tag ``mlflow.sharedViewState.<key>`` holds the runs table's state, and
# ``?viewStateShareKey=<key>`` opens the table in it. Its default shows no metric column at all.
RUNS_VIEW_KEY = "dlforge"
RUNS_VIEW_TAG = f"mlflow.sharedViewState.{RUNS_VIEW_KEY}"


def experiment_url(base: str, experiment_id: str, *, view: bool = False) -> str:
    """The runs table of an experiment (MLflow 3's UI otherwise opens a GenAI overview page); ``view``: in the
    columns ``share_runs_view`` chose."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs" + (
        f"?viewStateShareKey={RUNS_VIEW_KEY}" if view else ""
    )


def share_runs_view(run_id: str, metrics: list[str], tags: list[str]) -> None:
    """Make the runs table of ``run_id``'s experiment, opened through ``experiment_url(…, view=True)``, show these
    metric and tag columns beside the dataset and models."""
    columns = ["attributes.`Dataset`", "attributes.`Models`"]
    columns += [f"metrics.`{m}`" for m in metrics] + [f"tags.`{t}`" for t in tags]
    client = _mlflow().MlflowClient()
    client.set_experiment_tag(
        client.get_run(run_id).info.experiment_id, RUNS_VIEW_TAG, json.dumps({"selectedColumns": columns})
    )


def has_runs_view(experiment_id: str, uri: str | None = None) -> bool:
    """Whether ``share_runs_view`` set the experiment's view (a link to a view it lacks opens an error)."""
    return RUNS_VIEW_TAG in _mlflow().MlflowClient(tracking_uri=uri).get_experiment(experiment_id).tags


def run_url(cfg: Config, run_id: str) -> str:
    """The run's page: on the tracking server, or (local store) where ``dlforge ui`` serves it by default.

    The store this process logged to (after a fallback, the local one); credentials are never in the link.
    """
    base, uri, experiment_id = _dashboard_of(cfg, run_id)
    return f"{experiment_url(base, experiment_id)}/{run_id}"


def runs_table_url(cfg: Config, run_id: str) -> str:
    """The runs table of the run's experiment, where :func:`run_url` is served; in the headline columns
    (``share_runs_view``) once a pipeline has set them — the link ``dlforge ui`` prints."""
    base, uri, experiment_id = _dashboard_of(cfg, run_id)
    return experiment_url(base, experiment_id, view=has_runs_view(experiment_id, uri))


def _dashboard_of(cfg: Config, run_id: str) -> tuple[str, str, str]:
    """(dashboard base URL without credentials, store URI, experiment id) of a run this process logged."""
    uri = _USED_URI.get(tracking_uri(cfg)) or tracking_uri(cfg)
    server = uri.startswith(("http://", "https://"))
    experiment_id = _mlflow().MlflowClient(tracking_uri=uri).get_run(run_id).info.experiment_id
    return (redact_uri(uri) if server else LOCAL_DASHBOARD), uri, experiment_id


def run_page(run_id: str) -> str | None:
    """A link to the run's page from inside the dashboard (``#/experiments/E/runs/R``): right on any host or port.

    None when the store has no such run (a teacher checkpoint trained against another store).
    """
    try:
        experiment_id = _mlflow().MlflowClient().get_run(run_id).info.experiment_id
    except Exception:  # MlflowException: RESOURCE_DOES_NOT_EXIST; its import would pull mlflow in at module load
        return None
    return f"#/experiments/{experiment_id}/runs/{run_id}"


def version_page(name: str, version: str | int) -> str:
    """A link to a registered version's page from inside the dashboard (``#/models/NAME/versions/V``)."""
    return f"#/models/{quote(name, safe='')}/versions/{version}"


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
        print(
            f"dashboard: {experiment_url(redact_uri(uri), experiment_id, view=has_runs_view(experiment_id))}",
            flush=True,
        )
        return 0
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host]
    command += ["--port", str(port), "--workers", "1"]  # one user's dashboard: one worker is plenty
    location = _artifact_location(cfg, uri)
    if location:
        command += ["--default-artifact-root", location]
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving {host}: anyone who can reach it can read and change runs; see MLflow's auth app")
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    link = experiment_url(f"http://{shown_host}:{port}", experiment_id, view=has_runs_view(experiment_id))
    print(f"dashboard: {link}  (Ctrl-C stops it)", flush=True)
    # Its own session, stopped as one on Ctrl-C, SIGTERM or SIGHUP: the uvicorn workers it forks go with it.
    return processes.serve(command, env=ui_server_env())
