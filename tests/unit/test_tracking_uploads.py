"""End-of-job artifacts are uploaded in the background: none is lost, and a failed upload fails the run."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines import tracking
from pipelines.config import build_config
from pipelines.train_stage import train_stage


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)


def _artifact_paths(client: MlflowClient, run_id: str, folder: str | None = None) -> set[str]:
    paths = set()
    for item in client.list_artifacts(run_id, folder):
        paths |= _artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return paths


@pytest.mark.timeout(180)
def test_every_end_of_job_artifact_is_in_the_run_when_the_job_returns(store, tmp_path):
    cfg = build_config(
        {},
        {
            "tracking.uri": store,
            "output_dir": str(tmp_path / "out"),
            "model.family": "mlp",
            "data.source": "builtin:iris",
            "trainer.max_epochs": 2,
            "trainer.threads": 1,
        },
    )
    done = train_stage(cfg)
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(done.result.run_id)
    assert run.info.status == "FINISHED"
    expected = {
        "config.yaml",
        "checkpoints/best.ckpt",
        "review/learning_curves.png",
        "review/confusion_matrix.png",
        "review/classification_report.md",
        "review/classification_report.json",
    }
    assert expected <= _artifact_paths(client, run.info.run_id)
    stored = Path(run.info.artifact_uri.removeprefix("file://")) / "checkpoints" / "best.ckpt"
    assert stored.read_bytes() == Path(done.result.best_checkpoint).read_bytes()  # the whole file, not a part
    # Not registered: no MLflow model flavour is exported for this job.
    assert done.logged.model_uri is None
    assert not client.search_logged_models([run.info.experiment_id])


def test_a_failed_upload_fails_the_run_that_queued_it(store, tmp_path):
    cfg = build_config({}, {"tracking.uri": store, "output_dir": str(tmp_path / "out")})
    run = tracking.job_run(cfg, kind="train")
    with pytest.raises(tracking.TrackingError, match="could not upload 1 artifact"), run as run_id:
        tracking.log_artifact(run_id, tmp_path / "missing.png", "review")
    client = MlflowClient(tracking_uri=store)
    assert client.get_run(run_id).info.status == "FAILED"
