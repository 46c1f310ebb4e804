"""Tracking end to end: ``dlforge train`` logging to a real ``mlflow server`` over HTTP (one process and DDP), to a
sqlite file with ``--resume auto``, and ``dlforge ui`` serving the store. Read back with MlflowClient."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.conftest import run_dlforge
from tests.servers import free_port, mlflow_server, stop, wait_until_up

pytestmark = pytest.mark.slow

TINY = ["trainer.max_epochs=2", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2", "data.batch_size=32"]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("server")) as url:
        yield url


def only_run(client: MlflowClient, experiment: str):
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment}"
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def artifact_paths(client: MlflowClient, run_id: str, folder: str | None = None) -> set[str]:
    paths = set()
    for item in client.list_artifacts(run_id, folder):
        paths |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return paths


@pytest.mark.timeout(300)
def test_train_over_http_logs_one_complete_run(server, cli, tmp_path):
    out = tmp_path / "out"
    args = [f"tracking.uri={server}", "tracking.experiment=http", "tracking.register=true", f"output_dir={out}"]
    started = time.perf_counter()
    code, stdout, stderr = cli("train", "model.family=mlp", "data.source=builtin:breast_cancer", *TINY, *args)
    took = time.perf_counter() - started
    assert code == 0, stderr
    client = MlflowClient(tracking_uri=server)
    run = only_run(client, "http")
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.data.params["model.family"] == "mlp" and run.data.params["trainer.max_epochs"] == "2"
    assert run.data.tags["dlforge.data_fingerprint"] and run.data.tags["dlforge.kind"] == "train"
    for key in ("train/loss", "val/loss", "val/acc"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [0, 1], key
    assert "test/acc" in run.data.metrics
    paths = artifact_paths(client, run_id)
    expected = {"config.yaml", "checkpoints/best.ckpt", "review/learning_curves.png", "review/confusion_matrix.png"}
    assert expected | {"review/classification_report.md"} <= paths, paths
    (model,) = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id='{run_id}'")
    version = client.get_model_version_by_alias("http-mlp", "candidate")
    assert version.tags["dlforge.source_run_id"] == run_id
    x = np.zeros((3, 30), dtype=np.float32)
    mlflow.set_tracking_uri(server)
    for uri in ("models:/http-mlp@candidate", model.model_uri):  # labels and probabilities, as dlforge predict
        served = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame(x))
        assert served.shape == (3, 4) and list(served.columns)[:2] == ["id", "prediction"], served.columns
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mlflow_run_id"] == run_id and summary["tracking"]["uri"] == server
    print(f"train over HTTP: {took:.1f}s for 2 tiny epochs, logging, plots, model and registry")


@pytest.mark.timeout(300)
def test_ddp_job_makes_exactly_one_run(server, tmp_path):
    ddp = ["trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu"]
    args = [f"tracking.uri={server}", "tracking.experiment=ddp", f"output_dir={tmp_path / 'out'}"]
    done = run_dlforge("train", "model.family=mlp", "data.source=builtin:iris", *TINY, *ddp, *args, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(tracking_uri=server)
    run = only_run(client, "ddp")
    assert run.info.status == "FINISHED" and run.data.tags["dlforge.world_size"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")] == [0, 1]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["mlflow_run_id"] == run.info.run_id


@pytest.mark.timeout(300)
def test_resume_auto_continues_the_same_run(cli, tmp_path):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    common = ["model.family=mlp", "data.source=builtin:iris", f"tracking.uri={store}", f"output_dir={tmp_path / 'out'}"]
    small = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "data.batch_size=16"]
    code, _, stderr = cli("train", *common, *small, "trainer.max_epochs=2")
    assert code == 0, stderr
    code, _, stderr = cli("train", *common, *small, "trainer.max_epochs=4", "--resume", "auto")
    assert code == 0, stderr
    client = MlflowClient(tracking_uri=store)
    run = only_run(client, "dlforge")
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [0, 1, 2, 3]
    assert run.data.params["trainer.max_epochs"] == "2"
    assert run.data.tags["dlforge.changed.trainer.max_epochs"] == "2 -> 4"


@pytest.mark.timeout(180)
def test_ui_serves_the_store_on_loopback_and_prints_the_runs_url(tmp_path):
    port = free_port()
    command = [sys.executable, "-m", "pipelines", "ui", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]
    command += ["--port", str(port)]
    log = tmp_path / "ui.log"
    with log.open("w") as handle:
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_up(f"http://127.0.0.1:{port}", proc)
        url = re.search(r"dashboard: (\S+)", log.read_text()).group(1)
        assert re.fullmatch(rf"http://127\.0\.0\.1:{port}/#/experiments/\d+/runs", url)
        with urllib.request.urlopen(url, timeout=10) as page:
            assert page.status == 200
        assert _listening_only_on_loopback(port)
    finally:
        stop(proc)


def _listening_only_on_loopback(port: int) -> bool:
    """Nothing answers on this machine's other addresses (when it has one)."""
    try:
        other = socket.gethostbyname(socket.gethostname())
    except OSError:
        return True
    if other.startswith("127."):
        return True
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((other, port)) != 0
