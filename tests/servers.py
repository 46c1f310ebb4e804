"""Real servers for integration tests: free loopback ports, an ``mlflow server``, a PostgreSQL cluster.

Every helper starts its process in a new session, so ``stop`` ends it with all the workers it spawned (by process
group, never by name). Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from pipelines import tracking

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait for ``<url>/health`` to answer; fail early when the server process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """End a process started with ``start_new_session=True`` and everything in its process group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def mlflow_server(root: Path, backend_store_uri: str | None = None) -> Iterator[str]:
    """``mlflow server`` on a free loopback port, proxying artifacts into ``root/artifacts``; yields its URL."""
    port = free_port()
    backend = backend_store_uri or f"sqlite:///{root}/mlflow.db"
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1", "--backend-store-uri", backend, "--artifacts-destination", str(root / "artifacts")]
    with (root / "mlflow-server.log").open("w") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=tracking.ui_server_env()
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, proc)
        yield url
    finally:
        stop(proc)


# ---------------------------------------------------------------- PostgreSQL (Debian's `postgresql` package)


def postgres_bin() -> Path | None:
    """The newest installed ``/usr/lib/postgresql/<version>/bin`` holding initdb and pg_ctl, if any."""
    import glob

    found = sorted(glob.glob(PG_BIN_GLOB), key=lambda p: int(Path(p).parent.name.split(".")[0]))
    usable = [Path(p) for p in found if (Path(p) / "initdb").is_file() and (Path(p) / "pg_ctl").is_file()]
    return usable[-1] if usable else None


def postgres_missing() -> str | None:
    """Why a PostgreSQL cluster cannot be started here (None: it can)."""
    if postgres_bin() is None:
        return "PostgreSQL is not installed (apt-get install postgresql; .ci/run does it where apt works)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no 'postgres' system user to run the server as (Debian's postgresql package creates it)"
    if os.geteuid() != 0 and pwd.getpwuid(os.geteuid()).pw_name != "postgres":
        return "PostgreSQL runs as the 'postgres' user: the tests must run as root or as postgres"
    return None


@contextlib.contextmanager
def postgres_cluster(database: str = "mlflow") -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free loopback port (trust auth), with ``database`` created.

    Yields ``postgresql://postgres@127.0.0.1:PORT/<database>``. The data directory is a new temp folder owned by
    ``postgres``; it is stopped (``pg_ctl stop -m fast``) and deleted afterwards.
    """
    binaries, port = postgres_bin(), free_port()
    assert binaries is not None, postgres_missing()
    root = Path(tempfile.mkdtemp(prefix="dlforge-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    user = pwd.getpwnam("postgres")
    for path in (root, sockets):
        os.chown(path, user.pw_uid, user.pw_gid)
    as_postgres = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]

    def run(*command: str) -> None:
        done = subprocess.run([*as_postgres, *command], capture_output=True, text=True, timeout=120, cwd=root)
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {done.stdout[-1500:]}{done.stderr[-1500:]}")

    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1"
    try:
        run(str(binaries / "initdb"), "-A", "trust", "-U", "postgres", "-D", str(data))
        run(str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "postgres.log"), "-w", "start")
        try:
            run(str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database)
            yield f"postgresql://postgres@127.0.0.1:{port}/{database}"
        finally:
            run(str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- a Ray cluster of two nodes on loopback

_RAY_NODES_SCRIPT = """
import json, sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.monotonic() + float(sys.argv[2])
while True:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) >= int(sys.argv[3]) or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps([{"id": n["NodeID"], "resources": n["Resources"]} for n in nodes]))
"""


def ray_env(token: str) -> dict[str, str]:
    """Ray 2.60 clusters use token auth: every node and driver needs the mode and the token (never ~/.ray)."""
    return {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    }


def ray_nodes(address: str, env: dict[str, str], expect: int, timeout: float = 60) -> list[dict]:
    """The alive nodes of the cluster at ``address`` (waiting up to ``timeout`` for ``expect`` of them)."""
    import json

    done = subprocess.run(
        [sys.executable, "-c", _RAY_NODES_SCRIPT, address, str(timeout), str(expect)],
        capture_output=True,
        text=True,
        timeout=timeout + 60,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"cannot reach Ray at {address}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def ray_cluster(root: Path, token: str) -> Iterator[str]:
    """A head node and one worker node (custom resource ``node2``), 1 CPU each, on 127.0.0.1; yields the address.

    Both run ``ray start --block`` in their own session with their own ``--temp-dir``: stopping that process
    group ends exactly this cluster (``ray stop`` would end every Ray on the machine).
    """
    port, env = free_port(), ray_env(token)
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must stay under 108 bytes
    common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--temp-dir", str(temp)]
    common += ["--disable-usage-stats"]
    ray = str(Path(sys.executable).with_name("ray"))
    head_cmd = [ray, "start", "--head", "--port", str(port), "--include-dashboard", "false", *common]
    worker_cmd = [ray, "start", "--address", f"127.0.0.1:{port}", "--resources", '{"node2": 1}', *common]
    procs: list[subprocess.Popen] = []
    try:
        for name, command in (("head", head_cmd), ("worker", worker_cmd)):
            for flag in ("--dashboard-agent-listen-port", "--metrics-export-port", "--runtime-env-agent-port"):
                command += [flag, str(free_port())]
            with (root / f"ray-{name}.log").open("w") as log:
                procs.append(
                    subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
                )
        yield f"127.0.0.1:{port}"
    finally:
        for proc in reversed(procs):
            stop(proc, timeout=30)
        _end_stragglers(f"RAY_AUTH_TOKEN={token}".encode())
        shutil.rmtree(temp, ignore_errors=True)


def processes_with_env(marker: bytes) -> list[int]:
    """Pids whose environment holds ``marker`` (a token unique to what this test started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
    return pids


def _end_stragglers(marker: bytes, grace: float = 15) -> None:
    """Ray workers run in sessions of their own and exit when their raylet goes; give them ``grace``, then kill."""
    deadline = time.monotonic() + grace
    while processes_with_env(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in processes_with_env(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
