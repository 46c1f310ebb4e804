"""What every benchmark shares: the context, the result shape, interleaved timing, machine facts."""

from __future__ import annotations

import contextlib
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The README's main job: the sweep, tracking and main-job benchmarks measure what it runs.
MAIN_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "digits_cnn.yaml"


@dataclass(frozen=True)
class BenchContext:
    """How big and how often: ``quick`` shrinks every benchmark to a smoke run (sizes only, never the meaning)."""

    repeats: int = 5
    quick: bool = False
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="dlforge-bench-"))

    def folder(self, name: str) -> Path:
        path = Path(self.workdir) / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass
class Row:
    """One line of a benchmark's table; ``met`` is None where the row reports without a target."""

    measure: str
    value: float | None
    unit: str = "×"
    target: str | None = None
    met: bool | None = None
    note: str = ""
    spread: list[float] | None = None  # [min, max] over the repeats, for ratios


@dataclass
class BenchResult:
    name: str
    title: str
    rows: list[Row]
    interpretation: str
    setup: dict[str, Any] = field(default_factory=dict)  # what was run: sizes, configs, repeats
    raw: dict[str, Any] = field(default_factory=dict)  # every repeat's measurements
    status: str = "ok"  # ok | skipped | error
    seconds: float = 0.0


def skipped(name: str, title: str, why: str) -> BenchResult:
    return BenchResult(name, title, [], why, status="skipped")


def interleave(variants: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[Any]]:
    """Each variant once per repeat, alternating the order (ABBA…) so drift in machine load hits both alike."""
    names = list(variants)
    out: dict[str, list[Any]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            out[name].append(variants[name]())
    return out


def ratio(numerators: list[float], denominators: list[float]) -> tuple[float, list[float]]:
    """Median of the per-repeat ratios, and their [min, max]."""
    ratios = [n / d for n, d in zip(numerators, denominators, strict=True) if d]
    return statistics.median(ratios), [min(ratios), max(ratios)]


def median(values: list[float]) -> float:
    return statistics.median(values)


def steady(values: list[float]) -> float:
    """Median epoch time without the first (warm-up) epoch."""
    return statistics.median(values[1:] if len(values) > 1 else values)


def ratio_row(measure: str, num: list[float], den: list[float], target: float | None = None, note: str = "") -> Row:
    value, spread = ratio(num, den)
    met = None if target is None else value <= target
    return Row(measure, value, "×", f"≤ {target:g}" if target is not None else None, met, note, spread)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def timed_dlforge(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    """``dlforge ARGS`` in a fresh process (its imports counted, as a user's command pays them): wall time, result."""
    return timed(lambda: subprocess.run([sys.executable, "-m", "pipelines", *args], capture_output=True, text=True))


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Swallow stdout of library code (epoch lines, Ray tables) so the bench prints only its own lines."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def machine() -> dict[str, Any]:
    """CPU model, cores, library versions and the load average: the context every figure needs."""
    import lightning
    import torch

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"
