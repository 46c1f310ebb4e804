"""Files users read: written atomically (temp file + rename) so a crash never leaves half a file."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from dl_lightning.errors import InputError


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


def check_writable(output_dir: str | Path) -> None:
    """Fail before any work when ``output_dir`` cannot be created or written (nothing is created here)."""
    path = Path(output_dir).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"output_dir {str(path)!r} is inside a file {str(existing)!r}; choose a directory path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"output_dir {str(path)!r} is not writable; set output_dir= to a folder you can write")


def _finite(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as null rather than emit an invalid file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
