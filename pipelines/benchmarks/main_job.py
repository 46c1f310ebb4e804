"""The main job's wall time by stage — a hook until ``dlforge run`` exists.

When the pipeline command lands, implement ``run`` here: time the README's main command after set-up (the
``summary.json`` of ``dlforge run`` should carry per-stage wall times), as stage / total fractions plus the total.
Until then the benchmark reports itself as skipped, so the runner and the doc already have its place.
"""

from __future__ import annotations

from pipelines.benchmarks.common import BenchContext, BenchResult, skipped

TITLE = "Main job: wall time by stage (dlforge run)"


def run(ctx: BenchContext) -> BenchResult:
    from pipelines.cli import COMMANDS

    if "run" not in COMMANDS:
        return skipped("main_job", TITLE, "`dlforge run` does not exist yet; this benchmark is a hook for it.")
    return skipped("main_job", TITLE, "`dlforge run` exists now: implement pipelines/benchmarks/main_job.py.")
