"""The pipeline's parent run as the front page of a job: headline metrics, a description, links and report images.

A reviewer lands on the parent run (the one collapsed row of the runs table). It gets, under stable names so the
runs table can show them as columns and runs compare across jobs:

- metrics ``teacher/<m>``, ``int8/<m>``, ``student/<m>``, ``champion/<m>`` (``<m>``: the test metric's leaf, ``acc``
  or ``mse``), ``<same>/size_mb`` and ``<same>/latency_b1_ms`` (batch-1 p50, one thread), ``gates/passed`` and
  ``gates/failed`` (counts);
- tags ``dlforge.champion`` (artifact), ``dlforge.champion_model`` (``models:/NAME/VERSION``),
  ``dlforge.gates_failed``, ``dlforge.<stage>_run_id`` for each child run;
- a markdown description (MLflow's run description) naming the champion and the gates;
- the runs table's columns: the experiment's shared view (``tracking.share_runs_view``) shows these metrics, which
  MLflow's default view never does; ``dlforge ui`` prints the link that opens it;
- the images ``report.md`` links, under the same relative paths, so the report reads right inside the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipelines import tracking
from pipelines.config import Config

if TYPE_CHECKING:
    from pipelines.compression.results import Row
    from pipelines.stage_results import StageResults

# Headline name → compress row key (fallbacks in order): the shipped file of each kind.
ROLES = {
    "teacher": ("teacher_fp32_pytorch",),
    "int8": ("teacher_int8_onnx",),
    "student": ("student_fp32_onnx", "student_fp32_pytorch"),
}
SIZE_AND_SPEED = ("size_mb", "latency_b1_ms")
# Artifact key (``CompressResult.files``) → the row that measured it.
ARTIFACT_ROWS = {
    "teacher": "teacher_fp32_onnx",
    "teacher-int8": "teacher_int8_onnx",
    "student": "student_fp32_onnx",
    "student-int8": "student_int8_onnx",
    "ensemble": "ensemble_fp32_onnx",
    "ensemble-int8": "ensemble_int8_onnx",
}


def publish(cfg: Config, parent: str | None, stages: StageResults, out: Path) -> None:
    """Log the headline metrics, tags, description and report images to the parent run; nothing when it is None."""
    if parent is None:
        return
    metrics = headline_metrics(stages)
    tracking.log_metrics(parent, metrics)
    tracking.set_tags(parent, headline_tags(stages))
    tracking.share_runs_view(parent, table_columns(metrics), ["dlforge.champion", "dlforge.gates_failed"])
    tracking.set_description(parent, description(cfg, stages))
    for image in report_images(cfg, stages, out):
        folder = image.relative_to(out).parent if image.is_relative_to(out) else Path("images")
        tracking.log_artifact(parent, image, None if str(folder) == "." else str(folder))


def headline_metrics(stages: StageResults) -> dict[str, float]:
    """Metrics of the teacher, its INT8 file, the student and the champion; gate counts. Absent rows are left out."""
    compress, leaf = stages.compress, metric_leaf(stages)
    rows = {row.key: row for row in compress.rows}
    metrics: dict[str, float] = {}
    for role, keys in ROLES.items():
        metrics |= _row_metrics(role, leaf, next((rows[k] for k in keys if k in rows), None))
    metrics |= _row_metrics("champion", leaf, rows.get(ARTIFACT_ROWS.get(champion_artifact(stages) or "", "")))
    gates = compress.gates
    passed = sum(g.passed for g in gates)
    return metrics | {"gates/passed": float(passed), "gates/failed": float(len(gates) - passed)}


def table_columns(metrics: dict[str, float]) -> list[str]:
    """The runs table's metric columns, few enough to fit beside the run name: the champion's metric, size and
    latency, the teacher's, INT8's and student's metric, the gate counts (every headline stays on the run page)."""
    roles = ["champion", *ROLES, "gates"]

    def order(name: str) -> tuple[int, int]:
        role, _, what = name.partition("/")
        return roles.index(role), 1 + SIZE_AND_SPEED.index(what) if what in SIZE_AND_SPEED else 0

    shown = [n for n in metrics if n.startswith(("champion/", "gates/")) or n.partition("/")[2] not in SIZE_AND_SPEED]
    return sorted((n for n in shown if n.partition("/")[0] in roles), key=order)


def metric_leaf(stages: StageResults) -> str:
    """The test metric's last part (``acc``, ``mse``; ``metric`` when the stage measured none, as for the GAN)."""
    return (stages.compress.metric or "metric").split("/")[-1]


def _row_metrics(role: str, leaf: str, row: Row | None) -> dict[str, float]:
    if row is None:
        return {}
    metrics = {f"{role}/size_mb": row.size_bytes / 1e6, f"{role}/latency_b1_ms": row.latency_ms["b1_p50"]}
    return metrics | ({f"{role}/{leaf}": float(row.metric)} if row.metric is not None else {})


def champion_artifact(stages: StageResults) -> str | None:
    """The shipped artifact: the one promoted in the registry, else the compress stage's choice."""
    promote = stages.promote
    if promote is not None and (promote.model or promote.champion):
        return promote.model
    return stages.compress.champion


def champion_uri(stages: StageResults) -> str | None:
    """``models:/NAME/VERSION`` of the promoted champion, or None when nothing was promoted."""
    promote = stages.promote
    return f"models:/{promote.name}/{promote.champion}" if promote is not None and promote.champion else None


def headline_tags(stages: StageResults) -> dict[str, str]:
    """Champion, its registry version, failed gates and the child runs' ids; empty values left out."""
    failed = [g.name for g in stages.compress.failed]
    tags = {
        "dlforge.champion": champion_artifact(stages) or "none",
        "dlforge.champion_model": champion_uri(stages),
        "dlforge.gates_failed": ", ".join(failed) or "none",
        "dlforge.sweep_run_id": stages.sweep.run_id if stages.sweep is not None else None,
        "dlforge.train_run_id": stages.train.result.run_id,
        "dlforge.compress_run_id": stages.compress.run_id,
    }
    return {k: str(v) for k, v in tags.items() if v}


def description(cfg: Config, stages: StageResults) -> str:
    """A short markdown summary of the job: what ran, the champion, the headline numbers and the gates."""
    metrics, leaf = headline_metrics(stages), metric_leaf(stages)
    champion, uri = champion_artifact(stages), champion_uri(stages)
    lines = [f"**dlforge pipeline**: {cfg.model.family} on `{cfg.data.source}`.", ""]
    lines.append(f"**Champion:** {champion}" + (f" (`{uri}`)" if uri else "") if champion else "**Champion:** none")
    # the gates before the table: the run page shows a description's first lines until "Show more" is clicked
    lines += ["", _gates_line(stages), "", f"| | {leaf} | size (MB) | latency b1 (ms) |", "|---|---|---|---|"]
    for role in (*ROLES, "champion"):
        if f"{role}/size_mb" in metrics:  # every measured row has a size and a latency
            metric = metrics.get(f"{role}/{leaf}")
            shown = "—" if metric is None else f"{metric:.4g}"
            size, latency = metrics[f"{role}/size_mb"], metrics[f"{role}/latency_b1_ms"]
            lines.append(f"| {role} | {shown} | {size:.3g} | {latency:.3g} |")
    return "\n".join([*lines, "", "Full report: `report.md` / `report.html` (artifacts)."])


def _gates_line(stages: StageResults) -> str:
    gates = stages.compress.gates
    shown = ", ".join(f"{'✓' if g.passed else '✗'} {g.name}" for g in gates)
    return f"**Gates:** {sum(g.passed for g in gates)}/{len(gates)} passed" + (f": {shown}" if shown else "")


def report_images(cfg: Config, stages: StageResults, out: Path) -> list[Path]:
    """The image files ``report.md`` links (those that exist)."""
    from pipelines.report import report_blocks

    return [Path(value) for kind, value in report_blocks(cfg, stages) if kind == "img" and Path(value).is_file()]
