"""Refuse sweep folders dlforge did not write: an HMAC-keyed record of the files Ray would unpickle on restore.

Ray's ``Tuner.restore`` unpickles ``tuner.pkl``, the hex-encoded pickles inside ``experiment_state-*.json``, the
searcher state and trials' ``error.pkl``: a folder someone else can write (shared storage) is code. Each time Ray
saves the experiment state, :class:`DigestRecorder` records a SHA-256 of every such file in
``dlforge_digest.json``, signed with HMAC-SHA256 under a per-user secret (``$XDG_CONFIG_HOME/dlforge/sweep.key``,
mode 0600, never written into the folder). :func:`verify_experiment` checks the signature and every file before
anything in the folder is unpickled. No module here imports Ray.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

from dl_lightning.errors import InputError

DIGEST_FILE = "dlforge_digest.json"
KEPT_VERSIONS = 8  # Ray copies its staged state to the folder after recording: accept the last few saves


def key_path() -> Path:
    """Where this user's signing secret lives (created on first use)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "dlforge" / "sweep.key"


def signing_key() -> bytes:
    """This user's 32-byte secret; created with mode 0600 when missing (O_EXCL: two sweeps never race it)."""
    path = key_path()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(32))
        except FileExistsError:
            pass
    return path.read_bytes()


def guarded_files(folder: Path) -> list[Path]:
    """Files a restore would read as code or config: every ``*.pkl``, and the folder's own ``*.json``."""
    found = {p for p in folder.rglob("*.pkl") if p.is_file()}
    found |= {p for p in folder.glob("*.json") if p.is_file() and p.name != DIGEST_FILE}
    return sorted(found)


def record_digests(folder: str | Path, staging: str | Path | None = None) -> None:
    """Add the current SHA-256 of every guarded file to the signed record (keeping the last KEPT_VERSIONS).

    ``staging``: where Ray writes its state before copying it into ``folder`` (same names, same bytes).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    known = _read_record(folder, signing_key()) or {}
    for root in (Path(staging),) if staging else ():
        _add(known, root)
    _add(known, folder)
    _write_record(folder, known)


def _add(known: dict[str, list[str]], root: Path) -> None:
    for path in guarded_files(root) if root.is_dir() else ():
        name = path.relative_to(root).as_posix()
        digest = _sha256(path)
        versions = [d for d in known.get(name, []) if d != digest]
        known[name] = [*versions, digest][-KEPT_VERSIONS:]


def verify_experiment(folder: str | Path) -> list[str]:
    """Raise InputError unless every guarded file in ``folder`` is one this user's dlforge recorded.

    One exception, set aside rather than refused: an ``experiment_state-*.json`` under a name never recorded, while
    a recorded one remains. Ray copies each state save into the folder in the background; a driver killed between
    that copy and the next record leaves the newest save unrecorded. Renamed to ``*.unverified`` (never read, never
    unpickled), Ray restores from the previous, recorded save and loses at most the steps since. Returns the names
    set aside. Nothing in ``folder`` is unpickled here; call this before ``Tuner.restore`` and before reading its
    config.
    """
    folder = Path(folder).absolute()
    fix = "start a new sweep (dlforge tune), or resume from a folder your own dlforge sweep wrote"
    if not (folder / DIGEST_FILE).is_file():
        raise InputError(f"{folder} has no {DIGEST_FILE}, so dlforge did not write it; refusing to unpickle it — {fix}")
    known = _read_record(folder, signing_key())
    if known is None:
        raise InputError(f"{folder}/{DIGEST_FILE} is not signed by your dlforge key; refusing to resume — {fix}")
    late = _late_state_saves(folder, known)
    for path in late:
        path.rename(path.with_name(f"{path.name}.unverified"))
    for path in guarded_files(folder):
        name = path.relative_to(folder).as_posix()
        if _sha256(path) not in known.get(name, []):
            raise InputError(f"{name} in {folder} was changed or added after dlforge wrote it; refusing it — {fix}")
    return [path.name for path in late]


def _late_state_saves(folder: Path, known: dict[str, list[str]]) -> list[Path]:
    """Ray state saves under names the record never held, when a recorded save is also there to restore from."""
    saves = sorted(folder.glob("experiment_state-*.json"))
    unrecorded = [path for path in saves if path.name not in known]
    recorded = [path for path in saves if path.name in known]
    return unrecorded if recorded else []


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _signature(files: dict[str, Any], key: bytes) -> str:
    canonical = json.dumps(files, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def _read_record(folder: Path, key: bytes) -> dict[str, list[str]] | None:
    """The recorded digests, or None when the record is missing, unreadable or not signed with ``key``."""
    try:
        record = json.loads((folder / DIGEST_FILE).read_text())
        files, mac = record["files"], record["hmac"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(files, dict) or not hmac.compare_digest(str(mac), _signature(files, key)):
        return None
    return files


def _write_record(folder: Path, files: dict[str, list[str]]) -> None:
    # atomic: a driver killed mid-write leaves the previous record, never half of one
    path = folder / DIGEST_FILE
    tmp = path.with_name(f".{DIGEST_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"files": files, "hmac": _signature(files, signing_key())}, indent=1))
    os.replace(tmp, path)
