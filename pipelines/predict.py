"""``dlforge predict MODEL INPUT``: predictions from an exported model with ONNX Runtime, numpy, pandas and Pillow.

torch is never imported on this path (a test keeps it so): the preprocessing a model needs travels in its ONNX
metadata — input shape, class names, and the vocabulary for text; normalization is inside the graph.

The same code serves a registered ONNX model through ``mlflow.pyfunc``: such a model is logged with
``loader_module="pipelines.predict"`` (MLflow's custom-flavor hook, ``_load_pyfunc``) and carries the few source
files this module needs (``SERVING_FILES``), so ``pyfunc.load_model(uri).predict(df)`` returns what
``dlforge predict`` writes for the same table, also where dlforge is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import tempfile
import warnings
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dl_lightning.errors import InputError, first_line
from pipelines import export
from pipelines.outputs import write_text_atomic

if TYPE_CHECKING:
    from pipelines.config import Config
    from pipelines.stage_results import PredictResult, Upstream

TABLES = (".csv", ".parquet", ".pq")
MAX_EXAMPLE_VALUES = 1 << 24  # values in one example (64 MiB of float32): a 2048×2048 RGB image fits
MAX_BATCH_VALUES = 1 << 30  # all the images of one call together (4 GiB of float32)
IMAGES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


def predict_stage(cfg: Config, upstream: Upstream, *, source: str, output: str) -> PredictResult:
    """The predict stage (``dlforge predict``): :func:`predict` with the model upstream names — ``upstream.model``
    (an ``.onnx`` path or ``models:/`` URI), else the promoted champion's URI. It opens no run.

    Raises:
        InputError: upstream names no model, or :func:`predict` refuses the model or the input.
    """
    from pipelines.stage_results import PredictResult  # here, not above: a served model carries SERVING_FILES only

    model = upstream.model or (upstream.promote.uri if upstream.promote is not None else None)
    if not model:
        raise InputError("predict needs a model; pass MODEL.onnx or models:/NAME@ALIAS")
    path, rows = predict(model, source, output, cfg)
    return PredictResult(model=model, source=str(source), output=str(path), rows=rows)


def predict(model_ref: str, source: str, output: str, cfg: Config | None = None) -> tuple[Path, int]:
    """Run ``model_ref`` on ``source``; write one CSV row per example to ``output``.

    ``model_ref`` is an ``.onnx`` path or ``models:/<name>@<alias>`` (``models:/<name>/<version>``), downloaded from
    ``cfg``'s tracking store. Classification rows hold the predicted class and one probability column per class;
    regression rows the value.
    """
    with tempfile.TemporaryDirectory(prefix="dlforge-predict-") as tmp:
        predictor = Predictor(resolve_model(model_ref, cfg, Path(tmp)))  # the graph is in memory: the download can go
    frame = predict_source(predictor, Path(source))
    out = write_text_atomic(output, frame.to_csv(index=False))
    return out, len(frame)


class Predictor:
    """A dlforge ONNX file ready to predict; what ``mlflow.pyfunc.load_model`` wraps for a registered version.

    Raises:
        InputError: the file is no dlforge predictor (a generator, no dlforge metadata) or declares a bad input.
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        self.session = export.open_session(path, threads=0)
        self.meta = export.read_metadata(self.session)
        if not self.meta.get("task") or self.meta.get("role") == "generator":
            raise InputError(f"{path.name} is not a dlforge predictor (a generator, or no dlforge metadata)")
        check_declared_input(self.meta, path.name)

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """One row per row of a table: feature columns in training order, or a text column (``dlforge predict``'s
        CSV rules). Rows are ``id`` (the row's index), ``prediction`` and, for classes, ``prob_<class>``."""
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        x = encode_text(frame, self.meta) if self.meta["kind"] == "text" else numeric(frame, self.meta)
        return self.predict_examples([str(i) for i in frame.index], x)

    def predict_examples(self, ids: list[str], x: np.ndarray) -> pd.DataFrame:
        """Predictions for examples already shaped as the model takes them (an NPZ array, images)."""
        return prediction_frame(ids, export.run_session(self.session, checked(x, self.meta)), self.meta)


def example_frame(x: np.ndarray, meta: dict[str, Any]) -> pd.DataFrame:
    """Examples as the table a user passes: the features flattened to columns ``x0…``, or, for text, the token ids
    written back as words (``<unk>`` for unknown ones) in a ``text`` column."""
    if meta["kind"] == "text":
        vocab = meta["vocab"]
        return pd.DataFrame({"text": [" ".join(vocab[i] for i in row if i > 0) for row in x.astype(np.int64)]})
    flat = x.reshape(len(x), -1)
    return pd.DataFrame(flat, columns=[f"x{i}" for i in range(flat.shape[1])])


def _load_pyfunc(data_path: str) -> Predictor:
    """MLflow's custom-flavor hook: a model logged with ``loader_module="pipelines.predict"`` loads through this.

    ``data_path`` is the model's ONNX file (or a folder holding one .onnx file), or a folder holding a trained
    PyTorch model as :func:`save_torch_predictor` writes it.
    """
    path = Path(data_path)
    if path.is_dir() and (torch_model := next(iter(sorted(path.rglob(TORCH_PROGRAM))), None)) is not None:
        return TorchPredictor(torch_model.parent)
    return Predictor(next(iter(sorted(path.rglob("*.onnx")))) if path.is_dir() else path)


# ---------------------------------------------------------------- the trained PyTorch model, served alike

TORCH_PROGRAM = "model.pt2"  # torch.export's program of the net (no pickle), beside its metadata
TORCH_META = "dlforge_meta.json"  # the same keys as an ONNX file's dlforge.* metadata


class TorchPredictor(Predictor):
    """The registered PyTorch model (a ``torch.export`` program) predicting as :class:`Predictor` does: the same
    input rules, labels and probabilities (or values) — only the runtime differs. Needs torch; ORT is not used."""

    def __init__(self, folder: str | Path) -> None:
        import torch

        folder = Path(folder)
        self.meta = json.loads((folder / TORCH_META).read_text())
        self.net = torch.export.load(str(folder / TORCH_PROGRAM)).module()

    def predict_examples(self, ids: list[str], x: np.ndarray) -> pd.DataFrame:
        import torch

        with torch.no_grad():
            outputs = self.net(torch.from_numpy(checked(x, self.meta))).numpy()
        return prediction_frame(ids, outputs, self.meta)


def save_torch_predictor(net: Any, example: Any, meta: dict[str, Any], folder: Path) -> TorchPredictor:
    """``net`` (raw-scale in, logits or values out) as ``folder/model.pt2`` with a dynamic batch axis, and ``meta``
    (``export.model_metadata``) beside it; returns it loaded back, as the pyfunc will load it.

    Raises:
        Exception: whatever ``torch.export`` raises for a net it cannot trace.
    """
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    example = torch.cat([example, example]) if len(example) < 2 else example  # a batch of 1 would be fixed
    program = torch.export.export(net.eval().cpu(), (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(folder / TORCH_PROGRAM))
    (folder / TORCH_META).write_text(json.dumps({**meta, "dynamic_axes": ["batch"]}))
    return TorchPredictor(folder)


def log_trained_model(run_id: str, net: Any, example: Any, meta: dict[str, Any]) -> tuple[str, bool]:
    """(model URI, whether its pyfunc returns predictions): a predictor (:func:`log_torch_predictor`) when the net
    has a task and ``torch.export`` traces it; otherwise the net's raw outputs (``tracking.log_model``)."""
    from pipelines import tracking

    if meta.get("task"):
        try:
            return log_torch_predictor(run_id, net, example, meta), True
        except Exception as exc:  # a user's net torch.export cannot trace: still registered, as raw outputs
            print(f"the trained model is logged as raw outputs ({type(exc).__name__}: {first_line(exc)})", flush=True)
    brief = {k: meta[k] for k in ("kind", "task", "input_shape", "num_outputs", "class_names") if k in meta}
    return tracking.log_model(run_id, net, example, metadata={"data": brief}), False


def log_torch_predictor(run_id: str, net: Any, example: Any, meta: dict[str, Any]) -> str:
    """Log the trained net for ``mlflow.pyfunc`` through this module (labels and probabilities, or values, as
    ``dlforge predict``), with the source files it needs; returns the model URI.

    Raises:
        Exception: ``torch.export`` cannot trace the net (the caller logs it as raw outputs instead).
    """
    import torch

    from pipelines import tracking  # mlflow only on this branch: serving never logs

    with tempfile.TemporaryDirectory(prefix="dlforge-serving-") as tmp:
        predictor = save_torch_predictor(net, example, meta, Path(tmp) / "model")
        frame = example_frame(example[:2].numpy(), meta)
        return tracking.log_served_model(
            run_id,
            Path(tmp) / "model",
            name="model",
            loader_module="pipelines.predict",
            code_paths=serving_code(Path(tmp) / "code"),
            input_example=frame,
            output_example=predictor.predict(frame),
            requirements=[*SERVING_REQUIREMENTS, f"torch=={torch.__version__.split('+')[0]}"],
            metadata={"dlforge_model": "trained", "family": meta.get("family"), "task": meta.get("task")},
        )


# The files the predictor imports or loads, relative to the project root: a registered model carries them.
SERVING_FILES = (
    "pipelines/__init__.py",
    "pipelines/predict.py",
    "pipelines/export.py",
    "pipelines/outputs.py",
    "pipelines/version.py",
    "dl_lightning/__init__.py",
    "dl_lightning/errors.py",
    "dl_lightning/data/text.py",
    "dl_lightning/data/bounds.py",
)
SERVING_REQUIREMENTS = ("onnxruntime", "onnx", "numpy", "pandas", "pillow")


def serving_code(dest: Path) -> list[Path]:
    """Copy ``SERVING_FILES`` under ``dest`` (packages kept whole); returns the package folders to ship."""
    root = Path(__file__).resolve().parent.parent
    for name in SERVING_FILES:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / name, target)
    return sorted({dest / name.split("/")[0] for name in SERVING_FILES})


def resolve_model(ref: str, cfg: Config | None = None, dest: Path | None = None) -> Path:
    """A local ``.onnx`` path; a registry URI is downloaded into ``dest`` (tracking imports neither torch nor
    Lightning, and mlflow only on this branch)."""
    if ref.startswith("models:/"):
        from pipelines import tracking

        return tracking.download_onnx(ref, cfg, dest=dest)
    path = Path(ref).expanduser()
    if path.suffix.lower() != ".onnx":
        raise InputError(f"model {ref!r} must be an .onnx file (export one with dlforge compress)")
    return path


# ---------------------------------------------------------------- reading input


def predict_source(predictor: Predictor, source: Path) -> pd.DataFrame:
    """Predictions for an image folder, an NPZ file, or a CSV/Parquet table (numbers or text)."""
    if not source.exists():
        raise InputError(f"input {str(source)!r} does not exist; pass a CSV, NPZ or image folder")
    if source.is_dir():
        return predictor.predict_examples(*read_images(source, predictor.meta))
    suffix = source.suffix.lower()
    if suffix == ".npz":
        x = read_npz(source)
        return predictor.predict_examples([str(i) for i in range(len(x))], x)
    if suffix in TABLES:
        return predictor.predict(read_frame(source))
    raise InputError(f"unsupported input {source.name}; use .csv, .parquet, .npz or an image folder")


def read_frame(path: Path) -> pd.DataFrame:
    _bounds().check_table_file(path)  # a header of a million columns is refused before pandas parses it
    try:
        return pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except Exception as exc:  # pandas raises many parser errors; all mean the same to the user
        raise InputError(f"cannot read {path.name} as a table ({type(exc).__name__})") from None


def read_npz(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except Exception as exc:
        raise InputError(f"cannot read {path.name} as .npz ({type(exc).__name__})") from None
    if "x" in arrays:
        return arrays["x"]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    raise InputError(f"{path.name} holds {sorted(arrays)}; save the examples as x=")


def numeric(frame: pd.DataFrame, meta: dict[str, Any]) -> np.ndarray:
    """Every column is a feature, in order; the count must match the model's input."""
    width = int(np.prod(meta["input_shape"]))
    bad = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if bad:
        raise InputError(f"columns {bad[:5]} are not numeric; the model takes {width} numeric feature columns")
    if frame.shape[1] > width:
        raise InputError(
            f"the model takes {width} feature columns, the input has {frame.shape[1]}; drop the others "
            "(the target, ids), keeping the features in training order"
        )
    if frame.shape[1] < width:
        raise InputError(
            f"the model takes {width} feature columns, the input has only {frame.shape[1]}; pass every feature "
            "column it was trained on, in training order"
        )
    return frame.to_numpy(dtype=np.float32).reshape(len(frame), *meta["input_shape"])


def encode_text(frame: pd.DataFrame, meta: dict[str, Any]) -> np.ndarray:
    """Token ids with the model's own vocabulary and length — the tokenizer training used."""
    texts = [c for c in frame.columns if pd.api.types.is_string_dtype(frame[c])]  # object, or pandas 3 str
    column = "text" if "text" in frame.columns else (texts[0] if len(texts) == 1 else None)
    if column is None:
        raise InputError(f"cannot tell the text column among {list(frame.columns)[:5]}; name it 'text'")
    return _tokenizer().encode(frame[column].fillna("").astype(str), meta["vocab"], meta["input_shape"][0])


@cache
def _tokenizer() -> ModuleType:
    """``dl_lightning/data/text.py`` loaded by path: importing the package would pull in torch via its ``__init__``."""
    return _data_module("text")


@cache
def _bounds() -> ModuleType:
    """``dl_lightning/data/bounds.py`` (file size and column limits), loaded by path like the tokenizer."""
    return _data_module("bounds")


def _data_module(name: str) -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "dl_lightning" / "data" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"dlforge_data_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_images(folder: Path, meta: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    """Images under ``folder`` (recursive, sorted) as raw pixels 0..255, resized like training's image folders."""
    from PIL import Image, UnidentifiedImageError

    if meta["kind"] != "image":
        raise InputError(f"the model takes {meta['kind']} data, not an image folder")
    channels, height, width = meta["input_shape"]
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGES)
    if not files:
        raise InputError(f"no images in {folder}")
    mode = "L" if channels == 1 else "RGB"
    if len(files) * channels * height * width > MAX_BATCH_VALUES:
        raise InputError(
            f"{len(files)} images of {channels}×{height}×{width} need over {MAX_BATCH_VALUES * 4 >> 30} GiB; "
            "predict on smaller folders"
        )
    arrays = []
    for file in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)  # a bomb is refused, not decoded
                with Image.open(file) as image:
                    pixels = np.asarray(image.convert(mode).resize((width, height), Image.Resampling.BILINEAR))
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InputError(f"cannot read image {file} ({first_line(exc)}); replace or remove it") from None
        arrays.append(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))
    return [str(f.relative_to(folder)) for f in files], np.stack(arrays).astype(np.float32)


# ---------------------------------------------------------------- checking and writing


def checked(x: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """``x`` in the dtype and shape the graph takes, or InputError naming the mismatch."""
    text = meta["kind"] == "text"
    if text and not np.issubdtype(x.dtype, np.integer):
        raise InputError(f"a text model takes int token ids, got {x.dtype}; pass the texts as a CSV column")
    if not text and not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise InputError(f"the model takes numbers, got dtype {x.dtype}")
    x = x.astype(np.int64 if text else np.float32)
    expected = list(meta["input_shape"])
    dynamic_seq = "sequence" in meta.get("dynamic_axes", [])
    got = list(x.shape[1:])
    if len(got) != len(expected) or any(
        g != e and not (i == 0 and dynamic_seq) for i, (g, e) in enumerate(zip(got, expected, strict=True))
    ):
        raise InputError(f"each example must have shape {tuple(expected)}, got {tuple(got)}")
    imputes = bool(meta.get("impute_fill"))  # trained with data.impute: the graph fills empty cells itself
    if not text and not (~np.isinf(x) if imputes else np.isfinite(x)).all():
        raise InputError("the input holds NaN or infinite values; fill or drop those rows")
    return x


def check_declared_input(meta: dict[str, Any], name: str) -> None:
    """Refuse metadata whose declared example shape is not small positive integers within MAX_EXAMPLE_VALUES.

    The shape sizes every buffer predict allocates (one image resized to it, a CSV row reshaped to it), and the
    metadata is only text in the file: 40000×40000 would be a MemoryError, not a prediction.
    """
    shape = meta.get("input_shape")
    valid = isinstance(shape, list) and shape and all(isinstance(d, int) and d > 0 for d in shape)
    if not valid:
        raise InputError(f"{name} declares input_shape={shape!r}, not a list of positive sizes; re-export the model")
    if meta.get("kind") == "image" and len(shape) != 3:
        raise InputError(f"{name} declares an image input of shape {tuple(shape)}, not (C, H, W); re-export the model")
    values = math.prod(shape)
    if values > MAX_EXAMPLE_VALUES:
        raise InputError(
            f"{name} declares examples of shape {tuple(shape)} ({values:,} values), over the {MAX_EXAMPLE_VALUES:,} "
            "predict accepts; re-export the model from a dlforge checkpoint"
        )


def prediction_frame(ids: list[str], outputs: np.ndarray, meta: dict[str, Any]) -> pd.DataFrame:
    if meta["task"] == "regression":
        return pd.DataFrame({"id": ids, "prediction": outputs.reshape(len(ids), -1)[:, 0]})
    z = outputs - outputs.max(axis=1, keepdims=True)  # stable softmax of the logits
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    names = list(meta.get("class_names") or []) or [str(i) for i in range(probs.shape[1])]
    frame = pd.DataFrame({"id": ids, "prediction": [names[i] for i in probs.argmax(axis=1)]})
    for i, name in enumerate(names):
        frame[f"prob_{re.sub(r'[^0-9A-Za-z_]+', '_', name)}"] = probs[:, i]
    return frame
