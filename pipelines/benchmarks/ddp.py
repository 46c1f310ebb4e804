"""DDP on CPU: 2 processes × batch B/2 vs 1 process × batch B (the same global batch), same epochs and seed.

Each variant runs as its own ``python -m pipelines.benchmarks.ddp_child`` (DDP re-launches the command per rank);
throughput is training examples per second over the steady epochs (first epoch excluded), so process start-up and
the gloo rendezvous are not counted — they are reported separately as the wall time of the whole command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from pipelines.benchmarks.common import BenchContext, BenchResult, Row, interleave, median, ratio, steady
from pipelines.config import PROJECT_ROOT

TITLE = "DDP on CPU: 2 processes vs 1 at the same global batch"
GLOBAL_BATCH = 64
BASE = [
    "data.source=builtin:digits",
    "model.family=cnn",
    "model.cnn.channels=[32,64]",
    "tracking.enabled=false",
    "trainer.threads=1",  # one thread per process: 2 processes fill the 2 cores, as 1 process × 2 threads would not
]


def child(ctx: BenchContext, name: str, devices: int, epochs: int) -> dict[str, Any]:
    folder = ctx.folder(f"ddp-{name}")
    out = folder / "timing.json"
    out.unlink(missing_ok=True)
    strategy = ["trainer.strategy=ddp"] if devices > 1 else []
    overrides = [
        *BASE,
        *strategy,
        f"trainer.devices={devices}",
        f"data.batch_size={GLOBAL_BATCH // devices}",
        f"trainer.max_epochs={epochs}",
        f"output_dir={folder}",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.benchmarks.ddp_child", str(out), *overrides],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"ddp child ({devices} processes) failed: {proc.stderr[-2000:]}")
    record = json.loads(out.read_text())
    examples_per_epoch = record["steps"] / epochs * GLOBAL_BATCH  # each rank's steps run in lockstep
    record |= {"wall_s": wall, "examples_per_s": examples_per_epoch / steady(record["train_s"])}
    return record


def run(ctx: BenchContext) -> BenchResult:
    epochs = 2 if ctx.quick else 3
    runs = interleave(
        {"1 process": lambda: child(ctx, "single", 1, epochs), "2 processes": lambda: child(ctx, "ddp", 2, epochs)},
        ctx.repeats,
    )
    one, two = runs["1 process"], runs["2 processes"]
    throughput, spread = ratio([r["examples_per_s"] for r in two], [r["examples_per_s"] for r in one])
    epoch_ratio, epoch_spread = ratio([steady(r["epoch_s"]) for r in two], [steady(r["epoch_s"]) for r in one])
    wall, wall_spread = ratio([r["wall_s"] for r in two], [r["wall_s"] for r in one])
    acc_one, acc_two = (median([r["metrics"].get("test/acc", float("nan")) for r in rs]) for rs in (one, two))
    rows = [
        Row(
            "training throughput, 2 processes / 1",
            throughput,
            "×",
            "report",
            None,
            f"{median([r['examples_per_s'] for r in two]):.0f} vs {median([r['examples_per_s'] for r in one]):.0f} "
            "examples/s",
            spread,
        ),
        Row("epoch time incl. validation, 2 / 1", epoch_ratio, "×", spread=epoch_spread),
        Row("whole command wall time (start-up, rendezvous, test), 2 / 1", wall, "×", spread=wall_spread),
        Row(
            f"test accuracy after {epochs} epochs, 2 processes − 1",
            (acc_two - acc_one) * 100,
            "points",
            "report",
            None,
            f"{acc_two:.4f} vs {acc_one:.4f}",
        ),
    ]
    setup = {"global_batch": GLOBAL_BATCH, "epochs": epochs, "overrides": BASE, "threads_per_process": 1}
    raw = {k: [{kk: vv for kk, vv in r.items()} for r in v] for k, v in runs.items()}
    return BenchResult("ddp", TITLE, rows, interpretation(rows, epochs), setup, raw)


def interpretation(rows: list[Row], epochs: int) -> str:
    throughput, _, wall, acc = rows
    return (
        f"- Two gloo processes on this 2-core machine train at {throughput.value:.2f}× the examples/s of one process "
        "with one thread. No speed-up is expected here: the two cores are shared with everything else on the "
        "machine, each step adds an all-reduce of the gradients over loopback, and a step of this small CNN is "
        "short enough that the synchronization is a large part of it. DDP pays off with more cores or nodes per "
        "process and larger steps, not on 2 shared cores.\n"
        f"- The whole command costs {wall.value:.2f}× the single process's wall time: the second process imports "
        "torch and Lightning again and the ranks rendezvous before training.\n"
        f"- Accuracy after the same {epochs} epochs differs by {acc.value:+.2f} points ({acc.note}): same global "
        "batch and epochs, but not the same sequence of updates (each rank shuffles its own shard, BatchNorm "
        "statistics are per rank), so a small difference is expected; no target."
    )
