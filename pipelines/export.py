"""ONNX export, metadata, checks, running and parity of fp32 files (quantizing them: ``compression.quantization``).

The exporter is torch's default ``torch.export`` (dynamo) path; the deprecated TorchScript exporter is not used.

Every file written here is one self-contained ``.onnx`` (no external data) that passed
``onnx.checker.check_model(full_check=True)``. Files read here are first checked for external data pointing outside
their folder, before any loader follows those paths.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnx import TensorProto, numpy_helper
from onnx.external_data_helper import _get_all_tensors

from dl_lightning.errors import InputError
from pipelines.version import dlforge_version

if TYPE_CHECKING:  # torch is imported inside the functions that run it: predict uses this module without torch
    import torch
    from torch import nn

OPSET = 18  # the dynamo exporter's native opset; ≥ 17 as the issue asks
META_PREFIX = "dlforge."
INPUT_NAME = "input"


@dataclass(frozen=True)
class ParityResult:
    max_abs_diff: float
    tolerance: float  # the bound max_abs_diff was held to (absolute, scaled up for outputs larger than 1)
    batches: int

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance


# ---------------------------------------------------------------- export


def export_onnx(
    net: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    *,
    metadata: dict[str, Any],
    output_name: str = "output",
    sequence_axis: bool = False,
) -> Path:
    """Export ``net`` (eval mode) to one ONNX file with a dynamic batch axis and ``metadata`` in metadata_props.

    With ``sequence_axis`` axis 1 is dynamic too, when the net runs at another length (a fixed position table does
    not): the axes actually made dynamic are recorded in the ``dlforge.dynamic_axes`` metadata entry.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = net.eval()
    axes = {0: "batch"}
    if sequence_axis and _runs_at_other_length(net, example):
        axes[1] = "sequence"
    # torch.export gives equal-sized dims one symbol ("duck sizing"): a sequence as long as its feature width
    # (digits read as 8 rows × 8 features) gets its length fixed. Tracing at a length one shorter avoids that;
    # the last resort keeps the length fixed, and the metadata then says so.
    attempts = [(example, axes)]
    if 1 in axes:
        attempts += [(example[:, :-1], axes), (example, {0: "batch"})]
    for attempt, (traced, dims) in enumerate(attempts, start=1):
        try:
            with _quiet_exporter():
                program = torch.onnx.export(
                    net,
                    (traced,),
                    dynamo=True,
                    input_names=[INPUT_NAME],
                    output_names=[output_name],
                    dynamic_shapes=(dims,),
                    opset_version=OPSET,
                    verbose=False,
                )
            break
        except Exception:
            if attempt == len(attempts):
                raise
    axes = dims
    program.save(str(path), external_data=False)
    model = slim_onnx(onnx.load(str(path)))
    set_metadata(model, {**metadata, "dynamic_axes": sorted(axes.values())})
    save_single_file(model, path)
    check_onnx(path)
    return path


def _runs_at_other_length(net: nn.Module, example: torch.Tensor) -> bool:
    """A cheap probe in PyTorch: does the net accept a sequence one step shorter?"""
    import torch

    if example.dim() < 2 or example.shape[1] < 2:
        return False
    try:
        with torch.no_grad():
            net(example[:, :-1])
    except (RuntimeError, IndexError, ValueError):
        return False
    return True


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter prints progress lines and warns about optional packages; keep the terminal for dlforge."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def save_single_file(model: onnx.ModelProto, path: Path) -> None:
    """Atomic replace; refuses models that would need external data (≥ 2 GB)."""
    if model.ByteSize() >= 2**31 - 1:
        raise InputError(f"{path.name} would exceed 2 GB; dlforge ships single-file ONNX only")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        onnx.save_model(model, tmp, save_as_external_data=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- slimming


def slim_onnx(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop, in place, what inference never reads; the computation is untouched (same nodes, same tensors).

    - each node's ``metadata_props`` and doc string: the dynamo exporter writes the FX node, module path and Python
      stack trace of every operator there (absolute paths of the machine that exported it) — 144 kB of a 446 kB
      transformer file, 13 kB of a 133 kB CNN;
    - ``value_info``: shapes of intermediate tensors, which the checker and ONNX Runtime infer again on load;
    - initializers no node reads and opset imports no node uses (the quantizer declares nine domains).
    """
    graphs = list(_all_graphs(model.graph))
    for graph in graphs:
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
        del graph.value_info[:]
        graph.doc_string = ""
    for function in model.functions:
        for node in function.node:
            del node.metadata_props[:]
            node.doc_string = ""
    read = {name for graph in graphs for node in graph.node for name in node.input}
    read |= {o.name for graph in graphs for o in graph.output} | {i.name for i in model.graph.input}
    kept = [t for t in model.graph.initializer if t.name in read]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    used = {n.domain for g in graphs for n in g.node} | {n.domain for f in model.functions for n in f.node}
    used |= {f.domain for f in model.functions} | {""}
    opsets = [o for o in model.opset_import if o.domain in used or o.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    return model


def _all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _all_graphs(sub)


def size_breakdown(path: str | Path) -> dict[str, int]:
    """Bytes of a saved file: ``file``; tensor data by kind — ``int8`` (weights and zero points), ``int32``
    (quantized biases), ``float`` (what stays fp32: biases, norms, scales) and ``other``; ``graph`` is the rest
    (nodes, names, tensor headers, metadata)."""
    model = load_onnx(path)
    kinds = {TensorProto.INT8: "int8", TensorProto.UINT8: "int8", TensorProto.INT32: "int32"}
    kinds |= {TensorProto.FLOAT: "float", TensorProto.FLOAT16: "float", TensorProto.DOUBLE: "float"}
    out = {"file": Path(path).stat().st_size, "int8": 0, "int32": 0, "float": 0, "other": 0}
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        out[kinds.get(tensor.data_type, "other")] += array.nbytes
    out["graph"] = out["file"] - sum(out[k] for k in ("int8", "int32", "float", "other"))
    return out


# ---------------------------------------------------------------- metadata


def model_metadata(spec: dict[str, Any], *, family: str, role: str, source_run_id: str | None) -> dict[str, Any]:
    """What a consumer needs to use the file without dlforge's Python objects (values JSON-encoded on write)."""
    return {
        "family": family,
        "role": role,  # teacher | student | generator
        "kind": spec["kind"],
        "task": spec["task"],
        "input_shape": list(spec["input_shape"]),
        "num_outputs": spec["num_outputs"],
        "class_names": list(spec.get("class_names") or ()),
        "mean": list(spec.get("mean") or ()),
        "std": list(spec.get("std") or ()),
        "vocab": list(spec.get("vocab") or ()),
        "impute_fill": list(spec.get("fill") or ()),  # data.impute: NaN inputs take these values inside the graph
        "normalization": "inside the graph: inputs are raw, (x - mean) / std is applied by the model",
        "source_run_id": source_run_id or "",
        "dlforge_version": dlforge_version(),
    }


def set_metadata(model: onnx.ModelProto, values: dict[str, Any]) -> None:
    """Write ``values`` as ``dlforge.<key>`` metadata_props (JSON strings), replacing earlier ones."""
    kept = [p for p in model.metadata_props if not p.key.startswith(META_PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in values.items():
        model.metadata_props.add(key=META_PREFIX + key, value=json.dumps(value))


def read_metadata(source: str | Path | onnx.ModelProto | ort.InferenceSession) -> dict[str, Any]:
    """The ``dlforge.*`` metadata of a file, model or session, decoded back to Python values."""
    if isinstance(source, ort.InferenceSession):
        props = source.get_modelmeta().custom_metadata_map
    else:
        model = source if isinstance(source, onnx.ModelProto) else load_onnx(source, with_weights=False)
        props = {p.key: p.value for p in model.metadata_props}
    return {k.removeprefix(META_PREFIX): json.loads(v) for k, v in props.items() if k.startswith(META_PREFIX)}


# ---------------------------------------------------------------- loading and checks


def refuse_escaping_external_data(path: str | Path) -> onnx.ModelProto:
    """Load ``path`` without external data and refuse tensors whose data lies outside the file's folder.

    A crafted ``location`` (``../../etc/passwd``, an absolute path, a symlink out) would otherwise make the loader
    read any file the process can. Returns the model without its external tensors loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"ONNX file {str(path)!r} not found; pass an existing .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise InputError(f"{path.name} is not a valid ONNX file ({type(exc).__name__}); re-export it") from None
    folder = path.parent.resolve()
    for tensor in _get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise InputError(
                f"{path.name}: tensor {tensor.name!r} has external data at {location!r}, outside its folder; refused"
            )
    return model


def load_onnx(path: str | Path, *, with_weights: bool = True) -> onnx.ModelProto:
    """Load after the external-data check; ``with_weights=False`` skips reading external tensors."""
    model = refuse_escaping_external_data(path)
    if with_weights:
        onnx.external_data_helper.load_external_data_for_model(model, str(Path(path).parent))
    return model


def check_onnx(path: str | Path) -> onnx.ModelProto:
    """External-data check, then the full ONNX checker (with shape inference); InputError when either fails."""
    model = load_onnx(path)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{Path(path).name} fails the ONNX checker: {first}") from None
    return model


def open_session(path: str | Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU ONNX Runtime session on a checked file; ``threads`` intra-op threads (0 = ORT's default)."""
    refuse_escaping_external_data(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise InputError(f"ONNX Runtime cannot load {Path(path).name}: {str(exc).splitlines()[0]}") from None


# ---------------------------------------------------------------- running and parity


def run_session(session: ort.InferenceSession, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Outputs of the first graph output for all rows of ``x``, in batches."""
    name = session.get_inputs()[0].name
    parts = [session.run(None, {name: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(parts, axis=0)


def run_torch(net: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    import torch

    net.eval()
    with torch.inference_mode():
        parts = [net(torch.from_numpy(x[i : i + batch_size])).numpy() for i in range(0, len(x), batch_size)]
    return np.concatenate(parts, axis=0)


def check_parity(
    net: nn.Module,
    session: ort.InferenceSession,
    batches: Iterable[np.ndarray],
    atol: float = 1e-4,
    *,
    relative: bool = False,
) -> ParityResult:
    """max |torch − ORT| over ``batches``, held to ``atol`` (logits, images: outputs of order 1).

    With ``relative`` (regression heads, whose outputs are in the target's units) the bound is ``atol`` times the
    largest output magnitude when that exceeds 1: float32 keeps ~7 significant digits, so a value in the hundreds
    cannot agree to an absolute 1e-4.
    """
    worst, scale, count = 0.0, 1.0, 0
    for x in batches:
        ref = run_torch(net, x, batch_size=len(x))
        got = run_session(session, x, batch_size=len(x))
        if ref.shape != got.shape or not np.isfinite(got).all():  # a failed parity, reported as such
            return ParityResult(max_abs_diff=math.inf, tolerance=atol, batches=count + 1)
        worst = max(worst, float(np.abs(ref - got).max(initial=0.0)))
        if relative:
            scale = max(scale, float(np.abs(ref).max(initial=0.0)))
        count += 1
    if not count:
        raise ValueError("parity needs at least one batch")
    return ParityResult(max_abs_diff=worst, tolerance=atol * scale, batches=count)
