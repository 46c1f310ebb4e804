"""Beyond one machine, on loopback: multi-node DDP under torchrun, and SLURM's auto-requeue.

Multi-node: two torchrun agents ("nodes") × one process each, c10d rendezvous, gloo. Each node runs in its own
empty working directory (as separate machines would) and writes nothing there; the
output folder and the MLflow store are the shared filesystem. Every rank records the test metrics its ``train()``
returned (``tests.integration.rank_probe``), so the test can see that the reduced metrics agree across ranks.

SLURM: the environment SLURM would set for a one-task job of ``deploy/slurm/train.sbatch``. SIGUSR1 → Lightning's
SLURM handler saves ``hpc_ckpt_<n>.ckpt`` and calls ``scontrol requeue`` → the requeued job (same ``SLURM_JOB_ID``,
``--resume auto``) continues from it in the same MLflow run. ``scontrol`` is a fake on PATH that records its
arguments and then waits, as a job being requeued does until SLURM ends it; the test then ends the job with SIGKILL
(no chance to save anything else), so the requeued job can only continue from the checkpoint the handler wrote.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines import tracking
from tests.servers import free_port, stop

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")
JOB_ID = "4242"
EPOCHS = 5


def torchrun_node(port: int, cwd: Path, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """One node's agent: it joins the c10d rendezvous at 127.0.0.1:port and starts one worker process."""
    command = [str(TORCHRUN), "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d"]
    command += [f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=dlforge-test", "--local-addr=127.0.0.1"]
    command += ["--no-python", sys.executable, "-m", "tests.integration.rank_probe", *args]
    log = (cwd.parent / f"{cwd.name}.log").open("w")
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.timeout(280)
def test_two_nodes_train_one_run_and_agree_on_metrics(tmp_path, store):
    out, probes = tmp_path / "shared" / "out", tmp_path / "probes"
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


# ---------------------------------------------------------------- SLURM


def slurm_env(tmp_path: Path, restart_count: int) -> dict[str, str]:
    """A one-task batch job as ``sbatch deploy/slurm/train.sbatch`` + ``srun`` would run it."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    scontrol = fake_bin / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.calls"}\nexec sleep 120\n')
    scontrol.chmod(0o755)
    slurm = {
        "SLURM_JOB_ID": JOB_ID,
        "SLURM_JOB_NAME": "dlforge-train",  # not 'bash'/'interactive': Lightning then detects SLURM
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
        "SLURM_RESTART_COUNT": str(restart_count),
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "LOCAL_RANK", "WORLD_SIZE"))}
    return {**base, **slurm, "PATH": f"{fake_bin}:{os.environ['PATH']}"}


def train_command(tmp_path: Path) -> list[str]:
    args = ["train", "model.family=mlp", "data.source=builtin:digits", f"trainer.max_epochs={EPOCHS}"]
    args += ["data.batch_size=16", "trainer.limit_val_batches=4", "trainer.accelerator=cpu", "trainer.threads=1"]
    args += [f"output_dir={tmp_path / 'out'}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    return [sys.executable, "-m", "pipelines", *args, "tracking.experiment=slurm", "--resume", "auto"]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.timeout(240)
def test_sigusr1_requeues_and_the_requeued_job_continues_the_same_run(tmp_path, store):
    # `store`: train_command's tmp_path/mlflow.db, its tables made before the first job starts
    out, calls = tmp_path / "out", tmp_path / "scontrol.calls"
    first_log: list[str] = []
    job = subprocess.Popen(
        train_command(tmp_path),
        env=slurm_env(tmp_path, 0),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        reader = threading.Thread(target=lambda: first_log.extend(job.stdout), daemon=True)
        reader.start()
        wait_for(lambda: any(line.startswith("epoch 1/") for line in first_log), 150, "the first epoch")
        # the epoch line is printed before Lightning's checkpoint callbacks (they run last): wait for the file too
        wait_for((out / "checkpoints" / "last.ckpt").exists, 60, "the first last.ckpt")
        os.kill(job.pid, signal.SIGUSR1)  # SLURM: `#SBATCH --signal=SIGUSR1@90`, 90 s before the time limit
        wait_for(calls.exists, 60, "scontrol requeue")
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # the requeue ends the job: nothing more is saved
        job.wait()
    assert calls.read_text().split() == ["requeue", JOB_ID], "".join(first_log)[-3000:]
    (hpc,) = out.glob("hpc_ckpt_*.ckpt")
    last = out / "checkpoints" / "last.ckpt"
    assert hpc.stat().st_mtime > last.stat().st_mtime  # what --resume auto will pick
    run_id = tracking.run_id_from_checkpoint(hpc)
    assert run_id

    requeued = subprocess.run(
        train_command(tmp_path), env=slurm_env(tmp_path, 1), capture_output=True, text=True, timeout=180
    )
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert "epoch 1/" not in requeued.stdout  # it went on from the checkpoint, not from the start
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mlflow_run_id"] == run_id

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("slurm").experiment_id])
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.tags["dlforge.resumed"] == "true"
    assert [m.step for m in client.get_metric_history(run_id, "val/loss")] == list(range(EPOCHS))
    assert "test/acc" in run.data.metrics
