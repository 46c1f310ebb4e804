"""Compression per family: size, latency and accuracy of ONNX fp32, INT8 and the distilled student.

For each family a teacher is trained (``train``), then ``pipelines.compression.stage.compress`` distills, exports,
quantizes and writes its report; sizes and accuracies come from that report (``compress_report.json``), and each INT8
file's bytes are split into int8 tensors, what stays fp32 or int32, and the graph (``export.size_breakdown``).
Latencies are measured again here, interleaved across the variants repeat by repeat (the report's own are taken one
variant after another), with the compress stage's timers (``compression.measure``): one thread, batch 1 and 64,
median of per-repeat p50 ratios against the teacher in eager PyTorch fp32.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dl_lightning.errors import clip
from pipelines.benchmarks.common import BenchContext, BenchResult, Row, interleave, median, quiet, ratio
from pipelines.config import Config, load_config

TITLE = "Compression per family: INT8 and distilled student vs PyTorch fp32"
FAMILIES = {
    "mlp": ["data.source=builtin:breast_cancer", "model.family=mlp"],
    "cnn": ["data.source=builtin:digits", "model.family=cnn"],
    "rnn": ["data.source=builtin:digits", "data.kind=sequence", "model.family=rnn"],
    "transformer": ["data.source=builtin:digits", "data.kind=sequence", "model.family=transformer"],
}
SMALLER, FASTER, DROP = 3.5, 2.0, 1.0  # targets: INT8 size, INT8 speed at batch 1 (mlp, cnn, rnn), points
# Teacher and student budgets. The student gets fewer epochs than its teacher, as in the shipped configs (digits_cnn:
# 25 and 15): 3 and 3 left every net far from converged (the CNN student at 74–82 %), where distillation's halved
# cross-entropy weight (alpha 0.5) costs more than the teacher's soft targets give.
EPOCHS = {"teacher": 15, "student": 10}
QUICK_EPOCHS = {"teacher": 1, "student": 1}


def family_config(ctx: BenchContext, family: str, epochs: dict[str, int]) -> Config:
    out = ctx.folder(f"compress-{family}")
    return load_config(
        None,
        [
            *FAMILIES[family],
            f"trainer.max_epochs={epochs['teacher']}",
            "trainer.threads=1",
            "tracking.enabled=false",
            f"compress.epochs={epochs['student']}",
            "compress.latency_repeats=10",
            "compress.max_student_drop=100",  # the benchmark reports drops; it does not gate on them
            "compress.max_int8_drop=100",
            f"output_dir={out}",
        ],
    )


def compress_family(ctx: BenchContext, family: str, epochs: dict[str, int]) -> dict[str, Any]:
    from pipelines import export
    from pipelines.compression.stage import compress
    from pipelines.train import load_data, train

    cfg = family_config(ctx, family, epochs)
    with quiet():
        trained = train(cfg)
        result = compress(cfg.with_overrides({"output_dir": f"{cfg.output_dir}/compressed"}), trained.best_checkpoint)
    report = json.loads(Path(result.report_json).read_text())
    sizes = {role: export.size_breakdown(path) for role, path in result.files.items()}
    test_size = len(load_data(cfg).test[0])
    return {"cfg": cfg, "checkpoint": trained.best_checkpoint, "files": result.files, "report": report} | {
        "sizes": sizes,
        "test_size": test_size,
    }


def latencies(ctx: BenchContext, job: dict[str, Any]) -> dict[str, list[dict[str, float]]]:
    """Per repeat, the p50 ms of every variant at batch 1 and 64, variants interleaved."""
    from dl_lightning.registry import load_model
    from pipelines import export
    from pipelines.compression.measure import onnx_latency, torch_latency
    from pipelines.train import load_data

    net = load_model(job["checkpoint"]).export_net()[0]
    test_x = load_data(job["cfg"]).test[0]
    batches = {b: np.ascontiguousarray(test_x[np.arange(b) % len(test_x)]) for b in (1, 64)}
    sessions = {role: export.open_session(path, threads=1) for role, path in job["files"].items()}
    calls = 10 if ctx.quick else 30

    def torch_p50() -> dict[str, float]:
        return {f"b{b}": torch_latency(net, x, calls)[0] for b, x in batches.items()}

    def onnx_p50(session) -> dict[str, float]:
        return {f"b{b}": onnx_latency(session, x, calls)[0] for b, x in batches.items()}

    variants = {"pytorch": torch_p50} | {role: (lambda s=s: onnx_p50(s)) for role, s in sessions.items()}
    return interleave(variants, ctx.repeats)


def family_rows(family: str, job: dict[str, Any], lat: dict[str, list[dict[str, float]]]) -> list[Row]:
    report = job["report"]
    rows = {r["model"]: r for r in report["rows"]}
    fp32 = rows["teacher fp32 (ONNX)"]
    int8 = next((r for name, r in rows.items() if name.startswith("teacher INT8")), None)
    out: list[Row] = []
    if int8 is not None:
        size = fp32["size_bytes"] / int8["size_bytes"]
        note = f"{int8['model']}; {_bytes_note(job['sizes']['teacher'], job['sizes']['teacher-int8'])}"
        out.append(Row(f"{family}: size fp32 → INT8", size, "× smaller", f"≥ {SMALLER:g}", size >= SMALLER, note))
    for b in ("b1", "b64"):
        torch_ms = [r[b] for r in lat["pytorch"]]
        for role in ("teacher", "teacher-int8", "student", "student-int8"):
            if role not in lat:
                continue
            speed, spread = ratio(torch_ms, [r[b] for r in lat[role]])
            gated = role == "teacher-int8" and b == "b1" and family != "transformer"
            out.append(
                Row(
                    f"{family}: speed-up {role} ONNX vs PyTorch fp32, batch {b[1:]}",
                    speed,
                    "×",
                    f"≥ {FASTER:g}" if gated else None,
                    speed >= FASTER if gated else None,
                    f"{median([r[b] for r in lat[role]]):.3f} ms vs {median(torch_ms):.3f} ms",
                    spread,
                )
            )
    out += accuracy_rows(family, report, rows, fp32, int8, job["test_size"])
    out += autotune_rows(family, report.get("autotune", {}).get("teacher"))
    return out


def autotune_rows(family: str, tuning: dict[str, Any] | None) -> list[Row]:
    """The autotuner's choice for the teacher (``compress.quantization=auto``): its speed over ONNX fp32 and why it
    won, with how many variants it tried; nothing under a fixed recipe."""
    if not tuning:
        return []
    chosen = tuning["attempts"][tuning["winner"]]
    tried = sum(a["status"] != "skipped" for a in tuning["attempts"])
    note = f"{chosen['variant']} of {tried} variants tried: {tuning['why']}"
    return [Row(f"{family}: autotuner's choice, speed vs ONNX fp32", chosen.get("speed") or 1.0, "×", note=note)]


def _bytes_note(fp32: dict[str, int], int8: dict[str, int]) -> str:
    """Where the INT8 file's bytes go, and the ratio its tensors alone would give (the graph's share excluded)."""
    tensors = int8["file"] - int8["graph"]
    return (
        f"INT8 file {_kb(int8['file'])}: int8 tensors {_kb(int8['int8'])}, fp32 {_kb(int8['float'])}, "
        f"int32 {_kb(int8['int32'])}, graph + metadata {_kb(int8['graph'])} (fp32 file's graph "
        f"{_kb(fp32['graph'])}); tensors alone {(fp32['file'] - fp32['graph']) / tensors:.2f}× smaller"
    )


def _kb(n: int) -> str:
    return f"{n / 1e3:.1f} kB"


def accuracy_rows(family: str, report: dict, rows: dict, fp32: dict, int8: dict | None, test_size: int) -> list[Row]:
    out = []
    if int8 is not None and fp32["metric"] is not None:
        drop = (fp32["metric"] - int8["metric"]) * 100
        out.append(Row(f"{family}: accuracy drop INT8 vs fp32", drop, "points", f"≤ {DROP:g}", drop <= DROP))
    student = rows.get("student fp32 (PyTorch)")
    teacher = rows.get("teacher fp32 (PyTorch)")
    if student and teacher and student["metric"] is not None:
        params = student["params"] / teacher["params"]
        out.append(
            Row(
                f"{family}: accuracy drop student vs teacher",
                (teacher["metric"] - student["metric"]) * 100,
                "points",
                note=f"student has {100 * params:.0f}% of the parameters",
            )
        )
    gain = report.get("student", {}).get("gain_over_scratch")
    if gain is not None:
        note = f"one seed; {test_size} test samples, so one sample is {100 / test_size:.2f} points"
        out.append(Row(f"{family}: distilled student − same student from scratch", gain, "points", note=note))
    return out


def run(ctx: BenchContext) -> BenchResult:
    epochs = QUICK_EPOCHS if ctx.quick else EPOCHS
    families = ["mlp", "cnn"] if ctx.quick else list(FAMILIES)
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for family in families:
        try:
            job = compress_family(ctx, family, epochs)
        except Exception as exc:  # one family's export bug must not hide the others' numbers
            failed[family] = f"{type(exc).__name__}: {_cause(exc)}"
            continue
        lat = latencies(ctx, job)
        rows += family_rows(family, job, lat)
        raw[family] = {"latency_p50_ms": lat, "report_rows": job["report"]["rows"], "bytes": job["sizes"]}
    setup = {"families": {f: FAMILIES[f] for f in families}}
    setup |= {"teacher_epochs": epochs["teacher"], "student_epochs": epochs["student"]}
    raw["failed"] = failed
    done = [f for f in families if f not in failed]
    text = interpretation(rows, done, raw) + "".join(
        f"\n- **{f}**: `dlforge compress` FAILED — {why} (a bug to fix in the compress/export stage)."
        for f, why in failed.items()
    )
    return BenchResult("compression", TITLE, rows, text, setup, raw)


def interpretation(rows: list[Row], families: list[str], raw: dict[str, Any]) -> str:
    lines = [family_line(family, rows, raw[family]["bytes"]) for family in families]
    lines.append(
        "- Why the speeds: at batch 1 these nets are tiny, so eager PyTorch's per-operator dispatch dominates and "
        "ONNX Runtime's graph wins even in fp32; INT8 then helps only where integer kernels beat the cost of "
        "quantizing activations (larger matrices, batch 64), and can lose at batch 1 on nets this small. At batch 64 "
        "compute dominates and the gaps shrink. Static QDQ INT8 on the CNN needs calibration (the report's "
        "calibration batches)."
    )
    lines.append(
        "- Why the sizes: int8 weights are 4× smaller than fp32 ones by construction; what stays is biases (fp32, or "
        "int32 in QDQ), layer norms, position tables, one scale and zero point per quantized tensor, and the graph "
        "itself. Both files are slimmed (`export.slim_onnx`): no exporter stack traces in node metadata, no "
        "intermediate shape annotations, no unused initializers or opset imports. What the graph still costs is "
        "a fixed few kB — the quantized graph has more nodes than the fp32 one (QuantizeLinear/DequantizeLinear "
        "pairs, MatMulInteger → Cast → Mul → Add per layer) — so the smaller the net, the further below 4× it lands; "
        "the size row's note gives the ratio of the tensors alone."
    )
    lines.append(
        "- Distillation: the student gets fewer epochs than its teacher (as in the shipped configs) and the same "
        "budget, seed and initial weights as its from-scratch twin; one seed, and one test sample is 0.4 (digits) to "
        "1.2 (breast cancer) points. A student still far from converged pays for alpha 0.5 halving its cross-entropy "
        "weight more than the soft targets give back: the LSTM student at 10 epochs scored 2.6–4.1 points below "
        "scratch over three seeds when checked, while on digits_cnn.yaml's budget (teacher 25, student 15 epochs) "
        "the distilled CNN student was 0.7 points ahead."
    )
    return "\n".join(lines)


def family_line(family: str, rows: list[Row], sizes: dict[str, dict[str, int]]) -> str:
    mine = {r.measure.split(": ", 1)[1]: r for r in rows if r.measure.startswith(f"{family}:")}
    size = mine.get("size fp32 → INT8")
    fast = mine.get("speed-up teacher-int8 ONNX vs PyTorch fp32, batch 1")
    onnx = mine.get("speed-up teacher ONNX vs PyTorch fp32, batch 1")
    drop = mine.get("accuracy drop INT8 vs fp32")
    gain = mine.get("distilled student − same student from scratch")
    parts = [f"- **{family}**:"]
    if size and "teacher-int8" in sizes:
        fp32, int8 = sizes["teacher"], sizes["teacher-int8"]
        tensors = (fp32["file"] - fp32["graph"]) / (int8["file"] - int8["graph"])
        parts.append(
            f"INT8 is {size.value:.2f}× smaller ({_met(size)}); of its {_kb(int8['file'])}, {_kb(int8['graph'])} "
            f"({100 * int8['graph'] / int8['file']:.0f}%) is graph and metadata, and its tensors alone are "
            f"{tensors:.2f}× smaller than the fp32 ones;"
        )
    if fast:
        parts.append(f"at batch 1 it runs {fast.value:.1f}× faster than eager PyTorch ({_met(fast)})")
    if fast and onnx:
        parts.append(f"— ONNX fp32 alone is {onnx.value:.1f}×, so INT8 itself adds {fast.value / onnx.value:.2f}×;")
    if drop:
        parts.append(f"accuracy moves by {-drop.value:+.2f} points ({_met(drop)}).")
    if gain:
        parts.append(f"The distilled student scores {gain.value:+.2f} points against the same student from scratch.")
    return " ".join(parts)


def _met(row: Row) -> str:
    if row.met is None:
        return "no target"
    return f"target {row.target}: {'met' if row.met else 'missed'}"


def _cause(exc: BaseException) -> str:
    """The innermost exception's first line: exporters wrap the real reason in pages of advice."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return clip(" ".join(lines[:2]), 300) if lines else type(exc).__name__
