"""MLflow tracking: exactly one run per job, even under DDP, retries and resumes. The only package importing mlflow.

Every call is a no-op returning ``None`` when ``tracking.enabled=false``, and mlflow is then never imported. The
package imports no stage. Its rooms:

- ``store``: the store's URI (``tracking.uri``, default ``sqlite:///<project>/mlruns/mlflow.db``), secrets kept out
  of params, tags and printed URIs, connecting (first use of a sqlite file locked), batched logging helpers.
- ``runs``: ``job_run`` — one run per job, created on global rank 0 (or opened on a thread while the job starts:
  ``PendingRun``), ended FINISHED, FAILED or KILLED; owner tags and closing of orphaned runs; run names and tags;
  ``lightning_callbacks``, ``fit_history`` and ``run_id_from_checkpoint``.
- ``callback``: ``TrackingCallback``, the Lightning callback sending each epoch's metrics (``step = epoch``, 0-based)
  from a background thread and keeping unsent epochs in each checkpoint.
- ``registry``: log models (``pt2``, single-file ONNX), register versions, aliases, promotion, download.
- ``datasets``: the data a training run used, as MLflow dataset inputs (``log_dataset``).
- ``ui``: the dashboard (``dlforge ui``).

``from pipelines import tracking`` then ``tracking.<name>`` reaches the names below; new code may import from the
room itself.
"""

from pipelines.tracking.datasets import log_dataset
from pipelines.tracking.registry import (
    CANDIDATE,
    ModelVersion,
    describe_registered_model,
    download_onnx,
    download_run_file,
    known_models,
    log_model,
    log_onnx_model,
    log_served_model,
    model_version,
    promote_best,
    promote_version,
    register_model,
    registered_model_name,
    resolve_checkpoint,
    set_alias,
    tag_model_version,
)
from pipelines.tracking.runs import (
    CHECKPOINT_KEY,
    ORPHAN_TAG,
    PendingRun,
    close_orphans,
    close_unfinished_children,
    dataset_name,
    default_run_name,
    fit_history,
    global_rank,
    job_run,
    lightning_callbacks,
    run_id_from_checkpoint,
)
from pipelines.tracking.store import (
    TrackingError,
    connect,
    filter_quote,
    log_artifact,
    log_artifacts,
    log_metrics,
    looks_secret,
    mask_params,
    metric_history,
    redact_argv,
    redact_uri,
    redacted_config,
    run_tag,
    set_description,
    set_tags,
    set_tags_safely,
    summary_fields,
    tracking_uri,
    wait_for_uploads,
)
from pipelines.tracking.ui import (
    LOCAL_DASHBOARD,
    experiment_url,
    has_runs_view,
    run_page,
    run_url,
    runs_table_url,
    serve_ui,
    share_runs_view,
    ui_server_env,
    version_page,
)

__all__ = [
    "CANDIDATE",
    "CHECKPOINT_KEY",
    "LOCAL_DASHBOARD",
    "ModelVersion",
    "ORPHAN_TAG",
    "PendingRun",
    "TrackingError",
    "close_orphans",
    "close_unfinished_children",
    "connect",
    "dataset_name",
    "default_run_name",
    "describe_registered_model",
    "download_onnx",
    "experiment_url",
    "filter_quote",
    "fit_history",
    "global_rank",
    "has_runs_view",
    "job_run",
    "known_models",
    "lightning_callbacks",
    "log_artifact",
    "log_artifacts",
    "log_dataset",
    "log_metrics",
    "log_model",
    "log_onnx_model",
    "log_served_model",
    "looks_secret",
    "mask_params",
    "metric_history",
    "model_version",
    "promote_best",
    "promote_version",
    "redact_argv",
    "redact_uri",
    "redacted_config",
    "register_model",
    "registered_model_name",
    "download_run_file",
    "resolve_checkpoint",
    "run_id_from_checkpoint",
    "run_page",
    "runs_table_url",
    "run_tag",
    "run_url",
    "serve_ui",
    "set_alias",
    "set_description",
    "set_tags",
    "set_tags_safely",
    "share_runs_view",
    "summary_fields",
    "tag_model_version",
    "tracking_uri",
    "ui_server_env",
    "version_page",
    "wait_for_uploads",
]
