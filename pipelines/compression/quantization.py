"""Quantization recipes: an fp32 ONNX file in, a smaller ONNX file out — the ONNX graph is quantized, never torch.ao.

``RECIPES`` maps a recipe name (``compress.quantization``) to the function that writes the quantized graph; a new
recipe is one entry. ONNX Runtime's ``quant_pre_process`` runs on the exported graph first, which is what makes the
dynamo exporter's LSTM and Transformer graphs quantizable (DESIGN.md, "Compression and export").
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
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


class _Calibration(CalibrationDataReader):
    def __init__(self, batches: Sequence[np.ndarray]) -> None:
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {export.INPUT_NAME: batch}


def _dynamic(src: Path, dst: Path, per_channel: bool, calibration: Sequence[np.ndarray]) -> None:
    """Weights int8, activations quantized at run time: best for linear, recurrent and attention layers."""
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel)


def _static(src: Path, dst: Path, per_channel: bool, calibration: Sequence[np.ndarray]) -> None:
    """QDQ with activation ranges from ``calibration`` batches: best for convolutions."""
    quantize_static(
        str(src),
        str(dst),
        _Calibration(calibration),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,  # u8 activations × s8 weights: the fast x86 kernel pair
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        calibrate_method=CalibrationMethod.MinMax,
    )


# recipe → writer(prepared fp32 file, destination, per_channel, calibration batches)
RECIPES: dict[str, Callable[[Path, Path, bool, Sequence[np.ndarray]], None]] = {"dynamic": _dynamic, "static": _static}


def graph_has_conv(model: onnx.ModelProto) -> bool:
    """Whether any node of the graph (subgraphs included) is a convolution."""
    return any(node.op_type in CONV_OPS for node in _all_nodes(model.graph))


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)


def choose_recipe(model: onnx.ModelProto, requested: str) -> Recipe:
    """``auto``: static QDQ when the graph convolves, dynamic otherwise (DESIGN.md's measured recipe).

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
) -> Path:
    """A quantized copy of ``src`` at ``dst`` made by ``RECIPES[recipe]`` (``static`` needs ``calibration``).

    Metadata is carried over, with the recipe under ``quantization``; the result is checked like every export.
    """
    src, dst = Path(src), Path(dst)
    if recipe == "static" and not calibration:
        raise ValueError("static quantization needs calibration batches")
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        prepared = _prepare_for_quantization(src, Path(tmp))
        quantized = Path(tmp) / "quantized.onnx"
        RECIPES[recipe](prepared, quantized, per_channel, calibration)
        model = export.slim_onnx(onnx.load(str(quantized)))
    export.set_metadata(model, {**export.read_metadata(src), "quantization": recipe, "per_channel": per_channel})
    export.save_single_file(model, dst)
    export.check_onnx(dst)
    return dst


def _prepare_for_quantization(src: Path, workdir: Path) -> Path:
    """Shape inference + constant folding that the quantizer relies on (the dynamo graphs need it).

    When symbolic shape inference cannot finish, ONNX Runtime dumps ``sym_shape_infer_temp.onnx`` and its external
    data into the *current directory* before raising; running it inside ``workdir`` keeps those files out of the
    user's folder. The plain ONNX shape inference that remains is enough for the quantizers.
    """
    prepared = workdir / "prepared.onnx"
    with _working_directory(workdir):
        try:
            quant_pre_process(str(src), str(prepared), skip_symbolic_shape=False)
        except Exception as exc:  # ORT raises a bare Exception here
            if "symbolic shape inference" not in str(exc):
                raise
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
