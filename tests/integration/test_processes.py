"""Processes, locks and run statuses with the real commands: ``dlforge run`` killed by its PID, two jobs on one
output_dir, kill -9 before the first checkpoint, ``dlforge ui`` and ``dlforge tune`` stopped with SIGTERM.

Every job runs in its own session (so a failing test still ends everything it started, by process group); the
faults are sent to single PIDs, as the OOM killer, ``kill PID`` or a service manager does. MLflow in a temp sqlite.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from tests.servers import free_port, wait_until_up

pytestmark = [pytest.mark.slow]


@pytest.fixture(autouse=True)
def _store_made(store):
    """Every test's store, ``tmp_path/mlflow.db``, starts with its tables made: a job that made them would spend
    seconds on migrations before its fault comes (faults to a store being made are test_faults' business)."""


def common(tmp_path: Path, name: str, epochs: int = 400, output: str | None = None) -> list[str]:
    """A small MLP on digits in experiment ``name``; many epochs, so a job is still training when the fault comes."""
    return [
        "data.source=builtin:digits",
        "model.family=mlp",
        "model.mlp.hidden=[32]",
        f"trainer.max_epochs={epochs}",
        "trainer.threads=1",
        f"output_dir={tmp_path / (output or name)}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"tracking.experiment={name}",
    ]


@contextlib.contextmanager
def dlforge(*args: str) -> Iterator[subprocess.Popen]:
    """``dlforge ARGS`` in a new session, stdout+stderr as lines; its whole group is killed afterwards, whatever
    happened (the test's own safety net: the faults below hit single PIDs)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def read_until(proc: subprocess.Popen, text: str) -> str:
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"the job ended before printing {text!r}: {proc.wait()} {''.join(seen)[-3000:]}")


def wait_for_trial_epochs(tmp_path: Path, name: str, epochs: int = 2, timeout: float = 240) -> None:
    """Until a trial of experiment ``name`` has logged ``epochs`` epochs (off a terminal, a sweep prints a line per
    finished trial only)."""
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = client.get_experiment_by_name(name)
        trials = client.search_runs([found.experiment_id], "tags.`dlforge.kind` = 'trial'") if found else []
        if any(len(client.get_metric_history(t.info.run_id, "train/loss")) >= epochs for t in trials):
            return
        time.sleep(1)
    raise AssertionError(f"no trial of {name} logged {epochs} epochs in {timeout:.0f} s")


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def survivors(processes: list[psutil.Process], seconds: float) -> list[str]:
    """Those of ``processes`` still running after ``seconds`` (zombies count as gone)."""
    deadline = time.monotonic() + seconds
    while True:
        alive = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            return [f"{p.pid} {' '.join(p.cmdline())[:200]}" for p in alive if p.is_running()]
        time.sleep(0.2)


def runs(tmp_path: Path, experiment: str) -> dict[str, str]:
    """Run name → status in ``experiment``."""
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    return {r.info.run_name: r.info.status for r in client.search_runs([found.experiment_id])} if found else {}


def wait_for_run(tmp_path: Path, experiment: str, prefix: str, timeout: float = 120) -> None:
    """Block until a run whose name starts with ``prefix`` exists in ``experiment``."""
    deadline = time.monotonic() + timeout
    while not any(name.startswith(prefix) for name in runs(tmp_path, experiment)):
        assert time.monotonic() < deadline, f"no {prefix}* run in {experiment} after {timeout:.0f} s"
        time.sleep(0.2)


def run_command(tmp_path: Path, name: str) -> list[str]:
    return ["run", "tune.enabled=false", *common(tmp_path, name)]


@pytest.mark.timeout(240)
def test_kill_9_of_dlforge_run_leaves_no_training_child_and_the_next_job_closes_its_run(tmp_path):
    with dlforge(*run_command(tmp_path, "killed")) as job:
        read_until(job, "epoch 2/")  # the train stage's child is training
        children = descendants(job.pid)
        assert any("train" in p.cmdline() for p in children), [p.cmdline() for p in children]
        # The child's run opens beside its fit, closing the runs of dead processes as it opens: wait for it, so
        # that the pipeline run is left for the next job to close, as after a kill -9 of a job with no child.
        wait_for_run(tmp_path, "killed", "mlp")
        os.kill(job.pid, signal.SIGKILL)  # the parent only, as the OOM killer does
        assert job.wait(timeout=30) == -signal.SIGKILL
        assert survivors(children, 30) == []
    statuses = runs(tmp_path, "killed")
    assert statuses["pipeline mlp digits"] == "RUNNING"  # killed outright: nothing could close it
    assert "RUNNING" not in [s for name, s in statuses.items() if name.startswith("mlp")]  # the child closed its own

    next_job = subprocess.run(
        [sys.executable, "-m", "pipelines", "train", *common(tmp_path, "killed", epochs=1, output="next")],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert next_job.returncode == 0, next_job.stderr[-3000:]
    assert runs(tmp_path, "killed")["pipeline mlp digits"] == "KILLED"


@pytest.mark.timeout(240)
def test_kill_9_of_ddp_rank_0_leaves_no_other_rank_running(tmp_path):
    # A guard more than a regression test: gloo also ends a rank whose peer vanished mid-collective; the
    # parent-death signal makes that not depend on where the rank is (data loading, checkpointing, a hang).
    ddp = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]
    with dlforge("train", *common(tmp_path, "ddp"), *ddp) as rank0:
        read_until(rank0, "epoch 1/")
        ranks = descendants(rank0.pid)  # the rank Lightning re-launched (and whatever it started)
        assert any("train" in p.cmdline() for p in ranks), [p.cmdline() for p in ranks]
        os.kill(rank0.pid, signal.SIGKILL)
        rank0.wait(timeout=30)
        assert survivors(ranks, 30) == []


def written_files(folder: Path) -> list[str]:
    """The files in ``folder``, checkpoints aside (the job writes those every epoch)."""
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and p.parent.name != "checkpoints")


@pytest.mark.timeout(300)
def test_a_second_job_is_refused_then_sigterm_to_dlforge_run_alone_reaches_the_child_exits_143_and_closes_both_runs(
    tmp_path,
):
    """One training job takes both: two jobs on its output_dir are refused naming its pid (it goes on, nothing of
    theirs is written), then ``kill PID`` of its parent ends it cleanly."""
    with dlforge(*run_command(tmp_path, "stopped")) as job:
        read_until(job, "epoch 1/")
        wait_for_run(tmp_path, "stopped", "mlp")  # the child's run opens beside its fit: counted below
        before = written_files(tmp_path / "stopped")
        for command in (run_command(tmp_path, "stopped"), ["train", *common(tmp_path, "stopped")]):
            second = subprocess.run(
                [sys.executable, "-m", "pipelines", *command], capture_output=True, text=True, timeout=120
            )
            assert second.returncode == 2, second.stderr[-3000:]
            assert second.stdout == "" and second.stderr.count("\n") == 1, second.stderr
            assert f"pid {job.pid} " in second.stderr
        assert job.poll() is None  # the first job goes on
        assert written_files(tmp_path / "stopped") == before
        assert len(runs(tmp_path, "stopped")) == 2  # the job's pipeline and train runs; none from the refused ones

        read_until(job, "epoch 2/")  # still training after the refusals
        children = descendants(job.pid)
        job.send_signal(signal.SIGTERM)  # `kill PID`: the parent only
        out = job.communicate(timeout=120)[0]
        assert job.returncode == 143, out[-3000:]
        assert survivors(children, 5) == []  # waited for: gone before the parent exited
    assert "SIGTERM: saved" in out  # the child got it and saved last.ckpt
    statuses = runs(tmp_path, "stopped")
    assert len(statuses) == 2 and set(statuses.values()) == {"KILLED"}, statuses


@pytest.mark.timeout(240)
def test_kill_9_before_the_first_checkpoint_leaves_a_run_the_next_job_closes_as_killed(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    # a first epoch of seconds (300 steps of a wide net), far longer than the run takes to open beside it
    args = ["train", *common(tmp_path, "early"), "data.batch_size=4", "model.mlp.hidden=[4096,4096]"]
    with dlforge(*args) as job:
        deadline = time.monotonic() + 120
        while not runs(tmp_path, "early") and time.monotonic() < deadline:
            time.sleep(0.2)
        os.kill(job.pid, signal.SIGKILL)
        job.wait(timeout=30)
    assert not (tmp_path / "early" / "checkpoints" / "last.ckpt").exists()
    (orphan,) = client.search_runs([client.get_experiment_by_name("early").experiment_id])
    assert orphan.info.status == "RUNNING"

    resumed = subprocess.run(
        [sys.executable, "-m", "pipelines", "train", *common(tmp_path, "early", epochs=1), "--resume", "auto"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    closed = client.get_run(orphan.info.run_id)
    assert closed.info.status == "KILLED" and "ended without closing it" in closed.data.tags["dlforge.closed_as_orphan"]


def listening(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
            return True
    except OSError:
        return False


@pytest.mark.timeout(180)
def test_dlforge_ui_stopped_with_sigterm_leaves_no_server_process_listening(tmp_path):
    port = free_port()
    with dlforge("ui", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "--port", str(port)) as ui:
        wait_until_up(f"http://127.0.0.1:{port}", ui)
        server = descendants(ui.pid)
        assert server, "no server process started"
        ui.send_signal(signal.SIGTERM)  # the ui's PID only, as systemd or `kill` does
        ui.wait(timeout=60)
        assert survivors(server, 10) == []
        assert not listening(port)
        assert ui.returncode == 143


@pytest.mark.timeout(360)
def test_sigterm_to_dlforge_tune_exits_143_and_leaves_no_run_running(tmp_path):
    args = [
        "tune",
        *common(tmp_path, "sweep", epochs=200),
        "tune.space={optim.lr: {choice: [0.001]}}",
        "tune.num_samples=1",
        "tune.scheduler=fifo",
        "tune.resources_per_trial.cpu=1",
    ]
    with dlforge(*args) as job:
        wait_for_trial_epochs(tmp_path, "sweep")
        job.send_signal(signal.SIGTERM)
        out = job.communicate(timeout=120)[0]
    assert job.returncode == 143, out[-3000:]
    assert "stack trace" not in out.lower() and "Traceback" not in out
    statuses = runs(tmp_path, "sweep")
    assert len(statuses) == 2 and set(statuses.values()) == {"KILLED"}, statuses  # the sweep and its trial


def sweep_args(tmp_path: Path, name: str, *extra: str) -> list[str]:
    return [
        "tune",
        *common(tmp_path, name, epochs=200),
        "tune.space={optim.lr: {choice: [0.001]}}",
        "tune.num_samples=1",
        "tune.scheduler=fifo",
        "tune.resources_per_trial.cpu=1",
        *extra,
    ]


@pytest.mark.timeout(360)
def test_a_trial_stopped_by_the_time_budget_leaves_no_run_running(tmp_path):
    with dlforge(*sweep_args(tmp_path, "budget", "tune.time_budget_s=20")) as job:
        out = job.communicate(timeout=300)[0]
    assert job.returncode == 0, out[-3000:]
    statuses = runs(tmp_path, "budget")
    assert len(statuses) == 2 and "RUNNING" not in statuses.values(), statuses


@pytest.mark.timeout(360)
def test_a_trial_whose_process_is_killed_leaves_no_run_running(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    with dlforge(*sweep_args(tmp_path, "lost")) as job:
        wait_for_trial_epochs(tmp_path, "lost")
        experiment = client.get_experiment_by_name("lost").experiment_id
        (trial,) = client.search_runs([experiment], "tags.`dlforge.kind` = 'trial'")
        os.kill(int(trial.data.tags["dlforge.pid"]), signal.SIGKILL)  # the Ray worker running the trial
        out = job.communicate(timeout=240)[0]
    statuses = runs(tmp_path, "lost")
    assert len(statuses) == 2 and "RUNNING" not in statuses.values(), (statuses, out[-3000:])
    assert client.get_run(trial.info.run_id).info.status == "KILLED"
