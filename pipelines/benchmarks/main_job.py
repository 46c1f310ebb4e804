"""The main job's wall time by stage: the README's first command (``dlforge run configs/digits_cnn.yaml``).

One run, not five: the job takes minutes, and what matters is where its time goes. Stage times come from the
``stage_seconds`` that ``dlforge run`` writes into ``summary.json``; the run uses a temporary tracking store.
"""

from __future__ import annotations

import json

from pipelines.benchmarks.common import MAIN_CONFIG, BenchContext, BenchResult, Row, timed_dlforge

TITLE = "Main job: wall time by stage (dlforge run)"
TARGET_S = 600.0  # issue 6: ≤ 10 minutes on 2 cores after set-up


def run(ctx: BenchContext) -> BenchResult:
    out = ctx.folder("main_job")
    command = ["run", str(MAIN_CONFIG), f"output_dir={out / 'job'}", f"tracking.uri=sqlite:///{out / 'mlflow.db'}"]
    command += ["--quick"] if ctx.quick else []
    wall, proc = timed_dlforge(*command)
    summary_file = out / "job" / "summary.json"
    if not summary_file.is_file():
        return BenchResult("main_job", TITLE, [], f"the job failed: {proc.stderr.strip()[-300:]}", status="error")
    stages = json.loads(summary_file.read_text())["stage_seconds"]
    rows = [
        Row(f"stage {name}", seconds, "s", note=f"{seconds / wall:.0%} of the job") for name, seconds in stages.items()
    ]
    rows.append(
        Row("whole command (imports, checks, report included)", wall, "s", f"≤ {TARGET_S:.0f} s", wall <= TARGET_S)
    )
    return BenchResult("main_job", TITLE, rows, _interpretation(wall, stages), {"command": " ".join(command)})


def _interpretation(wall: float, stages: dict[str, float]) -> str:
    slowest = max(stages, key=stages.get)
    verdict = "within" if wall <= TARGET_S else "over"
    return (
        f"The main job took {wall:.0f} s, {verdict} the {TARGET_S:.0f} s target; the slowest stage is {slowest} "
        f"({stages[slowest]:.0f} s). One run: the job is minutes long and its stage shares are what matter."
    )
