"""SLURM auto-requeue, with the environment SLURM would set: SIGUSR1 → hpc checkpoint + ``scontrol requeue`` →
the requeued job (same ``SLURM_JOB_ID``) resumes from it into the same MLflow run.

``scontrol`` is a fake on PATH that records its arguments and then waits, as a job being requeued does until SLURM
kills it; the test then kills the job with SIGKILL (no chance to save anything else), so the requeued job can only
continue from the checkpoint Lightning's SLURM handler wrote. The sbatch template is ``deploy/slurm/train.sbatch``.
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

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
JOB_ID = "4242"
EPOCHS = 5


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
def test_sigusr1_requeues_and_the_requeued_job_continues_the_same_run(tmp_path):
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
