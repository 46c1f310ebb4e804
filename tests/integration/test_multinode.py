"""Multi-node DDP on loopback: two torchrun agents ("nodes") × one process each, c10d rendezvous, gloo.

Each node runs in its own empty working directory (as separate machines would) and writes nothing there; the
output folder and the MLflow store are the shared filesystem. Every rank records the test metrics its ``train()``
returned (``tests.integration.rank_probe``), so the test can see that the reduced metrics agree across ranks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.servers import free_port, stop

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def torchrun_node(port: int, cwd: Path, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """One node's agent: it joins the c10d rendezvous at 127.0.0.1:port and starts one worker process."""
    command = [str(TORCHRUN), "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d"]
    command += [f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=dlforge-test", "--local-addr=127.0.0.1"]
    command += ["--no-python", sys.executable, "-m", "tests.integration.rank_probe", *args]
    log = (cwd.parent / f"{cwd.name}.log").open("w")
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.timeout(280)
def test_two_nodes_train_one_run_and_agree_on_metrics(tmp_path):
    out, probes, store = tmp_path / "shared" / "out", tmp_path / "probes", f"sqlite:///{tmp_path / 'mlflow.db'}"
    probes.mkdir()
    args = ["train", "model.family=mlp", "data.source=builtin:iris", "trainer.max_epochs=2", "data.batch_size=16"]
    args += ["trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "tracking.experiment=multinode"]
    args += ["trainer.num_nodes=2", "trainer.devices=1", "trainer.strategy=ddp", "trainer.accelerator=cpu"]
    args += [f"output_dir={out}", f"tracking.uri={store}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DLFORGE_RANK_PROBE": str(probes), "GLOO_SOCKET_IFNAME": "lo"}
    env.pop("RANK", None)
    port = free_port()
    nodes = [tmp_path / f"node{i}" for i in range(2)]
    started = time.perf_counter()
    procs = []
    try:
        for node in nodes:
            node.mkdir()
            procs.append(torchrun_node(port, node, args, env))
        codes = [proc.wait(timeout=250) for proc in procs]
    finally:
        for proc in procs:
            stop(proc)
    logs = [(tmp_path / f"{node.name}.log").read_text() for node in nodes]
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    print(f"2 nodes × 1 process, 2 epochs: {time.perf_counter() - started:.1f}s")

    ranks = [json.loads((probes / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"], r["is_global_zero"]) for r in ranks] == [(0, 2, True), (1, 2, False)]
    assert ranks[0]["metrics"].keys() >= {"test/acc", "test/loss"}
    assert ranks[0]["metrics"] == pytest.approx(ranks[1]["metrics"], abs=1e-6)  # reduced over both ranks

    # only global rank 0 wrote: one summary, the checkpoints, nothing in either node's working directory
    assert sum(log.count("summary.json") for log in logs) == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert [list(node.iterdir()) for node in nodes] == [[], []]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"] == pytest.approx(ranks[0]["metrics"])
    assert summary["config"]["trainer"]["num_nodes"] == 2

    client = MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("multinode").experiment_id])
    assert run.info.run_id == summary["mlflow_run_id"] == ranks[0]["run_id"]
    assert run.info.status == "FINISHED" and run.data.tags["dlforge.world_size"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")] == [0, 1]
    assert run.data.metrics["test/acc"] == pytest.approx(ranks[1]["metrics"]["test/acc"])
