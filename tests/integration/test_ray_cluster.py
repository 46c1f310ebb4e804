"""A real two-node Ray cluster on loopback: ``dlforge tune`` joins it through ``tune.ray_address``, its two trials
run one on each node (1 CPU per node, 1 CPU per trial), and both nodes write results and checkpoints to one
``tune.storage_path`` — a local folder standing in for the shared filesystem of a real cluster.

Only what this test started is stopped: the two ``ray start --block`` process groups, then any process carrying
this cluster's auth token (``ray stop`` would end every Ray on the machine).
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import run_dlforge
from tests.servers import processes_with_env, ray_cluster, ray_env, ray_nodes

pytestmark = [pytest.mark.slow]


@pytest.mark.timeout(300)
def test_sweep_spreads_trials_over_two_nodes_and_shares_storage(tmp_path):
    token = secrets.token_hex(16)
    shared, store = tmp_path / "shared", f"sqlite:///{tmp_path / 'mlflow.db'}"
    with ray_cluster(tmp_path, token) as address:
        nodes = ray_nodes(address, ray_env(token), expect=2)
        assert len(nodes) == 2 and sum("node2" in n["resources"] for n in nodes) == 1
        args = ["tune", "model.family=mlp", "data.source=builtin:iris", "trainer.max_epochs=2", "data.batch_size=16"]
        args += ["trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "tracking.experiment=cluster"]
        args += ["tune.space={optim.lr: {grid: [0.01, 0.001]}}", "tune.search=grid", "tune.scheduler=fifo"]
        args += [f"tune.ray_address={address}", "tune.resources_per_trial.cpu=1", f"tune.storage_path={shared}"]
        args += [f"output_dir={tmp_path / 'out'}", f"tracking.uri={store}"]
        started = time.perf_counter()
        done = run_dlforge(*args, timeout=240, env=ray_env(token))
        print(f"2-trial sweep on a 2-node cluster: {time.perf_counter() - started:.1f}s")
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert processes_with_env(f"RAY_AUTH_TOKEN={token}".encode()) == []  # the cluster is gone

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["num_trials"] == 2 and summary["errored"] == []
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("cluster").experiment_id])
    trials = [r for r in runs if r.data.tags.get("dlforge.kind") == "trial"]
    assert len(trials) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["ray.node_id"] for r in trials} == {n["id"] for n in nodes}  # one trial on each node

    # shared storage: Ray's experiment and every trial's checkpoints, from both nodes, under tune.storage_path
    experiment = Path(summary["paths"]["experiment_path"])
    assert experiment.parent == shared and (experiment / "tuner.pkl").is_file()
    checkpoints = sorted(experiment.glob("trial_*/checkpoint_*/last.ckpt"))
    assert {p.parent.parent.name for p in checkpoints} == {f"trial_{t['trial_id']}" for t in summary["trials"]}
