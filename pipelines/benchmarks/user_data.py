"""The main job on data no shipped config uses: ``dlforge run data.source=… model.family=…`` with defaults only.

What a new user gets the first time (issue 13, points 6 and 8): the default sweep, the teacher, its distilled
student (≤ ¼ of its parameters), INT8, the gates and a champion — with no config file and no code. The data sets
are the quality section's (:mod:`pipelines.benchmarks.quality_data`), each run by the family a user would pick for
it. One run per data set, in a fresh process, tracking into a temporary sqlite store; every figure comes from the
``summary.json`` and ``compress_report.json`` the command wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.benchmarks import quality_data
from pipelines.benchmarks.common import BenchContext, BenchResult, Row, timed_dlforge

TITLE = "Main job on data no config ships: dlforge run with defaults ends with a champion"
MAX_STUDENT_DROP = 2.0  # compress.max_student_drop's default, in points
MAX_PARAMS = 0.25  # compress.student.max_params's default

# data set → (maker, examples, the family a user would pick for it)
CASES = {
    "gray 20×20 images": (quality_data.gray_digits, 1200, "cnn"),
    "RGB 24×24 images": (quality_data.rgb_shapes, 1000, "cnn"),
    "1-D signals (NPZ)": (quality_data.signals, 1200, "rnn"),
    "tabular (CSV)": (quality_data.tabular, 1500, "mlp"),
    "text (made-up reviews)": (quality_data.review_sentences, 2000, "transformer"),
}


def run(ctx: BenchContext) -> BenchResult:
    folder = ctx.folder("user_data")
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    for data, (maker, n, family) in CASES.items():
        source = maker(folder, n=n // 10 if ctx.quick else n)
        raw[data] = run_case(folder / family / Path(source).stem, source, family, ctx.quick)
        rows += case_rows(f"{family} on {data}", raw[data])
    setup = {"cases": {data: family for data, (_, _, family) in CASES.items()}, "examples": _sizes(), "runs": 1}
    return BenchResult("user_data", TITLE, rows, _interpretation(raw), setup, raw)


def run_case(out: Path, source: str, family: str, quick: bool) -> dict[str, Any]:
    """``dlforge run`` on ``source`` with ``family`` and nothing else set; what it wrote, condensed."""
    command = ["run", f"data.source={source}", f"model.family={family}", f"output_dir={out / 'job'}"]
    command += [f"tracking.uri=sqlite:///{out / 'mlflow.db'}", *(["--quick"] if quick else [])]
    wall, proc = timed_dlforge(*command)
    summary_file = out / "job" / "summary.json"
    if not summary_file.is_file():
        return {"exit": proc.returncode, "wall_s": wall, "error": proc.stderr.strip()[-300:]}
    summary = json.loads(summary_file.read_text())
    report = json.loads(Path(summary["paths"]["compress_report_json"]).read_text())
    accuracy = {row["key"]: row["metric"] for row in report["rows"]}
    return {
        "exit": proc.returncode,
        "wall_s": wall,
        "champion": summary["champion"],
        "champion_uri": summary["registry"].get("uri"),
        "accuracy": accuracy,
        "student": report.get("student") or {},
        "failed_gates": [g["name"] for g in summary["gates"] if not g["passed"]],
        "stage_seconds": summary["stage_seconds"],
    }


def case_rows(name: str, case: dict[str, Any]) -> list[Row]:
    """A champion row (exit 0 with a champion), and where a student was trained: its drop and its gain."""
    if "error" in case:
        return [Row(f"{name}: champion", None, "", "exit 0", False, f"exit {case['exit']}: {case['error']}")]
    accuracy, student = case["accuracy"], case["student"]
    teacher = accuracy.get("teacher_fp32_pytorch")
    champion_note = (
        f"{case['champion']}; teacher {teacher:.3f}; failed gates: {', '.join(case['failed_gates']) or 'none'}"
    )
    met = case["exit"] == 0 and bool(case["champion"])
    rows = [Row(f"{name}: champion's test accuracy", _champion_accuracy(case), "", "exit 0", met, champion_note)]
    distilled = accuracy.get("student_fp32_pytorch")
    if distilled is not None and teacher is not None:
        ratio = student.get("params_ratio", float("nan"))
        drop = 100 * (teacher - distilled)
        fits = drop <= MAX_STUDENT_DROP and ratio <= MAX_PARAMS
        note = f"student {distilled:.3f} at {ratio:.2f}× the teacher's parameters"
        rows.append(Row(f"{name}: teacher − student", drop, "points", f"≤ {MAX_STUDENT_DROP:g}", fits, note))
    if "gain_over_scratch" in student:
        rows.append(Row(f"{name}: distilled − scratch", student["gain_over_scratch"], "points", note="one seed"))
    return rows


def _champion_accuracy(case: dict[str, Any]) -> float | None:
    """The champion artifact's test accuracy: its ONNX row (what ships), else its PyTorch row."""
    champion, accuracy = case["champion"] or "", case["accuracy"]
    kind = champion.replace("-int8", "")
    precision = "int8" if champion.endswith("-int8") else "fp32"
    for key in (f"{kind}_{precision}_onnx", f"{kind}_{precision}_pytorch"):
        if key in accuracy:
            return accuracy[key]
    return None


def _sizes() -> dict[str, int]:
    return {data: n for data, (_, n, _) in CASES.items()}


def _interpretation(raw: dict[str, Any]) -> str:
    with_champion = [d for d, c in raw.items() if c.get("exit") == 0 and c.get("champion")]
    minutes = sum(c["wall_s"] for c in raw.values()) / 60
    return (
        f"`dlforge run` with defaults ended with a champion and exit 0 on {len(with_champion)} of {len(raw)} data sets "
        f"no shipped config uses ({minutes:.0f} min in all, sweep included). One run each: a single seed moves a "
        "test accuracy on 150–300 examples by ±2–4 points; the distillation section measures the student over seeds."
    )
