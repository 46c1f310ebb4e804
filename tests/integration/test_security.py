"""Open doors, tried for real: Ray's listening sockets, a tampered sweep folder, credentials over HTTP, a trial's
bad input under max_failures."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import mlflow_server

pytestmark = [pytest.mark.slow]

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

WILDCARDS = ("0.0.0.0", "::", "")


def _listening(pids: set[int]) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket held by ``pids``."""
    found = []
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            found.append((psutil.Process(conn.pid).name(), conn.laddr.ip, conn.laddr.port))
    return found


@pytest.mark.timeout(180)
def test_a_local_sweeps_ray_listens_on_loopback_only():
    from tune.sweep import ray_session

    if ray.is_initialized():
        pytest.skip("a Ray started by another test is running in this process")
    with ray_session(None):

        @ray.remote
        def ping() -> int:
            return 1

        assert ray.get(ping.remote()) == 1  # a worker process is up too
        me = psutil.Process()
        sockets = _listening({me.pid, *(p.pid for p in me.children(recursive=True))})
    names = {name for name, _, _ in sockets}
    assert any("gcs_server" in n for n in names) and any("raylet" in n for n in names), sockets
    exposed = [s for s in sockets if s[1] in WILDCARDS or not (s[1].startswith("127.") or s[1].endswith(":127.0.0.1"))]
    assert not exposed, f"listening beyond loopback: {exposed}"


class Planted:
    """Unpickling this creates a file: proof that code from the folder ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def private_key(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def _tiny_sweep(tmp_path: Path, *extra: str) -> list[str]:
    return [
        f"output_dir={tmp_path / 'out'}",
        "tracking.enabled=false",
        "model.family=mlp",
        "data.source=builtin:iris",
        "model.mlp.hidden=[8]",
        "trainer.max_epochs=1",
        "tune.num_samples=1",
        "tune.scheduler=fifo",
        "tune.space={optim.lr: {choice: [0.01]}}",
        *extra,
    ]


def _dlforge(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args], capture_output=True, text=True, timeout=timeout, env=os.environ
    )


@pytest.mark.timeout(420)
def test_a_sweep_folder_resumes_as_written_and_is_refused_once_a_pickle_is_planted(tmp_path, private_key):
    done = _dlforge("tune", *_tiny_sweep(tmp_path))
    assert done.returncode == 0, done.stderr
    experiment = next((tmp_path / "out" / "tune").glob("sweep-*"))
    again = _dlforge("tune", "--resume", str(experiment))  # dlforge's own folder: accepted as written
    assert again.returncode == 0, again.stderr

    marker = tmp_path / "pwned"
    (experiment / "tuner.pkl").write_bytes(pickle.dumps(Planted(marker)))
    refused = _dlforge("tune", "--resume", str(experiment))
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "tuner.pkl" in lines[0] and "changed or added" in lines[0], refused.stderr
    assert not marker.exists()


@pytest.mark.timeout(420)
def test_an_input_error_inside_trials_is_one_line_and_never_retried(tmp_path):
    # The base config is fine; every trial's sampled family cannot take the tabular data.
    args = _tiny_sweep(tmp_path, "tune.max_failures=2", "tune.num_samples=2")
    args = [a for a in args if not a.startswith("tune.space=")] + ["tune.space={model.family: {choice: [gan]}}"]
    done = _dlforge("tune", *args)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "gan" in errors[0] and "nothing was retried" in errors[0], done.stderr
    assert "Traceback" not in done.stdout + done.stderr and "failure" not in done.stdout  # never retried
    states = [json.loads(p.read_text()) for p in (tmp_path / "out" / "trials").glob("*/trial_state.json")]
    assert len(states) == 2 and all("input_error" in s for s in states)


@pytest.mark.timeout(300)
def test_credentials_in_an_http_tracking_uri_never_reach_the_terminal_or_files(tmp_path, store):
    (tmp_path / "server").mkdir()
    with mlflow_server(tmp_path / "server", backend_store_uri=store) as url:  # a store made before: starts sooner
        secret_url = url.replace("http://", "http://alice:s3cretPW@")
        out = tmp_path / "out"
        args = ["model.family=mlp", "data.source=builtin:iris", "trainer.max_epochs=1", f"output_dir={out}"]
        done = _dlforge("train", *args, f"tracking.uri={secret_url}", "tracking.experiment=creds")
    assert done.returncode == 0, done.stderr
    assert "s3cretPW" not in done.stdout + done.stderr
    written = [p for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".yaml", ".txt")]
    assert written and not [p for p in written if "s3cretPW" in p.read_text(errors="replace")]
    summary = json.loads((out / "summary.json").read_text())
    assert "***@" in summary["config"]["tracking"]["uri"] and all("s3cretPW" not in a for a in summary["argv"])
