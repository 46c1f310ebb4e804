"""One net to the files it ships as: ONNX fp32 (with parity against PyTorch) and its quantized copy, each measured.

The artifact keys (``teacher``, ``teacher-int8``…) and row keys (``teacher_int8_onnx``…) are the names config,
registry and metrics use, whatever the recipe that made the quantized file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from pipelines import export
from pipelines.compression.gates import metric_gate
from pipelines.compression.measure import Probe, measure_onnx, measure_torch
from pipelines.compression.quantization import choose_recipe, quantize_onnx
from pipelines.compression.results import Gate, Row
from pipelines.compression.teacher import Teacher
from pipelines.config import Config

OUTPUT_NAMES = {"classification": "logits", "regression": "prediction", None: "image"}


def ship(
    cfg: Config,
    net: nn.Module,
    example: torch.Tensor,
    role: str,
    teacher: Teacher,
    family: str,
    probe: Probe,
    folder: Path,
) -> tuple[list[Row], dict[str, str], list[Gate]]:
    """PyTorch row, ONNX fp32 row (with parity) and quantized row of one net, their files and their gates.

    ``role`` (teacher, student, generator) names the files ``<role>.onnx`` and ``<role>-int8.onnx``.
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
    recipe = choose_recipe(export.load_onnx(fp32, with_weights=False), c.quantization)
    if recipe != "none":
        row, quantized = _quantized(cfg, fp32, role, recipe, rows[0].params, probe, folder)
        rows.append(row)
        files[f"{role}-int8"] = str(quantized)
        if probe.task is not None:
            gates.append(_drop_gate(cfg, role, rows[1], row, probe.task))
    return rows, files, gates


def _quantized(
    cfg: Config, fp32: Path, role: str, recipe: str, params: int, probe: Probe, folder: Path
) -> tuple[Row, Path]:
    """``<folder>/<role>-int8.onnx`` made from ``fp32`` by ``recipe``, and its row."""
    c = cfg.compress
    path = quantize_onnx(
        fp32, folder / f"{role}-int8.onnx", recipe=recipe, per_channel=c.per_channel, calibration=probe.calibration
    )
    return measure_onnx(cfg, f"{role} INT8 ({recipe})", f"{role}_int8_onnx", path, params, probe, None), path


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
    fp32 = export.export_onnx(
        net,
        example,
        folder / f"{role}.onnx",
        metadata=meta,
        output_name=OUTPUT_NAMES[probe.task],
        sequence_axis=family in ("rnn", "transformer"),
    )
    session = export.open_session(fp32)
    parity = export.check_parity(net, session, probe.parity, atol=atol, relative=probe.task == "regression")
    return fp32, parity
