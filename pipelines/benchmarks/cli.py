"""``dlforge bench``: the command's handler and flags (registered in ``pipelines.cli.COMMANDS``)."""

from __future__ import annotations

import argparse
import shutil
from typing import Any

from dl_lightning.errors import InputError
from pipelines.outputs import check_writable

NAMES = (
    *("loop", "tracking", "process", "gpu", "ddp", "sweeps", "compression", "distill", "input", "main_job", "quality"),
    "user_data",
    *("transfer", "imbalance", "ensemble"),
)
BENCH_HELP = "run the benchmarks (side-by-side ratios, median of repeats) and write <out>.json and <out>.md"
BENCH_FLAGS: dict[str, dict[str, Any]] = {
    "--only": {"nargs": "+", "choices": NAMES, "metavar": "NAME", "help": f"run only these: {', '.join(NAMES)}"},
    "--repeats": {"type": int, "default": 5, "help": "repeats of every side-by-side measurement (default 5)"},
    "--out": {"default": "docs/benchmarks", "help": "path stem of the outputs (default docs/benchmarks)"},
    "--quick": {"action": "store_true", "help": "tiny sizes: a smoke run whose numbers mean nothing"},
}


def cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipelines.benchmarks.common import BenchContext
    from pipelines.benchmarks.runner import run_benchmarks

    if args.items:
        raise InputError(f"dlforge bench takes no config or overrides (got {args.items}); use --only/--repeats")
    if args.repeats < 1:
        raise InputError(f"--repeats must be ≥ 1; got {args.repeats}")
    check_writable(Path(args.out).parent)
    ctx = BenchContext(repeats=args.repeats, quick=args.quick)
    try:
        report = run_benchmarks(list(args.only or NAMES), ctx, args.out)
    finally:
        shutil.rmtree(ctx.workdir, ignore_errors=True)  # checkpoints, ONNX files, sweeps: scratch only
    for bench in (b for b in report["benchmarks"] if not b.get("earlier")):  # this run's rows only
        for row in bench["rows"]:
            if row["met"] is not None:
                print(f"  {'met   ' if row['met'] else 'MISSED'} {row['measure']}: {row['value']:.3g} {row['unit']}")
    print(f"  {'report':<18} {args.out}.md\n  {'data':<18} {args.out}.json")
    return 0
