"""The compress stage in the tracking store: its run, flat metrics, report files, and a registered ONNX version of
every artifact whose own gates passed (the champion also under ``candidate``).

MLflow metrics are ``compress/<row key>/<what>``: the row keys are stable (``teacher_fp32_pytorch``,
``teacher_fp32_onnx``, ``teacher_int8_onnx``, ``student_…``, ``student_scratch_pytorch``) whatever the quantization
recipe, so runs compare column by column; ``<what>`` is ``acc`` or ``mse`` (the test metric), ``params``,
``size_bytes``, ``parity_max_abs_diff``, ``latency_b1_p50_ms``…; gates are ``compress/gate/<name>`` (1 passed, 0
failed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dl_lightning.errors import InputError
from pipelines import export, predict, tracking
from pipelines.compression import descriptions
from pipelines.compression.measure import Probe
from pipelines.compression.results import CompressResult
from pipelines.compression.teacher import Teacher
from pipelines.config import Config

# Each shipped file is a version of <experiment>-<family>-onnx under its own alias (the generator counts as teacher).
ONNX_ALIASES = {
    "teacher": "fp32",
    "teacher-int8": "int8",
    "student": "student",
    "student-int8": "student-int8",
    "ensemble": "ensemble",  # compress.teacher=ensemble: the best sweep trials as one graph
    "ensemble-int8": "ensemble-int8",
}


@contextlib.contextmanager
def tracked(cfg: Config, teacher: Teacher, parent_run_id: str | None) -> Iterator[str | None]:
    """The compress job's MLflow run (a child of ``parent_run_id`` when given), or ``None`` with tracking off."""
    if not cfg.tracking.enabled:
        yield None
        return
    name = f"compress {teacher.family}-{tracking.dataset_name(cfg.data.source)}"
    tags = {
        "dlforge.family": teacher.family,  # the teacher's, whatever model.family the config holds
        "dlforge.teacher_run_id": teacher.run_id or "",
        "dlforge.teacher_checkpoint": teacher.checkpoint,
    }
    with tracking.job_run(cfg, name=name, kind="compress", parent_run_id=parent_run_id, tags=tags) as run_id:
        yield run_id


def report_metrics(result: CompressResult) -> dict[str, float]:
    """Flat MLflow metrics: ``compress/<row key>/<what>``, ``compress/gate/<gate>`` (1/0), ``compress/passed``."""
    metrics: dict[str, float] = {}
    leaf = (result.metric or "metric").split("/")[-1]  # acc | mse
    for row in result.rows:
        key = f"compress/{row.key or _slug(row.model)}"
        metrics[f"{key}/size_bytes"] = float(row.size_bytes)
        metrics[f"{key}/params"] = float(row.params)
        if row.metric is not None:
            metrics[f"{key}/{leaf}"] = row.metric
        if row.parity_max_abs_diff is not None:
            metrics[f"{key}/parity_max_abs_diff"] = row.parity_max_abs_diff
        metrics |= {f"{key}/latency_{k}_ms": v for k, v in row.latency_ms.items()}
    for gate in result.gates:
        metrics[f"compress/gate/{_slug(gate.name)}"] = float(gate.passed)
    metrics["compress/passed"] = float(result.passed)
    for role, tuning in result.autotune.items():  # the autotuner's pick: its speed vs fp32, and how many it timed
        attempts = tuning["attempts"]
        metrics[f"compress/autotune/{role}/speed_vs_fp32"] = float(attempts[tuning["winner"]]["speed"] or 1.0)
        metrics[f"compress/autotune/{role}/variants_measured"] = float(sum(a["speed"] is not None for a in attempts))
    for what in ("params_ratio", "gain_over_scratch", "gain_over_single_teacher"):
        if what in result.student:
            metrics[f"compress/student/{what}"] = float(result.student[what])
    return metrics


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def registered_key(cfg: Config, teacher: Teacher) -> str | None:
    """Which file ``compress.register`` ships (a key of ``CompressResult.files``), or ``None``.

    ``teacher`` is the GAN's ``generator``; a quantized choice is the fp32 file when ``compress.quantization=none``.

    Raises:
        InputError: it names a student that will not be trained, or an ensemble without compress.teacher=ensemble.
    """
    choice = cfg.compress.register
    model, _, quantized = choice.partition("-")
    if model == "ensemble" and cfg.compress.teacher != "ensemble":  # the champion's choice, tracking on or off
        raise InputError(f"compress.register={choice} needs compress.teacher=ensemble; set compress.teacher=ensemble")
    if choice == "none" or not cfg.tracking.enabled:
        return None
    generative = teacher.record.generative
    if model == "student" and (generative or cfg.compress.epochs == 0):  # auto: the teacher's, ≥ 1
        why = (
            f"{teacher.family} (generative, like a GAN) ships its generator"
            if generative
            else "compress.epochs=0 trains none"
        )
        raise InputError(f"compress.register={choice} needs a student, but {why}; set compress.register=teacher-int8")
    if model == "teacher" and generative:
        model = "generator"
    return model + ("-int8" if quantized and cfg.compress.quantization != "none" else "")


def onnx_model_name(cfg: Config, family: str) -> str:
    """``<experiment>-<family>-onnx``: the registered ONNX model beside the trained PyTorch model
    (``tracking.registered_model_name``, ``<experiment>-<family>``)."""
    return tracking.registered_model_name(cfg.with_overrides({"model.family": family})) + "-onnx"


def log_result(
    cfg: Config, run_id: str | None, teacher: Teacher, probe: Probe, result: CompressResult
) -> CompressResult:
    """Metrics, report and ONNX files to the compress run; every artifact whose own gates passed registered.

    Every file is a plain artifact under ``onnx/``. Shipped ones are also logged as models that
    ``mlflow.pyfunc.load_model`` serves as ``dlforge predict`` does (labels and probabilities, or values), and
    registered as versions of ``<experiment>-<family>-onnx``, each under its own alias and with a description; the
    champion also under ``candidate`` (unless ``compress.register=none``). The run's description lists the files,
    their gates and links to their versions.
    Returns ``result`` with ``registered`` filled in (unchanged with tracking off or nothing shipped).
    """
    if run_id is None:
        return result
    tracking.log_metrics(run_id, report_metrics(result))
    tracking.log_artifact(run_id, result.report_md, "compress")
    tracking.log_artifact(run_id, result.report_json, "compress")
    shipped = result.shipped
    for path in result.files.values():  # every file, shipped or not, where a reviewer of this run looks
        tracking.log_artifact(run_id, path, "onnx")
    status = "passed" if result.passed else ("partial" if shipped else "failed")
    tracking.set_tags(run_id, {"dlforge.gates": status})
    registered = _register_shipped(cfg, run_id, teacher, probe, result) if shipped else None
    versions = (registered or {}).get("versions", {})
    links = {key: tracking.version_page(registered["name"], v) for key, v in versions.items()}
    tracking.set_description(run_id, descriptions.run_description(result, versions, links))
    return dataclasses.replace(result, registered=registered) if registered else result


def _register_shipped(
    cfg: Config, run_id: str, teacher: Teacher, probe: Probe, result: CompressResult
) -> dict[str, Any]:
    """Log and register every shipped file; alias the champion ``candidate``. Returns what ``registered`` holds."""
    uris = {key: _log_onnx(run_id, key, Path(result.files[key]), teacher, probe) for key in result.shipped}
    name = onnx_model_name(cfg, teacher.family)
    cards = {key: _model_card(cfg, run_id, key, teacher, probe, result) for key in uris}
    versions = {key: _register(name, key, uris[key], run_id, teacher, result, cards[key]) for key in uris}
    aliases = {key: ONNX_ALIASES[key.replace("generator", "teacher")] for key in ONNX_ALIASES}
    tracking.describe_registered_model(name, descriptions.model_description(name, "champion", aliases))
    tracking.set_tags(run_id, {"dlforge.registered": ", ".join(f"{name}/{v}" for v in versions.values())})
    registered: dict[str, Any] = {
        "name": name,
        "versions": versions,
        "models": {key: f"models:/{name}/{v}" for key, v in versions.items()},
    }
    if result.champion is None or cfg.compress.register == "none":
        return registered
    tracking.set_alias(name, tracking.CANDIDATE, versions[result.champion])
    return registered | {
        "version": versions[result.champion],
        "alias": tracking.CANDIDATE,
        "uri": f"models:/{name}@{tracking.CANDIDATE}",
        "model": result.champion,
    }


def _model_card(cfg: Config, run_id: str, key: str, teacher: Teacher, probe: Probe, result: CompressResult) -> str:
    """``model_cards/<key>/model_card.md`` in the compress run; returned (after a rule) for the version's
    description. A card that cannot be made is a warning and an empty string: the file still ships."""
    from pipelines.model_card import onnx_card
    from pipelines.train import load_data

    try:
        splits = load_data(cfg.with_overrides({"model.family": teacher.family}))
        lineage = {"compress run": run_id, "teacher run": teacher.run_id, "teacher checkpoint": teacher.checkpoint}
        lineage |= {"ensemble members": list(teacher.members)} if key.startswith("ensemble") else {}
        card = onnx_card(cfg, key, result, probe, splits, lineage)
        path = Path(result.output_dir) / "model_cards" / key / "model_card.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(card)
        tracking.log_artifact(run_id, path, f"model_cards/{key}")
    except Exception as exc:  # the card describes the file; it must not keep it from the registry
        print(f"compress: the model card of {key} failed: {type(exc).__name__}: {exc}", flush=True)
        return ""
    return "\n\n---\n\n" + card


def _register(
    name: str, key: str, uri: str, run_id: str, teacher: Teacher, result: CompressResult, card: str = ""
) -> str:
    row = next(r for r in result.rows if r.file == result.files[key])
    meta = export.read_metadata(row.file)
    tags = {
        "dlforge.model": key,
        "dlforge.family": meta["family"],
        "dlforge.quantization": meta.get("quantization", "none"),
        "dlforge.recipe": descriptions.recipe_of(meta),
        "dlforge.teacher_run_id": teacher.run_id or "",
        "dlforge.compress_run_id": run_id,
        "dlforge.gates": "passed",
        "dlforge.size_bytes": row.size_bytes,
    }
    if row.metric is not None and result.metric:
        tags[f"metric.{result.metric}"] = f"{row.metric:.6g}"
    alias = ONNX_ALIASES[key.replace("generator", "teacher")]
    text = descriptions.version_description(
        key,
        result,
        recipe=tags["dlforge.recipe"],
        model_ref=f"models:/{name}@{alias}",
        run_link=tracking.run_page(run_id),
        teacher_link=teacher.run_id and tracking.run_page(teacher.run_id),
    )
    return tracking.register_model(uri, name=name, run_id=run_id, alias=alias, tags=tags, description=text + card)


def _log_onnx(run_id: str, key: str, path: Path, teacher: Teacher, probe: Probe) -> str:
    """Log one ``.onnx``: a predictor served by ``pipelines.predict`` (labels and probabilities, as ``dlforge
    predict``), a generator as the plain ONNX graph (noise in, images out)."""
    session = export.open_session(path)
    meta = export.read_metadata(session)
    metadata = {
        "dlforge_model": key,
        "family": meta.get("family"),
        "task": meta.get("task"),
        "quantization": meta.get("quantization", "none"),
        "teacher_run_id": teacher.run_id or "",
    }
    if meta.get("role") != "generator":
        return log_predictor(run_id, key, path, probe.test_x[:2], metadata)
    example = probe.test_x[:2].astype(np.float32)
    output = export.run_session(session, example)
    return tracking.log_onnx_model(
        run_id, path, name=key, input_example=example, output_example=output, metadata=metadata
    )


def log_predictor(run_id: str, key: str, path: Path, examples: np.ndarray, metadata: dict[str, Any]) -> str:
    """Log ``path`` for ``mlflow.pyfunc`` through ``pipelines.predict``, with the source files it needs."""
    predictor = predict.Predictor(path)
    example = predict.example_frame(examples, predictor.meta)
    with tempfile.TemporaryDirectory(prefix="dlforge-serving-") as tmp:
        return tracking.log_served_model(
            run_id,
            path,
            name=key,
            loader_module="pipelines.predict",
            code_paths=predict.serving_code(Path(tmp)),
            input_example=example,
            output_example=predictor.predict(example),
            requirements=predict.SERVING_REQUIREMENTS,
            metadata=metadata,
        )
