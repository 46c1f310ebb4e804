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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dl_lightning.errors import InputError
from pipelines import export, tracking
from pipelines.compression.measure import Probe
from pipelines.compression.results import CompressResult
from pipelines.compression.teacher import Teacher
from pipelines.config import Config

# Each shipped file is a version of <experiment>-<family>-onnx under its own alias (the generator counts as teacher).
ONNX_ALIASES = {"teacher": "fp32", "teacher-int8": "int8", "student": "student", "student-int8": "student-int8"}


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
    for what in ("params_ratio", "gain_over_scratch"):
        if what in result.student:
            metrics[f"compress/student/{what}"] = float(result.student[what])
    return metrics


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def registered_key(cfg: Config, teacher: Teacher) -> str | None:
    """Which file ``compress.register`` ships (a key of ``CompressResult.files``), or ``None``.

    ``teacher`` is the GAN's ``generator``; a quantized choice is the fp32 file when ``compress.quantization=none``.

    Raises:
        InputError: it names a student that will not be trained.
    """
    choice = cfg.compress.register
    if choice == "none" or not cfg.tracking.enabled:
        return None
    model, _, quantized = choice.partition("-")
    if model == "student" and (teacher.family == "gan" or cfg.compress.epochs == 0):  # auto: the teacher's, ≥ 1
        why = "a GAN ships its generator" if teacher.family == "gan" else "compress.epochs=0 trains none"
        raise InputError(f"compress.register={choice} needs a student, but {why}; set compress.register=teacher-int8")
    if model == "teacher" and teacher.family == "gan":
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

    Shipped artifacts are logged with the ONNX flavor (one file, a float32 — int64 for text — signature and input
    example), so ``mlflow.pyfunc.load_model`` serves them, and registered as versions of
    ``<experiment>-<family>-onnx``, each under its own alias; the champion also under ``candidate`` (unless
    ``compress.register=none``). An artifact with a failed gate stays a plain artifact (``onnx/``) for review.
    Returns ``result`` with ``registered`` filled in (unchanged with tracking off or nothing shipped).
    """
    if run_id is None:
        return result
    tracking.log_metrics(run_id, report_metrics(result))
    tracking.log_artifact(run_id, result.report_md, "compress")
    tracking.log_artifact(run_id, result.report_json, "compress")
    shipped = result.shipped
    for key in [k for k in result.files if k not in shipped]:
        tracking.log_artifact(run_id, result.files[key], "onnx")
    status = "passed" if result.passed else ("partial" if shipped else "failed")
    tracking.set_tags(run_id, {"dlforge.gates": status})
    if not shipped:
        return result
    return dataclasses.replace(result, registered=_register_shipped(cfg, run_id, teacher, probe, result))


def _register_shipped(
    cfg: Config, run_id: str, teacher: Teacher, probe: Probe, result: CompressResult
) -> dict[str, Any]:
    """Log and register every shipped file; alias the champion ``candidate``. Returns what ``registered`` holds."""
    uris = {key: _log_onnx(run_id, key, Path(result.files[key]), teacher, probe) for key in result.shipped}
    name = onnx_model_name(cfg, teacher.family)
    versions = {key: _register(name, key, uris[key], run_id, teacher, result) for key in uris}
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


def _register(name: str, key: str, uri: str, run_id: str, teacher: Teacher, result: CompressResult) -> str:
    row = next(r for r in result.rows if r.file == result.files[key])
    meta = export.read_metadata(row.file)
    tags = {
        "dlforge.model": key,
        "dlforge.family": meta["family"],
        "dlforge.quantization": meta.get("quantization", "none"),
        "dlforge.teacher_run_id": teacher.run_id or "",
        "dlforge.compress_run_id": run_id,
        "dlforge.gates": "passed",
        "dlforge.size_bytes": row.size_bytes,
    }
    if row.metric is not None and result.metric:
        tags[f"metric.{result.metric}"] = f"{row.metric:.6g}"
    alias = ONNX_ALIASES[key.replace("generator", "teacher")]
    return tracking.register_model(uri, name=name, run_id=run_id, alias=alias, tags=tags)


def _log_onnx(run_id: str, key: str, path: Path, teacher: Teacher, probe: Probe) -> str:
    """Log one ``.onnx`` with the ONNX flavor; the signature's dtype is the graph's own input type."""
    session = export.open_session(path)
    example = probe.test_x[:2]
    example = example.astype(np.int64 if session.get_inputs()[0].type == "tensor(int64)" else np.float32)
    meta = export.read_metadata(session)
    metadata = {
        "dlforge_model": key,
        "family": meta.get("family"),
        "task": meta.get("task"),
        "quantization": meta.get("quantization", "none"),
        "teacher_run_id": teacher.run_id or "",
    }
    output = export.run_session(session, example)
    return tracking.log_onnx_model(
        run_id, path, name=key, input_example=example, output_example=output, metadata=metadata
    )
