"""Processes and output folders: no dlforge process outlives its parent; one job at a time per ``output_dir``.

- ``job_scope()`` — around every dlforge command: ``die_with_parent()``, and its locks are released at the end.
  A process started by another dlforge process (``dlforge run``'s training stage, the DDP ranks Lightning
  re-launches) gets SIGTERM when that parent dies, even by SIGKILL or the OOM killer, and SIGKILL
  ``ORPHAN_GRACE_S`` later if it is still there. SIGTERM first, so training saves ``last.ckpt`` and closes its
  MLflow run as KILLED.
- ``run_child(command)`` — run a dlforge child in this process group until it ends. SIGTERM to this process alone
  (``kill PID``, a scheduler) is forwarded to the child and waited for, then handled here as it would have been.
- ``lock_output_dir(path)`` inside ``job_scope()`` — a second concurrent job on the same ``output_dir`` is refused
  with one line naming the holder's PID. The lock is ``flock`` on ``<output_dir>/.dlforge.lock``: the kernel drops
  it when the holder dies, so a lock is never stale.
- ``serve(command)`` — a server in its own session until Ctrl-C, SIGTERM or SIGHUP; then its whole process group
  is stopped, workers included.
- ``owner()`` / ``alive(pid, started)`` — who opened an MLflow run, and whether that process still runs; with the
  start time a reused PID is not mistaken for the owner.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dl_lightning.errors import InputError

PARENT_ENV = "DLFORGE_PARENT"  # "<pid>:<start time>" of the dlforge process that started this one
LOCK_FILE = ".dlforge.lock"
ORPHAN_GRACE_S = 30.0  # how long a child whose parent died may take to save and close its run before SIGKILL
STOP_GRACE_S = 20.0  # how long a server group may take to stop after SIGTERM before SIGKILL
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class OutputDirBusy(InputError):
    """Another live job holds the ``output_dir`` lock: exit 2, nothing written."""


# ---------------------------------------------------------------- process identity


def started_at(pid: int) -> str | None:
    """When process ``pid`` started, as an opaque stable string, or None when there is no such process.

    On Linux it is the start time in clock ticks after boot from ``/proc/<pid>/stat``: exact. An epoch time
    (psutil's ``create_time``) adds the kernel's boot-time estimate, which can move by a second between two reads —
    enough to take a live parent for a new process with a reused PID, and kill a healthy child.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return f"ticks:{fields[19]}"  # field 22 of stat(5); the split starts at field 3
    except (OSError, IndexError):
        pass
    import psutil

    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except psutil.Error:
        return None


def owner() -> dict[str, str]:
    """This process as the owner of a run or a lock: host, PID and start time."""
    return {"host": socket.gethostname(), "pid": str(os.getpid()), "started": started_at(os.getpid()) or ""}


def alive(pid: int, started: str | None = None) -> bool:
    """True while process ``pid`` runs and, when ``started`` is given, is the one that started then.

    A zombie (exited, not yet reaped) is dead; a process we may not inspect is taken as alive.
    """
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return not started or started_at(pid) == started
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


# ---------------------------------------------------------------- children die with their parent


def die_with_parent() -> None:
    """Tie this process's life to the dlforge process that started it, and become the parent its children follow.

    Guarantees, when ``DLFORGE_PARENT`` names another process: this process gets SIGTERM when the parent dies (the
    kernel's parent-death signal on Linux; a watchdog thread where the direct parent is not that process or the
    signal is unavailable), and SIGKILL ``ORPHAN_GRACE_S`` later if it has not exited. A parent already dead when
    this runs (it died before the signal was armed) stops this process here with exit 143.
    """
    recorded = os.environ.get(PARENT_ENV, "")
    me = os.getpid()
    pid_text, _, started = recorded.partition(":")
    if not pid_text.isdigit() or int(pid_text) == me:
        return
    parent = int(pid_text)
    by_kernel = os.getppid() == parent and _request_parent_death_signal(signal.SIGTERM)
    if not alive(parent, started or None):  # re-check: a parent gone before the request sends no signal
        print("dlforge: the process that started this one is gone; stopping", file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM)
    watch = threading.Thread(target=_watch_parent, args=(parent, started or None, by_kernel), daemon=True)
    watch.name = "dlforge-parent-watch"
    watch.start()


def _watch_parent(pid: int, started: str | None, signalled_by_kernel: bool, interval: float = 1.0) -> None:
    while alive(pid, started):
        time.sleep(interval)
    if not signalled_by_kernel:
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(ORPHAN_GRACE_S)  # time to save last.ckpt and close the run; a hung child is ended anyway
    os.kill(os.getpid(), signal.SIGKILL)


def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` (Linux), resolved once: ``preexec_fn`` runs between fork and exec, where loading is unsafe."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()


def _request_parent_death_signal(signum: int) -> bool:
    """Ask the kernel to send ``signum`` to this process when the thread that forked it exits (Linux only)."""
    return _PRCTL is not None and _PRCTL(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0


def run_child(command: list[str]) -> int:
    """Run ``command`` (a dlforge command) in this process group until it exits; return its exit code.

    The child dies with this process (see :func:`die_with_parent`); a scheduler's ``killpg`` and a terminal's Ctrl-C
    reach it directly. SIGTERM sent to this process alone is forwarded to the child; once the child has exited,
    this process handles the SIGTERM as it would have without a child (``sigterm_exits``: exit 143, run KILLED).
    """
    env = {**os.environ, PARENT_ENV: f"{os.getpid()}:{started_at(os.getpid()) or ''}"}
    child = subprocess.Popen(command, env=env)
    with _forwarding_sigterm(child) as received:
        try:
            code = child.wait()
        except KeyboardInterrupt:  # the child got the same Ctrl-C: let it close its run before we unwind
            _wait(child, ORPHAN_GRACE_S)
            raise
    if received:
        _handle_as_before(signal.SIGTERM)
    return code


@contextlib.contextmanager
def _forwarding_sigterm(child: subprocess.Popen) -> Iterator[list[int]]:
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield []
        return
    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def _handle_as_before(signum: int) -> None:
    handler = signal.getsignal(signum)
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)


def _wait(child: subprocess.Popen, timeout: float) -> None:
    try:
        child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


# ---------------------------------------------------------------- servers: a process group, stopped as one


class _Stop(Exception):
    """SIGTERM or SIGHUP arrived while serving."""


def serve(command: list[str], env: dict[str, str] | None = None) -> int:
    """Run a server in a new session until it exits, Ctrl-C, SIGTERM or SIGHUP; never leave its workers behind.

    Returns the server's exit code, 0 after Ctrl-C, 128 + the signal after SIGTERM or SIGHUP. The session's whole
    process group is stopped on every way out (SIGTERM, then SIGKILL after ``STOP_GRACE_S``); the server also gets
    SIGTERM from the kernel if this process is killed outright (Linux).
    """
    server = subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=_server_preexec())
    try:
        with _raising_on(signal.SIGTERM, signal.SIGHUP):
            return server.wait()
    except KeyboardInterrupt:
        return 0
    except _Stop as stop:
        return 128 + stop.args[0]
    finally:
        stop_group(server)


def _server_preexec() -> Callable[[], None] | None:
    if _PRCTL is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        _request_parent_death_signal(signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the request: no signal would come
            os._exit(1)

    return preexec


@contextlib.contextmanager
def _raising_on(*signums: int) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Stop(signum)

    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)


def stop_group(leader: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """Stop the process group led by ``leader`` (started with ``start_new_session``): SIGTERM, then SIGKILL.

    Waits for every member, not only the leader: workers a server forked may outlive it by a moment.
    """
    deadline = time.monotonic() + grace
    _signal_group(leader.pid, signal.SIGTERM)
    while _group_exists(leader.pid) and time.monotonic() < deadline:
        leader.poll()  # reap the leader, or the group seems to live on as its zombie
        time.sleep(0.1)
    _signal_group(leader.pid, signal.SIGKILL)
    leader.wait()


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


# ---------------------------------------------------------------- one job per output_dir

_HELD: dict[str, tuple[int, bool]] = {}  # real path of a locked output_dir → (lock file descriptor, dir created)
_SCOPES: list[list[str]] = []  # locks taken in each open job_scope, released when it ends


@contextlib.contextmanager
def job_scope() -> Iterator[None]:
    """One dlforge command: it dies with a dlforge parent, its children die with it, its locks end with it.

    On entry: :func:`die_with_parent`, then ``DLFORGE_PARENT`` names this process, so the children it starts —
    the DDP ranks Lightning re-launches copy ``os.environ`` — follow it. On exit: the environment is restored and
    the output folders locked inside the block are released.
    """
    die_with_parent()
    before = os.environ.get(PARENT_ENV)
    os.environ[PARENT_ENV] = f"{os.getpid()}:{started_at(os.getpid()) or ''}"
    _SCOPES.append([])
    try:
        yield
    finally:
        for path in reversed(_SCOPES.pop()):
            _release(path)
        if before is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = before


def lock_output_dir(output_dir: str | Path) -> None:
    """Hold ``output_dir`` for this job (creating it) until the enclosing :func:`job_scope` ends.

    Raises:
        OutputDirBusy: another live process holds it; one line naming that process (nothing is written).

    DDP ranks other than 0 take no lock (rank 0 holds it for the job); a folder this process already holds is
    not locked twice.
    """
    path = os.path.realpath(output_dir)
    if _secondary_rank() or path in _HELD:
        return
    created = not os.path.isdir(path)
    os.makedirs(path, exist_ok=True)
    try:
        fd = _acquire(Path(path) / LOCK_FILE)
    except OutputDirBusy:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(path)
        raise
    _HELD[path] = (fd, created)
    if _SCOPES:
        _SCOPES[-1].append(path)


def _acquire(lock_path: Path) -> int:
    """An open, ``flock``-ed descriptor of ``lock_path`` holding this process's identity."""
    import fcntl

    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children (O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputDirBusy(
                f"output_dir {str(lock_path.parent)!r} is in use by another dlforge job ({holder}); "
                "wait for it to end or choose another output_dir"
            ) from None
        if _same_file(fd, lock_path):  # not a file a releasing holder unlinked after we opened it
            break
        os.close(fd)
    me = owner()
    os.ftruncate(fd, 0)
    command = f"dlforge {sys.argv[1]}" if len(sys.argv) > 1 else "dlforge"
    os.pwrite(fd, f"pid {me['pid']} on {me['host']}, {command}\n".encode(), 0)
    return fd


def _holder(fd: int) -> str:
    for _ in range(20):  # the holder writes its identity just after locking: give it a moment
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.05)
    return "pid unknown"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _release(path: str) -> None:
    """Remove the lock file (and the folder, when the lock created it and nothing else was written), then unlock."""
    fd, created = _HELD.pop(path)
    with contextlib.suppress(OSError):
        os.unlink(Path(path) / LOCK_FILE)  # while still locked: a waiter re-checks the file it locked is this one
    if created:
        with contextlib.suppress(OSError):
            os.rmdir(path)
    os.close(fd)


def _secondary_rank() -> bool:
    """A process of a distributed job other than global rank 0 (its launcher's environment says so)."""
    env = os.environ
    ranks = [env.get(name, "0") for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")]
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        ranks.append(env.get("SLURM_PROCID", "0"))
    return any(value.strip() not in ("", "0") for value in ranks)
