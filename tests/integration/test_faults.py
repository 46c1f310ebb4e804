"""Faults from outside, with real processes: kill -9 and resume, SIGTERM, 8 writers on one SQLite store, a trial
that runs past its timeout. Tiny data (digits, a small MLP), hard timeouts; MLflow in a temp sqlite file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from pipelines.config import load_config
from pipelines.train import load_data

pytestmark = [pytest.mark.slow]


@pytest.fixture(autouse=True)
def _store_made(store):
    """Every test's ``tmp_path/mlflow.db`` starts with its tables made: migrating it takes seconds of each test.
    The eight-writers test logs to a new store of its own (``shared.db``): making one is what it tries."""


EPOCHS = 6


def train_args(tmp_path: Path, name: str) -> list[str]:
    return [
        "train",
        "data.source=builtin:digits",
        "model.family=mlp",
        "model.mlp.hidden=[64]",
        "data.batch_size=64",
        f"trainer.max_epochs={EPOCHS}",
        "trainer.threads=1",
        f"output_dir={tmp_path / name}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"tracking.experiment={name}",
    ]


def start(args: list[str]) -> subprocess.Popen:
    """``dlforge`` as a child in its own process group (what a scheduler kills), stdout as plain epoch lines."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def wait_for_epoch(proc: subprocess.Popen, epoch: int) -> None:
    """Read epoch lines until ``epoch``'s line. Its checkpoint may still be in the writing (ModelCheckpoint's hook
    runs after the line's), so epoch ``epoch - 1`` is the last one known to be on disk."""
    for line in proc.stdout:
        if line.startswith(f"epoch {epoch}/"):
            return
    raise AssertionError(f"the job ended before epoch {epoch}: {proc.wait()} {proc.stderr.read()[-2000:]}")


def only_run(tmp_path: Path, experiment: str):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, run


@pytest.mark.timeout(300)
def test_kill_9_then_resume_auto_continues_the_same_run_with_no_gap_and_the_same_score(tmp_path):
    baseline = start(train_args(tmp_path, "whole"))  # uninterrupted, same seed, alongside
    victim = start(train_args(tmp_path, "killed"))
    wait_for_epoch(victim, 3)
    os.killpg(victim.pid, signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] >= 1  # epochs 1 and 2 (at least) checkpointed (0-based)

    resumed = start([*train_args(tmp_path, "killed"), "--resume", "auto"])
    out, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err[-3000:]
    out, err = baseline.communicate(timeout=240)
    assert baseline.returncode == 0, err[-3000:]

    client, run = only_run(tmp_path, "killed")  # one run: the resumed job continued it
    assert run.info.status == "FINISHED" and run.data.tags.get("dlforge.resumed") == "true"
    for metric in ("val/acc", "train/loss", "epoch"):
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, metric))
        assert steps == list(range(EPOCHS)), (metric, steps)  # no gap, no duplicate
    _, whole = only_run(tmp_path, "whole")
    killed_acc, whole_acc = run.data.metrics["test/acc"], whole.data.metrics["test/acc"]
    print(f"test/acc: killed at epoch 3 and resumed {killed_acc:.4f}, uninterrupted {whole_acc:.4f}")
    assert abs(killed_acc - whole_acc) <= 0.03, (killed_acc, whole_acc)  # within noise: ±3 points
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert summary["mlflow_run_id"] == run.info.run_id


@pytest.mark.timeout(180)
def test_sigterm_saves_a_checkpoint_marks_the_run_killed_and_exits_143(tmp_path):
    job = start(train_args(tmp_path, "preempted"))
    wait_for_epoch(job, 1)
    sent = time.time()
    job.send_signal(signal.SIGTERM)  # what SLURM sends a preempted job step
    _, err = job.communicate(timeout=120)
    assert job.returncode == 143, err[-3000:]
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    last = tmp_path / "preempted" / "checkpoints" / "last.ckpt"
    assert last.stat().st_mtime >= sent  # written at the signal, not the epoch-1 file
    saved = torch.load(last, weights_only=True)
    _, run = only_run(tmp_path, "preempted")
    assert run.info.status == "KILLED"
    assert saved["dlforge_tracking"]["run_id"] == run.info.run_id  # a requeued job continues this run


WRITERS = textwrap.dedent(
    """
    import multiprocessing as mp, sys
    from pipelines import tracking
    from pipelines.config import build_config

    URI, STEPS = sys.argv[1], int(sys.argv[2])

    def worker(args):
        i, barrier = args
        cfg = build_config({}, {"tracking.uri": URI, "output_dir": f"/tmp/unused-{i}", "seed": i})
        barrier.wait()  # all eight open the new store and log at the same moment
        with tracking.job_run(cfg, kind="trial", name=f"writer {i}") as run_id:
            for step in range(STEPS):
                tracking.log_metrics(run_id, {f"val/m{k}": step + k / 10 for k in range(5)}, step=step)
        return run_id

    if __name__ == "__main__":
        ctx = mp.get_context("fork")  # mlflow is imported once, in the parent; the store is opened by the children
        with ctx.Manager() as manager:
            barrier = manager.Barrier(8)
            with ctx.Pool(8) as pool:
                print("\\n".join(pool.map(worker, [(i, barrier) for i in range(8)])))
    """
)


@pytest.mark.timeout(240)
def test_eight_processes_logging_at_once_to_a_new_sqlite_store_lose_nothing(tmp_path):
    script, uri, steps = tmp_path / "writers.py", f"sqlite:///{tmp_path / 'shared.db'}", 20
    script.write_text(WRITERS)
    done = subprocess.run(
        [sys.executable, str(script), uri, str(steps)], capture_output=True, text=True, timeout=220, cwd=os.getcwd()
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "database is locked" not in done.stderr
    run_ids = done.stdout.split()
    assert len(set(run_ids)) == 8
    client = MlflowClient(tracking_uri=uri)
    for run_id in run_ids:
        assert client.get_run(run_id).info.status == "FINISHED"
        for k in range(5):
            history = client.get_metric_history(run_id, f"val/m{k}")
            assert sorted(m.step for m in history) == list(range(steps))  # no lost and no doubled metric


@pytest.mark.timeout(240)
def test_a_trial_running_past_trial_timeout_is_stopped_inside_its_epoch_and_recorded(tmp_path, cli):
    ray = pytest.importorskip("ray")
    overrides = [
        "data.source=builtin:digits",
        "model.family=cnn",
        "model.cnn.channels=[32,64]",
        "data.batch_size=1",  # one epoch is ~1,150 steps: seconds, far past the limit
        "trainer.max_epochs=500",
    ]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        code, out, err = cli(
            "tune",
            *overrides,
            f"output_dir={tmp_path / 'sweep'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "tracking.experiment=timeout",
            "tune.space={optim.lr: {choice: [0.001]}}",
            "tune.num_samples=1",
            "tune.scheduler=fifo",
            "tune.trial_timeout_s=1",
            "tune.resources_per_trial.cpu=1",
        )
    finally:
        ray.shutdown()
    assert code == 0, err
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    (trial,) = summary["trials"]
    assert trial["status"] == "stopped" and trial["epochs"] == 1  # the partial first epoch, validated and reported
    assert summary["stopped_early"] == [trial["trial_id"]] and summary["errored"] == []
    (last,) = (tmp_path / "sweep").rglob("checkpoint_*/last.ckpt")  # what the trial reported to Tune
    steps_per_epoch = len(load_data(load_config(None, overrides)).train[0])
    assert 0 < torch.load(last, weights_only=True)["global_step"] < steps_per_epoch  # stopped inside the epoch
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("timeout").experiment_id])
    child = next(r for r in runs if r.data.tags.get("dlforge.kind") == "trial")
    assert child.info.status == "FINISHED"  # ended, not left RUNNING
    assert len(client.get_metric_history(child.info.run_id, "val/acc")) == 1


# ---------------------------------------------------------------- checkpoint and history integrity

SAME_SEED_EPOCHS = 8


def seeded_args(tmp_path: Path, name: str, output: Path | None = None) -> list[str]:
    """A fit slow enough to kill mid-run (digits, batch 16: ~0.3 s an epoch), registering its model."""
    return [
        "train",
        "data.source=builtin:digits",
        "model.family=mlp",
        "model.mlp.hidden=[64]",
        "data.batch_size=16",
        f"trainer.max_epochs={SAME_SEED_EPOCHS}",
        "trainer.threads=1",
        "seed=7",
        "tracking.register=true",
        f"output_dir={output or tmp_path / name}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"tracking.experiment={name}",
    ]


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


def history(client: MlflowClient, run_id: str, prefixes: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
    keys = [k for k in client.get_run(run_id).data.metrics if k.startswith(prefixes)]
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


@pytest.mark.timeout(420)
def test_kill_9_after_epoch_3_and_resume_repeats_the_uninterrupted_history_step_for_step(tmp_path):
    baseline = start(seeded_args(tmp_path, "whole"))
    finish(baseline)
    victim = start(seeded_args(tmp_path, "killed"))
    wait_for_epoch(victim, 3)
    os.killpg(victim.pid, signal.SIGKILL)  # anywhere after epoch 3's line: its checkpoint may be half done
    assert victim.wait(timeout=30) == -signal.SIGKILL
    last = torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] >= 1
    finish(start([*seeded_args(tmp_path, "killed"), "--resume", "auto"]))

    client, run = only_run(tmp_path, "killed")
    _, whole = only_run(tmp_path, "whole")
    assert run.info.status == "FINISHED" and run.data.tags.get("dlforge.resumed") == "true"
    resumed_history = history(client, run.info.run_id, ("train/", "val/", "epoch", "test/"))
    whole_history = history(client, whole.info.run_id, ("train/", "val/", "epoch", "test/"))
    assert resumed_history.keys() == whole_history.keys()
    for key, steps in whole_history.items():
        assert resumed_history[key] == steps, key  # same steps, same values: no epoch lost, doubled or different
    assert len(resumed_history["test/acc"]) == 1
    versions = client.search_model_versions(f"run_id='{run.info.run_id}'")
    assert [str(v.version) for v in versions] == ["1"]

    finish(start([*seeded_args(tmp_path, "killed"), "--resume", "auto"]))  # the repro: resume a finished run
    client, run = only_run(tmp_path, "killed")
    assert history(client, run.info.run_id, ("train/", "val/", "epoch", "test/")) == resumed_history
    assert len(client.search_model_versions(f"run_id='{run.info.run_id}'")) == 1


FULL_DISK = textwrap.dedent(
    """
    set -e
    mount -t tmpfs -o size=2m tmpfs "$DISK"
    "$@" > "$DISK/../train.out" 2> "$DISK/../train.err" &
    job=$!
    until grep -q '^epoch 2/' "$DISK/../train.out" 2>/dev/null; do
        kill -0 $job 2>/dev/null || break
        sleep 0.05
    done
    dd if=/dev/zero of="$DISK/filler" bs=4k 2>/dev/null || true  # the disk is now full
    set +e
    wait $job
    echo "exit $?" > "$DISK/../train.rc"
    cp -a "$DISK/out/checkpoints" "$DISK/../kept"
    """
)


def can_mount_tmpfs() -> bool:
    probe = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", "mount -t tmpfs tmpfs /mnt"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.timeout(300)
def test_a_full_disk_leaves_last_ckpt_whole_fails_the_run_and_resume_continues(tmp_path):
    """A real full disk: a 2 MiB tmpfs (in a user+mount namespace, no root needed) holds output_dir; the store is
    elsewhere, as on a cluster. Lightning's writer used to copy its /tmp file into last.ckpt in place, cutting it."""
    if not can_mount_tmpfs():
        pytest.skip("unprivileged user namespaces are off here: cannot mount a small tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = tmp_path / "full_disk.sh"
    script.write_text(FULL_DISK)
    args = seeded_args(tmp_path, "full", output=disk / "out")
    command = [
        "unshare",
        "--user",
        "--map-root-user",
        "--mount",
        "bash",
        str(script),
        sys.executable,
        "-m",
        "pipelines",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "DISK": str(disk)}
    subprocess.run([*command, *args], env=env, timeout=240, check=True)

    assert (tmp_path / "train.rc").read_text().strip() == "exit 1", (tmp_path / "train.err").read_text()[-3000:]
    err = (tmp_path / "train.err").read_text()
    assert "Traceback" not in err and "could not write checkpoint" in err and "disk is full" in err, err[-3000:]
    kept = tmp_path / "kept"
    assert sorted(p.name for p in kept.iterdir()) == ["best.ckpt", "last.ckpt"]  # no temp file left behind
    saved = torch.load(kept / "last.ckpt", weights_only=True)  # whole: it loads
    assert 0 <= saved["epoch"] < SAME_SEED_EPOCHS - 1
    client, run = only_run(tmp_path, "full")
    assert run.info.status == "FAILED"

    (disk / "out").mkdir()  # space again (the tmpfs went with its namespace): continue from the kept files
    os.rename(kept, disk / "out" / "checkpoints")
    finish(start([*args, "--resume", "auto"]))
    client, run = only_run(tmp_path, "full")
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/acc"))
    assert steps == list(range(SAME_SEED_EPOCHS))
