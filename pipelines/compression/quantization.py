"""Quantization recipes: an fp32 ONNX file in, a smaller ONNX file out — the ONNX graph is quantized, never torch.ao.

``RECIPES`` maps a recipe name (``compress.quantization``) to the function that writes the quantized graph; a new
recipe is one entry. ONNX Runtime's ``quant_pre_process`` runs on the exported graph first, which is what makes the
dynamo exporter's LSTM and Transformer graphs quantizable (DESIGN.md, "Compression and export").

:func:`census` says what a recipe really did: a file is INT8 only when no weighted heavy op (``HEAVY_OPS``) is left
in float — ONNX Runtime quantizes GRU with neither recipe, and its "INT8" GRU file used to be fp32 in all but name.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from dl_lightning.errors import InputError
from pipelines import export

Recipe = Literal["dynamic", "static", "none"]
CONV_OPS = {"Conv", "ConvTranspose"}
# the ops that carry a net's weights and its time: an artifact is INT8 only when none of these is left in float
HEAVY_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose", "LSTM", "GRU", "RNN", "Attention", "MultiHeadAttention"}
# what the quantizers put in their place (dynamic: integer kernels; QDQ keeps the op and feeds it DequantizeLinear)
INTEGER_OPS = {
    "MatMulInteger",
    "ConvInteger",
    "QLinearMatMul",
    "QLinearConv",
    "QGemm",
    "DynamicQuantizeMatMul",
    "DynamicQuantizeLSTM",
    "MatMulIntegerToFloat",
    "QAttention",
}
CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy}
CALIBRATION_METHODS["percentile"] = CalibrationMethod.Percentile


class _Calibration(CalibrationDataReader):
    def __init__(self, batches: Sequence[np.ndarray]) -> None:
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {export.INPUT_NAME: batch}


@dataclass(frozen=True)
class Options:
    """How a recipe quantizes: per-channel weights, the calibration method (static), node names kept in float."""

    per_channel: bool = False
    method: str = "minmax"  # a key of CALIBRATION_METHODS
    exclude: tuple[str, ...] = ()


def _dynamic(src: Path, dst: Path, options: Options, calibration: Sequence[np.ndarray]) -> None:
    """Weights int8, activations quantized at run time: best for linear, recurrent and attention layers."""
    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=options.per_channel,
        nodes_to_exclude=list(options.exclude),
    )


def _static(src: Path, dst: Path, options: Options, calibration: Sequence[np.ndarray]) -> None:
    """QDQ with activation ranges from ``calibration`` batches: best for convolutions."""
    quantize_static(
        str(src),
        str(dst),
        _Calibration(calibration),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,  # u8 activations × s8 weights: the fast x86 kernel pair
        weight_type=QuantType.QInt8,
        per_channel=options.per_channel,
        calibrate_method=CALIBRATION_METHODS[options.method],
        nodes_to_exclude=list(options.exclude),
    )


# recipe → writer(prepared fp32 file, destination, options, calibration batches)
RECIPES: dict[str, Callable[[Path, Path, Options, Sequence[np.ndarray]], None]] = {
    "dynamic": _dynamic,
    "static": _static,
}


@dataclass(frozen=True)
class Census:
    """What a quantizer really did to a graph: its int8 weights and which weighted heavy ops it left in float."""

    quantized_initializers: int  # int8 / uint8 tensors (weights and zero points)
    float_initializers: int
    quantized_nodes: int  # integer kernels, and heavy ops fed by DequantizeLinear (QDQ)
    float_heavy: tuple[str, ...]  # names of weighted heavy nodes the recipe could not quantize
    kept_float: tuple[str, ...] = ()  # heavy nodes left in float on purpose (``quantize_onnx``'s ``keep_float``)

    @property
    def is_int8(self) -> bool:
        """Whether the graph may be called INT8: something quantized, no heavy op left in float unasked."""
        return self.quantized_nodes > 0 and not self.float_heavy

    def float_summary(self, model: onnx.ModelProto) -> str:
        """``"2 GRU"``: the op types (and counts) of the heavy nodes left in float."""
        types = {n.name: n.op_type for n in _all_nodes(model.graph)}
        counts = Counter(types.get(name, "?") for name in self.float_heavy)
        return ", ".join(f"{n} {op}" for op, n in sorted(counts.items()))


def census(model: onnx.ModelProto) -> Census:
    """Count quantized initializers and nodes of ``model``; list the weighted heavy ops that stayed float.

    A heavy op (``HEAVY_OPS``) is "weighted" when one of its weight inputs is a float initializer; in a QDQ graph
    its weights come from a DequantizeLinear instead, so it counts as quantized. Nodes the metadata lists under
    ``kept_float`` are reported apart from ``float_heavy``.
    """
    graphs = list(_all_graphs(model.graph))
    inits = [t for g in graphs for t in g.initializer]
    floats = {t.name for t in inits if t.data_type in FLOAT_TYPES}
    dequantized = {o for g in graphs for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized, float_heavy = 0, []
    for node in _all_nodes(model.graph):
        weights = _weight_slots(node)
        if node.op_type in HEAVY_OPS and floats.intersection(weights):
            float_heavy.append(node.name)
        elif node.op_type in INTEGER_OPS or (node.op_type in HEAVY_OPS and dequantized.intersection(weights)):
            quantized += 1
    int8 = sum(t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) for t in inits)
    kept = tuple(export.read_metadata(model).get("kept_float") or ())
    unasked = tuple(name for name in float_heavy if name not in kept)
    return Census(int8, len(floats), quantized, unasked, kept)


FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
RECURRENT_OPS = {"LSTM", "GRU", "RNN"}


def _weight_slots(node: onnx.NodeProto) -> list[str]:
    """The inputs that hold a heavy op's weights (never its bias): X/W/R of recurrent ops, A/B of the others."""
    return list(node.input[:3] if node.op_type in RECURRENT_OPS else node.input[:2])


def heavy_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the weighted heavy nodes of the top graph, in graph (topological) order: first and last layers."""
    floats = {t.name for t in model.graph.initializer if t.data_type in FLOAT_TYPES}
    return [n.name for n in model.graph.node if n.op_type in HEAVY_OPS and floats.intersection(_weight_slots(n))]


def graph_has_conv(model: onnx.ModelProto) -> bool:
    """Whether any node of the graph (subgraphs included) is a convolution."""
    return any(node.op_type in CONV_OPS for node in _all_nodes(model.graph))


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for sub in _all_graphs(graph):
        yield from sub.node


def _all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                yield from _all_graphs(sub)


def choose_recipe(model: onnx.ModelProto, requested: str) -> Recipe:
    """``auto``: static QDQ when the graph convolves, dynamic otherwise — the fixed guess ``auto`` meant before the
    autotuner (``ship`` now autotunes under ``auto``: :mod:`pipelines.compression.autotune`).

    Dynamic quantization turns convolutions into ConvInteger, which made a conv net 2.6× slower than fp32 here;
    static QDQ with calibration made it 3.9× faster. Linear, recurrent and attention layers gain most from dynamic.

    Raises:
        InputError: ``requested`` is neither ``auto``, ``none`` nor a key of ``RECIPES``.
    """
    if requested == "auto":
        return "static" if graph_has_conv(model) else "dynamic"
    if requested != "none" and requested not in RECIPES:
        raise InputError(f"compress.quantization must be auto, dynamic, static or none; got {requested!r}")
    return requested  # type: ignore[return-value]


def quantize_onnx(
    src: str | Path,
    dst: str | Path,
    *,
    recipe: Recipe,
    per_channel: bool = False,
    calibration: Sequence[np.ndarray] = (),
    method: str = "minmax",
    keep_float: Sequence[str] = (),
) -> Path:
    """A quantized copy of ``src`` at ``dst`` made by ``RECIPES[recipe]`` (``static`` needs ``calibration``).

    ``method`` is the static recipe's calibration (a key of ``CALIBRATION_METHODS``); ``keep_float`` leaves the
    first and/or last weighted heavy node in float, and any node it names (a name in :func:`prepare_for_quantization`'s
    graph, e.g. from :func:`pipelines.compression.autotune.rank_nodes`). Metadata is carried over, with the recipe under
    ``quantization`` (and ``calibration``, ``kept_float``); the result is checked like every export.
    """
    src, dst = Path(src), Path(dst)
    if recipe == "static" and not calibration:
        raise ValueError("static quantization needs calibration batches")
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        prepared = prepare_for_quantization(src, Path(tmp))
        heavy = heavy_nodes(onnx.load(str(prepared)))
        ends = {"first": heavy[:1], "last": heavy[-1:]}
        exclude = tuple(dict.fromkeys(name for end in keep_float for name in ends.get(end, [end])))
        quantized = Path(tmp) / "quantized.onnx"
        with contextlib.redirect_stdout(io.StringIO()):  # ORT's calibrators print progress nobody can act on
            RECIPES[recipe](prepared, quantized, Options(per_channel, method, exclude), calibration)
        model = export.slim_onnx(onnx.load(str(quantized)))
    meta = {"quantization": recipe, "per_channel": per_channel, "kept_float": list(exclude)}
    if recipe == "static":
        meta["calibration"] = method
    export.set_metadata(model, {**export.read_metadata(src), **meta})
    export.save_single_file(model, dst)
    export.check_onnx(dst)
    return dst


def prepare_for_quantization(src: Path, workdir: Path) -> Path:
    """Shape inference + constant folding that the quantizer relies on (the dynamo graphs need it).

    When symbolic shape inference cannot finish, ONNX Runtime dumps ``sym_shape_infer_temp.onnx`` and its external
    data into the *current directory* before raising; running it inside ``workdir`` keeps those files out of the
    user's folder. The plain ONNX shape inference that remains is enough for the quantizers.
    """
    prepared = workdir / "prepared.onnx"
    with _working_directory(workdir):
        try:
            quant_pre_process(str(src), str(prepared), skip_symbolic_shape=False)
        except Exception:  # a bare Exception when it gives up, a TypeError inside it on some graphs (a padding
            # mask's Shape of a bitwise_and): either way the plain ONNX shape inference below is enough
            quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
    return prepared


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)
