"""Files users read: written atomically (temp file + rename) so a crash never leaves half a file."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from dl_lightning.errors import InputError, clip


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Replace ``path`` with ``text`` in one rename; readers see the old file or the new, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(_finite(data), indent=2, sort_keys=False) + "\n")


def check_writable(output_dir: str | Path, what: str = "output_dir") -> None:
    """Fail before any work when ``output_dir`` cannot be created or written (nothing is created here).

    ``what`` names the setting in the message (``output_dir``, ``--output``). Names longer than the file system
    allows are refused here too, not as an OSError once the job has run.
    """
    path = Path(output_dir).absolute()
    fix = f"set {what}= to a folder you can write" if what == "output_dir" else f"pass a folder you can write to {what}"
    _check_name_lengths(path, what)  # first: exists() itself raises OSError on a name that is too long
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"{what} {_shown(path)} is inside a file {_shown(existing)}; {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{what} {_shown(path)} is not writable; {fix}")


def _check_name_lengths(path: Path, what: str) -> None:
    name_max = os.pathconf(path.anchor or "/", "PC_NAME_MAX")
    too_long = [part for part in path.parts if len(os.fsencode(part)) > name_max]
    if too_long:
        raise InputError(
            f"{what} has a folder name of {len(os.fsencode(too_long[0]))} bytes ({clip(too_long[0], 40)}); "
            f"this file system allows {name_max} — choose a shorter name"
        )
    path_max = os.pathconf(path.anchor or "/", "PC_PATH_MAX")
    if len(os.fsencode(path)) + 64 > path_max:  # room for the files written inside it
        raise InputError(f"{what} is a path of {len(os.fsencode(path))} bytes, too long here; choose a shorter one")


def _shown(path: Path) -> str:
    text = str(path)
    return repr(text if len(text) <= 120 else text[:57] + "..." + text[-60:])


def _finite(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as null rather than emit an invalid file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
