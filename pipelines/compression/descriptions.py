"""What a reviewer reads about the compress stage in the dashboard: each registered ONNX version's description, the
registered model's, and the compress run's (its files, their numbers and gates, links to their registry versions).

Links are dashboard-relative (``#/experiments/…``, ``#/models/…``), so they work on whatever host and port serves it.
"""

from __future__ import annotations

from pipelines.compression.results import CompressResult, Gate, Row

# Artifact key (``CompressResult.files``) → what the file is, in words.
KINDS = {
    "teacher": "the trained model (the teacher), fp32",
    "teacher-int8": "the teacher quantized to INT8",
    "student": "the distilled student, fp32",
    "student-int8": "the distilled student quantized to INT8",
    "ensemble": "the best sweep trials as one graph (their class probabilities averaged), fp32",
    "ensemble-int8": "the ensemble of the best sweep trials quantized to INT8",
    "generator": "the GAN's generator, fp32",
    "generator-int8": "the GAN's generator quantized to INT8",
}


def kind_of(key: str) -> str:
    """The artifact ``key`` in words (the key itself when it is not a known kind)."""
    return KINDS.get(key, key)


def recipe_of(meta: dict) -> str:
    """A file's quantization recipe in words, from its ONNX metadata (``none`` for an fp32 file)."""
    mode = meta.get("quantization", "none")
    if mode != "static":
        return mode
    parts = ["static", "per-channel" if meta.get("per_channel") else "per-tensor"]
    parts += [f"{meta['calibration']} calibration"] if meta.get("calibration") else []
    kept = meta.get("kept_float") or []
    return ", ".join(parts + ([f"{len(kept)} nodes kept in float"] if kept else []))


def row_of(result: CompressResult, key: str) -> Row:
    """The report row that measured file ``key``."""
    return next(r for r in result.rows if r.file == result.files[key])


def gates_of(result: CompressResult, key: str) -> list[Gate]:
    """The gates that guard ``key``: those naming it, and those guarding every artifact."""
    return [g for g in result.gates if not g.guards or key in g.guards]


def version_description(
    key: str, result: CompressResult, *, recipe: str, model_ref: str, run_link: str | None, teacher_link: str | None
) -> str:
    """Markdown for one registered ONNX version: what it is, its numbers, its gates, how to serve it, where from."""
    row = row_of(result, key)
    lines = [f"**{key}**: {kind_of(key)}, one ONNX file (quantization recipe: `{recipe}`).", ""]
    lines += [*_numbers_table(result.metric, [row]), "", _gates_text(gates_of(result, key)), ""]
    lines.append(
        f'Serve it: `mlflow.pyfunc.load_model("{model_ref}").predict(df)` or `dlforge predict {model_ref} input.csv`'
        " — labels and class probabilities (values for regression), the same either way."
    )
    made_by = f"Made by [the compress run]({run_link})" if run_link else "Made by the compress run"
    lines += ["", made_by + (f" from [the teacher's training run]({teacher_link})." if teacher_link else ".")]
    return "\n".join(lines)


def model_description(name: str, champion_alias: str, aliases: dict[str, str]) -> str:
    """Markdown for the registered ONNX model: one model, every shipped artifact kind a version of it."""
    shown = ", ".join(f"`@{alias}` ({key})" for key, alias in aliases.items())
    return "\n".join(
        [
            f"**{name}**: every ONNX file dlforge shipped for this experiment, one version each. The tag "
            "`dlforge.model` says which artifact a version is (teacher, teacher-int8, student, student-int8); "
            f"each kind's newest version has its alias: {shown}.",
            "",
            f"`@{champion_alias}` is the artifact `dlforge run` promoted; each version's description gives its "
            "recipe, test metric, size, latency and gates.",
        ]
    )


def run_description(result: CompressResult, versions: dict[str, str], links: dict[str, str]) -> str:
    """Markdown for the compress run: every file it produced (``onnx/`` artifacts), its numbers, gates and, when
    registered, a link to its registry version (``versions``/``links``: artifact key → version, link)."""
    lines = ["**Compress**: " + _gates_text(result.gates), "", _files_table(result, versions, links)]
    lines += ["", "The files are under `onnx/` in this run's artifacts; the full report under `compress/`."]
    return "\n".join(lines)


def _files_table(result: CompressResult, versions: dict[str, str], links: dict[str, str]) -> str:
    leaf = (result.metric or "metric").split("/")[-1]
    lines = [f"| artifact | {leaf} | size | gates | registry |", "|---|---|---|---|---|"]
    for key in result.files:
        row, gates = row_of(result, key), gates_of(result, key)
        passed = "passed" if all(g.passed for g in gates) else "failed"
        registry = f"[version {versions[key]}]({links[key]})" if key in versions else "not registered"
        lines.append(f"| {key} | {_metric(row.metric)} | {_size(row.size_bytes)} | {passed} | {registry} |")
    return "\n".join(lines)


def _numbers_table(metric: str | None, rows: list[Row]) -> list[str]:
    lines = [f"| {metric or 'metric'} | size | latency, batch 1 (p50) |", "|---|---|---|"]
    for row in rows:
        latency = row.latency_ms.get("b1_p50")
        shown = "—" if latency is None else f"{latency:.3g} ms"
        lines.append(f"| {_metric(row.metric)} | {_size(row.size_bytes)} | {shown} |")
    return lines


def _gates_text(gates: list[Gate]) -> str:
    passed = sum(g.passed for g in gates)
    shown = "; ".join(f"{'✓' if g.passed else '✗'} {g.name} ({g.detail})" for g in gates)
    return f"**Gates:** {passed}/{len(gates)} passed" + (f" — {shown}" if shown else "")


def _metric(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _size(size_bytes: int) -> str:
    return f"{size_bytes / 1e3:.1f} kB" if size_bytes < 1e6 else f"{size_bytes / 1e6:.2f} MB"
