"""Output-folder locks, children that die with their parent, server groups and orphan runs.

Real processes, real signals, real ``flock`` and a real sqlite MLflow store; each test takes about a second.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipelines import processes
from pipelines.processes import OutputDirBusy, job_scope, lock_output_dir

HOLD = textwrap.dedent(
    """
    import sys, time
    from pipelines import processes
    with processes.job_scope():
        processes.lock_output_dir(sys.argv[1])
        print("held", flush=True)
        time.sleep(600)
    """
)
CHILD = textwrap.dedent(
    """
    import os, sys, time
    from pipelines import processes
    processes.die_with_parent()
    print(os.getpid(), flush=True)
    time.sleep(600)
    """
)


RUN_CHILD = (
    "import sys; from pipelines import processes; sys.exit(processes.run_child([sys.executable, '-c', sys.argv[1]]))"
)


def python(code: str, *args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
        **kwargs,
    )


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not processes.alive(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def holder():
    """Start a process holding the lock of a folder; every one started is killed afterwards."""
    started: list[subprocess.Popen] = []

    def hold(path: Path) -> subprocess.Popen:
        proc = python(HOLD, str(path))
        started.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield hold
    for proc in started:
        proc.kill()
        proc.wait()


@pytest.fixture
def dead_pid() -> int:
    """The PID of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------- one job per output_dir


def test_a_held_output_dir_is_refused_in_one_line_naming_the_holder_pid(holder, tmp_path):
    proc = holder(tmp_path / "out")
    with job_scope(), pytest.raises(OutputDirBusy) as refused:
        lock_output_dir(tmp_path / "out")
    message = str(refused.value)
    assert f"pid {proc.pid} " in message and "\n" not in message


def test_the_lock_dies_with_its_holder_so_it_is_never_stale(holder, tmp_path):
    proc = holder(tmp_path / "out")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with job_scope():
        lock_output_dir(tmp_path / "out")
        assert (tmp_path / "out" / processes.LOCK_FILE).read_text().startswith(f"pid {os.getpid()} ")
    assert not (tmp_path / "out" / processes.LOCK_FILE).exists()  # released: nothing left behind


def test_a_folder_made_only_for_the_lock_is_removed_when_the_job_ends(tmp_path):
    with job_scope():
        lock_output_dir(tmp_path / "new")
        lock_output_dir(tmp_path / "new")  # the same process again: no deadlock with itself
        assert (tmp_path / "new").is_dir()
    assert not (tmp_path / "new").exists()


def test_ddp_ranks_other_than_0_take_no_lock(holder, tmp_path, monkeypatch):
    holder(tmp_path / "out")  # rank 0 of the job
    monkeypatch.setenv("LOCAL_RANK", "1")  # what Lightning's launcher gives the ranks it re-launches
    with job_scope():
        lock_output_dir(tmp_path / "out")


@pytest.mark.parametrize("command", [["train"], ["run"], ["tune"], ["compress", "--teacher", "teacher.ckpt"]])
def test_a_second_job_on_a_held_output_dir_exits_2_with_one_line_and_writes_nothing(
    cli, tiny, holder, tmp_path, command
):
    proc = holder(tmp_path / "out")  # tiny's output_dir
    before = sorted(tmp_path.rglob("*"))
    code, out, err = cli(*command, *tiny, "data.source=builtin:digits", "tune.space={optim.lr: {choice: [0.01]}}")
    assert code == 2
    assert err.count("\n") == 1 and f"pid {proc.pid} " in err, err
    assert sorted(tmp_path.rglob("*")) == before


# ---------------------------------------------------------------- children die with their parent


def test_a_child_gets_sigterm_when_its_parent_is_killed_with_sigkill(tmp_path):
    parent = python(RUN_CHILD, CHILD)
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert gone_within(child, 5), "the child outlived its parent"


def test_a_child_behind_another_process_still_dies_with_its_dlforge_parent(tmp_path):
    # sh stays between them, so the kernel's parent-death signal cannot help: the watchdog must
    launcher = textwrap.dedent(
        """
        import os, subprocess, sys
        from pipelines import processes
        env = {**os.environ, processes.PARENT_ENV: f"{os.getpid()}:{processes.started_at(os.getpid())}"}
        subprocess.run(["sh", "-c", f"{sys.executable} -c \\"$CHILD\\"; true"], env={**env, "CHILD": sys.argv[1]})
        """
    )
    parent = python(launcher, CHILD)
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert gone_within(child, 6), "the child outlived its parent"


def test_a_child_whose_parent_is_already_gone_does_not_start(dead_pid):
    env = {**os.environ, processes.PARENT_ENV: f"{dead_pid}:"}
    child = python(CHILD, env=env)
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 143 and out == ""


def test_sigterm_to_the_parent_alone_is_forwarded_and_the_child_waited_for(tmp_path):
    marker = tmp_path / "child-closed"
    child = f"import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1), open({str(marker)!r}, 'w'), sys.exit(143))); print('up', flush=True); time.sleep(600)"  # noqa: E501
    parent = python(
        "import signal, sys; from pipelines import processes\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))\n"
        "processes.run_child([sys.executable, '-c', sys.argv[1]])\n"
        "print('not reached', flush=True)",
        child,
    )
    assert parent.stdout.readline().strip() == "up"
    parent.send_signal(signal.SIGTERM)  # to the parent's PID only, as `kill PID` or a scheduler does
    assert parent.wait(timeout=30) == 143
    assert marker.exists()  # the child had closed up before the parent exited
    assert "not reached" not in parent.stdout.read()


SERVER = textwrap.dedent(
    """
    import subprocess, sys, time
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # like uvicorn's worker
    print(worker.pid, flush=True)
    time.sleep(600)
    """
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_served_process_group_is_stopped_whole_on_sigterm_or_sighup(signum):
    launcher = python(
        "import sys; from pipelines import processes; sys.exit(processes.serve([sys.executable, '-c', sys.argv[1]]))",
        SERVER,
    )
    worker = int(launcher.stdout.readline())
    server = os.getpgid(worker)  # the server leads its own group
    launcher.send_signal(signum)
    assert launcher.wait(timeout=30) == 128 + signum
    assert gone_within(worker, 5) and gone_within(server, 5)


# ---------------------------------------------------------------- process identity


def test_alive_tells_a_reused_pid_from_the_process_that_owned_it(dead_pid):
    me = processes.owner()
    assert processes.alive(os.getpid(), me["started"])
    assert not processes.alive(os.getpid(), "1.00")  # same PID, another start time: not the owner
    assert not processes.alive(dead_pid)


# ---------------------------------------------------------------- runs left RUNNING


@pytest.fixture
def experiment(store):
    from mlflow import MlflowClient

    from pipelines import tracking
    from pipelines.config import load_config

    cfg = load_config(None, [f"tracking.uri={store}", "tracking.experiment=orphans", "data.source=builtin:digits"])
    return cfg, MlflowClient(tracking_uri=store), tracking.connect(cfg)


def test_a_job_closes_as_killed_the_runs_whose_process_is_gone_and_only_those(experiment, dead_pid):
    from pipelines import tracking

    cfg, client, experiment_id = experiment
    me = processes.owner()
    host = me["host"]

    def running(**tags: str) -> str:
        return client.create_run(experiment_id, tags=tags).info.run_id

    orphan = running(**{"dlforge.host": host, "dlforge.pid": str(dead_pid)})
    reused = running(**{"dlforge.host": host, "dlforge.pid": me["pid"], "dlforge.pid_started": "1.00"})
    live = running(**{"dlforge.host": host, "dlforge.pid": me["pid"], "dlforge.pid_started": me["started"]})
    elsewhere = running(**{"dlforge.host": "another-host", "dlforge.pid": str(dead_pid)})
    untagged = running()
    with tracking.job_run(cfg, kind="train") as run_id:
        assert client.get_run(run_id).data.tags["dlforge.pid"] == str(os.getpid())
    status = {r: client.get_run(r).info.status for r in (orphan, reused, live, elsewhere, untagged)}
    assert status == {orphan: "KILLED", reused: "KILLED", live: "RUNNING", elsewhere: "RUNNING", untagged: "RUNNING"}
    assert "ended without closing it" in client.get_run(orphan).data.tags[tracking.ORPHAN_TAG]


def test_a_sweep_closes_the_trial_runs_left_open_under_it(experiment):
    from pipelines import tracking

    _, client, experiment_id = experiment
    sweep = client.create_run(experiment_id).info.run_id
    trials = [client.create_run(experiment_id, tags={"mlflow.parentRunId": sweep}).info.run_id for _ in range(2)]
    client.set_terminated(trials[1], "FINISHED")
    other = client.create_run(experiment_id).info.run_id
    assert tracking.close_unfinished_children(sweep, "the sweep ended") == [trials[0]]
    assert [client.get_run(r).info.status for r in (*trials, other, sweep)] == [
        "KILLED",
        "FINISHED",
        "RUNNING",
        "RUNNING",
    ]
