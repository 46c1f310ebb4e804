"""The GPU path: ``scripts/gpu_check.sh``'s table (train in 32 / bf16-mixed / 16-mixed, DDP, a GPU sweep, ONNX
Runtime's CUDA provider) as a section of the benchmarks doc; skipped with one line where torch sees no CUDA device."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pipelines.benchmarks.common import BenchContext, BenchResult, Row, skipped
from pipelines.config import PROJECT_ROOT

TITLE = "GPU path: dlforge train and sweep on GPU vs the same job on CPU"
SCRIPT = PROJECT_ROOT / "scripts" / "gpu_check.py"


def run(ctx: BenchContext) -> BenchResult:
    import torch

    if not torch.cuda.is_available():
        why = "no CUDA device on the machine that ran the benchmarks; run scripts/gpu_check.sh on one"
        return skipped("gpu", TITLE, why)
    folder = ctx.folder("gpu")
    epochs = 2 if ctx.quick else 5
    env = {**os.environ, "GPU_CHECK_DIR": str(folder)}
    done = subprocess.run([sys.executable, str(SCRIPT), str(epochs)], capture_output=True, text=True, env=env)
    report = json.loads((folder / "gpu_check.json").read_text())
    rows = [_row(r, report["rows"]) for r in report["rows"]]
    text = "\n".join(["```", *done.stdout.strip().splitlines()[-(len(rows) + 6) :], "```"])
    return BenchResult("gpu", TITLE, rows, text, {"epochs": epochs, "config": "configs/digits_cnn.yaml"}, report)


def _row(row: dict, rows: list[dict]) -> Row:
    reference = next(r for r in rows if r["name"] == ("sweep cpu" if row["name"].startswith("sweep") else "cpu 32"))
    if row.get("rc") != 0:
        return Row(f"{row['name']}: wall time vs CPU", None, note=f"failed: {row.get('error', ['?'])[0]}")
    speedup = reference["wall_s"] / row["wall_s"] if reference.get("rc") == 0 else None
    facts = [f"{row['examples_per_s']:.0f} examples/s"] if row.get("examples_per_s") else []
    facts += [f"{row['gpu_mib']:.0f} MiB GPU"] if row.get("gpu_mib") else []
    facts += [f"metric {row['metric']:.4f}"] if row.get("metric") is not None else []
    return Row(f"{row['name']}: speed-up of the whole command vs CPU", speedup, "×", note="; ".join(facts))
