"""The team tracking server of ``deploy/mlflow/``: ``mlflow server`` over a real PostgreSQL (Debian's package, a
throwaway cluster on a free loopback port) with a proxied artifact root; three ``dlforge train`` jobs log to it
over HTTP at the same time, and everything is read back with MlflowClient (and, to be sure, from PostgreSQL)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from tests.integration.test_tracking_server import artifact_paths
from tests.servers import mlflow_server, postgres_cluster, postgres_missing

pytestmark = [pytest.mark.slow]

EPOCHS = 2
JOBS = [("mlp", "builtin:iris"), ("mlp", "builtin:wine"), ("cnn", "builtin:digits")]


@pytest.fixture(scope="module")
def team_server(tmp_path_factory):
    reason = postgres_missing()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("team")
    with postgres_cluster("mlflow") as database, mlflow_server(root, backend_store_uri=database) as url:
        yield url, database, root


@pytest.mark.timeout(300)
def test_three_concurrent_jobs_log_to_a_postgres_backed_server(team_server, tmp_path):
    url, database, root = team_server
    tiny = [f"trainer.max_epochs={EPOCHS}", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2"]
    tiny += ["data.batch_size=16", "model.cnn.channels=[4,8]", "model.cnn.hidden=16", "trainer.threads=1"]
    started = time.perf_counter()
    jobs = [
        subprocess.Popen(
            [sys.executable, "-m", "pipelines", "train", f"model.family={family}", f"data.source={source}", *tiny]
            + [f"tracking.uri={url}", "tracking.experiment=team", f"output_dir={tmp_path / str(i)}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i, (family, source) in enumerate(JOBS)
    ]
    try:
        outputs = [job.communicate(timeout=240)[0] for job in jobs]
    finally:
        for job in jobs:
            if job.poll() is None:
                job.kill()
                job.wait()
    assert [job.returncode for job in jobs] == [0, 0, 0], "\n\n".join(o[-2000:] for o in outputs)
    print(f"3 concurrent jobs over HTTP into PostgreSQL: {time.perf_counter() - started:.1f}s")

    client = MlflowClient(tracking_uri=url)
    runs = client.search_runs([client.get_experiment_by_name("team").experiment_id])
    assert sorted(r.data.tags["dlforge.dataset"] for r in runs) == sorted(s.split(":")[1] for _, s in JOBS)
    for run in runs:
        run_id = run.info.run_id
        assert run.info.status == "FINISHED"
        for key in ("train/loss", "val/loss", "val/acc"):
            assert [m.step for m in client.get_metric_history(run_id, key)] == list(range(EPOCHS)), key
        assert {"test/acc", "test/loss"} <= run.data.metrics.keys()
        assert {"config.yaml", "checkpoints/best.ckpt", "review/learning_curves.png"} <= artifact_paths(client, run_id)
    assert any((root / "artifacts").rglob("best.ckpt"))  # the server's artifact root holds the files

    import psycopg

    with psycopg.connect(database) as db:
        (count,) = db.execute("SELECT count(*) FROM runs WHERE status = 'FINISHED'").fetchone()
    assert count == len(JOBS)
