"""The pipeline's report: ``report.md`` (images beside it) and a self-contained ``report.html`` (images inlined).

It reads the stages' typed results (:class:`pipelines.stage_results.StageResults`), nothing else.
"""

from __future__ import annotations

import base64
import dataclasses
import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.compression.tables import AUTOTUNE_COLUMNS, COLUMNS, autotune_cells, result_summary, table_cells, verdict
from pipelines.config import Config
from pipelines.outputs import write_text_atomic

if TYPE_CHECKING:
    from pipelines.compression.results import CompressResult
    from pipelines.stage_results import PromoteResult, StageResults
    from pipelines.sweep import SweepResult
    from pipelines.train_stage import TrainStageResult

Block = tuple[str, Any]  # ("h2", text) | ("p", text) | ("table", (header, rows)) | ("img", path)


def write_reports(cfg: Config, stages: StageResults, out: Path) -> tuple[Path, Path]:
    """Both reports from the same blocks, written atomically into ``out``."""
    blocks = report_blocks(cfg, stages)
    md = write_text_atomic(out / "report.md", to_markdown(blocks, out))
    page = write_text_atomic(out / "report.html", to_html(blocks, title=f"dlforge — {cfg.model.family}"))
    return md, page


def report_blocks(cfg: Config, stages: StageResults) -> list[Block]:
    blocks: list[Block] = [("h1", f"dlforge pipeline — {cfg.model.family} on {cfg.data.source}")]
    if stages.sweep is not None:
        blocks += _sweep_blocks(stages.sweep)
    blocks += _train_blocks(stages.train)
    blocks += _compress_blocks(stages.compress)
    blocks += _registry_blocks(stages.promote)
    return blocks


def _sweep_blocks(sweep: SweepResult) -> list[Block]:
    keys = sorted({k for t in sweep.trials for k in t.get("params", {})})
    header = ["trial", "status", "epochs", f"best {sweep.metric}", *keys]
    rows = [
        [t["trial_id"], t["status"], t["epochs"], _num(t["best"]), *(_num(t["params"].get(k)) for k in keys)]
        for t in sweep.trials
    ]
    chosen = ", ".join(f"{k}={_num(v)}" for k, v in sweep.best_overrides.items())
    best = f"Best {sweep.metric} = {_num(sweep.best_metric)} with {chosen}."
    blocks: list[Block] = [("h2", "Sweep"), ("p", best), ("table", (header, rows))]
    blocks += [("img", sweep.plot)] if sweep.plot else []
    if importance := sweep.importance:
        ranked = ", ".join(f"{k} {v:.0%}" for k, v in importance.items())
        blocks.append(("p", f"Hyperparameter importance (fANOVA over the trials): {ranked}."))
    return blocks + [("img", path) for path in sweep.insight_plots.values()]


def _train_blocks(train: TrainStageResult) -> list[Block]:
    rows = [[name, _num(value)] for name, value in sorted(train.result.metrics.items())]
    blocks: list[Block] = [("h2", "Final training"), ("table", (["metric", "value"], rows))]
    if train.result.extra.get("init_from"):  # model.init_from: where the starting weights came from
        from pipelines.finetune import summary_line

        blocks.append(("p", f"Started from {summary_line(train.result.extra)}."))
    out = Path(train.result.output_dir)
    images = sorted((out / "review").glob("*.png")) + sorted((out / "samples").glob("*.png"))[-1:]
    return blocks + [("img", str(p)) for p in images]


def _compress_blocks(compress: CompressResult) -> list[Block]:
    rows = [table_cells(dataclasses.asdict(r)) for r in compress.rows]
    gates = [
        ["PASS" if g.passed else "FAIL", g.name, g.detail, ", ".join(g.guards or ["every artifact"])]
        for g in compress.gates
    ]
    blocks: list[Block] = [("h2", "Compression (latency: one thread)"), ("table", (list(COLUMNS), rows))]
    if student := _student_line(compress.student):
        blocks.append(("p", student))
    for role, tuning in compress.autotune.items():
        blocks += [("h2", f"Quantization autotuner — {role}"), ("p", f"Shipped: {tuning['why']}.")]
        blocks.append(("table", (list(AUTOTUNE_COLUMNS), autotune_cells(tuning))))
    blocks += [("h2", "Gates"), ("table", (["result", "gate", "detail", "guards"], gates))]
    return blocks + [("p", verdict(result_summary(compress)) + ".")]


def _student_line(student: dict[str, Any]) -> str:
    if "params_ratio" not in student:
        return ""
    line = f"Student: {student['family']} at {student['params_ratio']:.0%} of the teacher's parameters"
    line += f", {student['epochs']} epochs" if "epochs" in student else ""
    if "gain_over_scratch" in student:
        line += f"; distilled − same student from scratch: {student['gain_over_scratch']:+.2f} points"
    line += f"; started from the teacher's weights ({student['inherited']})" if "inherited" in student else ""
    if members := student.get("ensemble_members"):  # compress.teacher=ensemble
        line += f"; taught by the ensemble of the {len(members)} best sweep trials (its own row in the table)"
        if (gain := student.get("gain_over_single_teacher")) is not None:
            line += f"; ensemble-taught − taught by the teacher alone: {gain:+.2f} points"
    return line + "."


def _registry_blocks(promote: PromoteResult | None) -> list[Block]:
    if promote is None:
        return [("h2", "Registry"), ("p", "Tracking is off: nothing was registered.")]
    artifact = f" ({promote.model})" if promote.model else ""
    lead = (
        f"Champion: {promote.name} version {promote.champion}{artifact}."
        if promote.champion
        else "No artifact has passed its own gates yet: no champion."
    )
    blocks: list[Block] = [("h2", "Registry"), ("p", lead), _versions_table(promote)]
    trained = promote.trained
    if trained and trained.name != promote.name:
        best = trained.champion
        text = f"Trained PyTorch model {trained.name}" + (f": champion version {best}." if best else ".")
        blocks += [("p", text), _versions_table(trained)]
    return blocks


def _versions_table(listing: PromoteResult) -> Block:
    header = ["version", "artifact", "aliases", "gates", "metric", "run"]
    rows = [
        [v["version"], v.get("model") or "—", ", ".join(v["aliases"]), v["gates"], _num(v["metric"]), v["run_id"]]
        for v in listing.versions
    ]
    return ("table", (header, rows))


# ---------------------------------------------------------------- rendering


def to_markdown(blocks: list[Block], out: Path) -> str:
    lines: list[str] = []
    for kind, value in blocks:
        if kind in ("h1", "h2"):
            lines += [f"{'#' * int(kind[1])} {value}", ""]
        elif kind == "p":
            lines += [str(value), ""]
        elif kind == "table":
            header, rows = value
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""]
        elif kind == "img":
            lines += [f"![{Path(value).stem}]({_relative(Path(value), out)})", ""]
    return "\n".join(lines)


def to_html(blocks: list[Block], *, title: str) -> str:
    body = []
    for kind, value in blocks:
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{html.escape(str(value))}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{html.escape(str(value))}</p>")
        elif kind == "table":
            body.append(_html_table(*value))
        elif kind == "img" and Path(value).is_file():
            data = base64.b64encode(Path(value).read_bytes()).decode()
            body.append(f'<img alt="{html.escape(Path(value).stem)}" src="data:image/png;base64,{data}">')
    return _PAGE.format(title=html.escape(title), body="\n".join(body))


def _html_table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _relative(path: Path, out: Path) -> str:
    try:
        return str(path.relative_to(out))
    except ValueError:
        return str(path)


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 14px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
img {{ max-width: 100%; margin: 0.5em 0; border: 1px solid #eee; }}
</style></head>
<body>
{body}
</body></html>
"""
