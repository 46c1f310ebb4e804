"""One net to the files it ships as: ONNX fp32 (with parity against PyTorch) and its quantized copy, each measured.

The artifact keys (``teacher``, ``teacher-int8``…) and row keys (``teacher_int8_onnx``…) are the names config,
registry and metrics use, whatever the recipe that made the quantized file.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dl_lightning.errors import first_line
from dl_lightning.registry import record_for
from pipelines import export
from pipelines.compression.autotune import Tuning, autotune, install
from pipelines.compression.gates import metric_gate
from pipelines.compression.measure import Probe, measure_onnx, measure_torch
from pipelines.compression.quantization import census, quantize_onnx
from pipelines.compression.results import Gate, Row
from pipelines.compression.teacher import Teacher
from pipelines.config import Config

OUTPUT_NAMES = {"classification": "logits", "regression": "prediction", None: "image"}


class NotExportable(RuntimeError):
    """A model the ONNX exporter cannot take (valid input, a stage that cannot go on): one line, exit 1."""

    exit_code = 1


def ship(
    cfg: Config,
    net: nn.Module,
    example: torch.Tensor,
    role: str,
    teacher: Teacher,
    family: str,
    probe: Probe,
    folder: Path,
) -> tuple[list[Row], dict[str, str], list[Gate], dict[str, Any] | None]:
    """PyTorch row, ONNX fp32 row (with parity) and quantized row of one net, their files, gates and autotuning.

    ``role`` (teacher, student, generator) names the files ``<role>.onnx`` and ``<role>-int8.onnx``. Under
    ``compress.quantization=auto`` the autotuner's winner is ``<role>-int8.onnx`` — none when fp32 won — and its
    attempts come back as the fourth value (``Tuning.to_dict``); ``None`` under an explicit recipe.
    """
    c = cfg.compress
    fp32, parity = _export(net, example, role, teacher, family, probe, folder, c.parity_atol)
    rows = [measure_torch(cfg, f"{role} fp32 (PyTorch)", f"{role}_fp32_pytorch", net, probe)]
    rows.append(
        measure_onnx(cfg, f"{role} fp32 (ONNX)", f"{role}_fp32_onnx", fp32, rows[0].params, probe, parity.max_abs_diff)
    )
    detail = f"max |Δ| {parity.max_abs_diff:.2e} ≤ {parity.tolerance:.1e}"
    # the quantized graph is the fp32 graph quantized: an export that does not match PyTorch spoils both files
    gates = [Gate(f"{role} parity", parity.passed, detail, (role, f"{role}-int8"))]
    files = {role: str(fp32)}
    tuning = autotune(cfg, fp32, rows[1], role, probe, folder) if c.quantization == "auto" else None
    if tuning is not None:
        quantized = _tuned(tuning, role, rows[0].params, folder)
    elif c.quantization != "none":
        quantized = _quantized(cfg, fp32, role, c.quantization, rows[0].params, probe, folder)
    else:
        quantized = None
    if quantized is not None:
        row, path, not_int8 = quantized
        rows.append(row)
        files[f"{role}-int8"] = str(path)
        gates += [not_int8] if not_int8 is not None else []
        if probe.task is not None:
            gates.append(_drop_gate(cfg, role, rows[1], row, probe.task))
    return rows, files, gates, None if tuning is None else tuning.to_dict()


def _tuned(tuning: Tuning, role: str, params: int, folder: Path) -> tuple[Row, Path, None] | None:
    """The autotuner's winner as ``<folder>/<role>-int8.onnx`` and its row; ``None`` when fp32 won."""
    chosen = tuning.chosen
    if chosen.variant == "fp32":
        shutil.rmtree(folder / "autotune", ignore_errors=True)
        return None
    path = install(chosen, folder / f"{role}-int8.onnx")
    row = Row(
        f"{role} INT8 ({chosen.variant})",
        "onnxruntime",
        params,
        path.stat().st_size,
        chosen.metric,
        chosen.latency_ms,
        file=str(path),
        key=f"{role}_int8_onnx",
    )
    return row, path, None


def _quantized(
    cfg: Config, fp32: Path, role: str, recipe: str, params: int, probe: Probe, folder: Path
) -> tuple[Row, Path, Gate | None]:
    """``<folder>/<role>-int8.onnx`` made from ``fp32`` by ``recipe``, its row, and — when the recipe left heavy
    ops in float — the failed gate that keeps it from shipping as INT8 (its row named by what it is)."""
    c = cfg.compress
    path = quantize_onnx(
        fp32, folder / f"{role}-int8.onnx", recipe=recipe, per_channel=c.per_channel, calibration=probe.calibration
    )
    model = export.load_onnx(path)
    found = census(model)
    name, gate = f"{role} INT8 ({recipe})", None
    if not found.is_int8:
        left = found.float_summary(model) or "every heavy op"
        name = f"{role} {recipe}-quantized, {left} fp32 (not INT8)"
        why = f"{recipe} left {left} in float: not INT8; compress.quantization=auto tries the other recipes"
        gate = Gate(f"{role} INT8 is INT8", False, why, (f"{role}-int8",))
    return measure_onnx(cfg, name, f"{role}_int8_onnx", path, params, probe, None), path, gate


def _drop_gate(cfg: Config, role: str, fp32: Row, quantized: Row, task: str) -> Gate:
    """The quantized file's drop against its own fp32 file (the same graph in the same runtime), guarding it alone."""
    gate = metric_gate(f"{role} INT8 drop", fp32.metric, quantized.metric, task, cfg.compress.max_int8_drop)
    return dataclasses.replace(gate, guards=(f"{role}-int8",))


def _export(
    net: nn.Module,
    example: torch.Tensor,
    role: str,
    teacher: Teacher,
    family: str,
    probe: Probe,
    folder: Path,
    atol: float,
) -> tuple[Path, export.ParityResult]:
    """``<folder>/<role>.onnx`` with the data's metadata, and its parity with ``net`` on the probe's batches."""
    meta = export.model_metadata(teacher.spec.to_dict(), family=family, role=role, source_run_id=teacher.run_id)
    try:
        fp32 = export.export_onnx(
            net,
            example,
            folder / f"{role}.onnx",
            metadata=meta,
            output_name=OUTPUT_NAMES[probe.task],
            sequence_axis=record_for(family).sequence_axis,
        )
    except Exception as exc:  # a user's model torch.export cannot trace: the stage stops, the checkpoint stays
        raise NotExportable(
            f"compress: the {role} ({family}) does not export to ONNX ({type(exc).__name__}: {first_line(exc, 160)}); "
            "its trained checkpoint is kept (and registered with tracking on) — make forward traceable by "
            "torch.export to compress it"
        ) from None
    session = export.open_session(fp32)
    parity = export.check_parity(net, session, probe.parity, atol=atol, relative=probe.task == "regression")
    return fp32, parity
