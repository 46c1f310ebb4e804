"""Imported first by each worker process of a sweep's own Ray, as the process starts (Ray's module preload).

A worker imports its preload modules only once it has registered with Ray's raylet, so from then on it can take a
trial. It says so with an empty file, named by its process id, in the folder the driver named in
``PRESTART_DIR_ENV`` (``tune.sweep.start_local_ray`` waits for one per CPU before the Tuner asks for trials).
Nothing else: the driver imports this module too, where the variable is unset and importing it does nothing.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PRESTART_DIR_ENV = "DLFORGE_RAY_PRESTART_DIR"


def announce() -> None:
    """Leave this process's file in the driver's folder; a folder already gone (a later worker) is no error."""
    folder = os.environ.get(PRESTART_DIR_ENV)
    if folder:
        with contextlib.suppress(OSError):
            (Path(folder) / str(os.getpid())).touch()


announce()
