"""``dlforge predict MODEL INPUT``: predictions from an exported model with ONNX Runtime, numpy, pandas and Pillow.

torch is never imported on this path (a test keeps it so): the preprocessing a model needs travels in its ONNX
metadata — input shape, class names, and the vocabulary for text; normalization is inside the graph.
"""

from __future__ import annotations

import importlib.util
import re
import tempfile
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dl_lightning.errors import InputError
from pipelines import export
from pipelines.outputs import write_text_atomic

if TYPE_CHECKING:
    from pipelines.config import Config

TABLES = (".csv", ".parquet", ".pq")
IMAGES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


def predict(model_ref: str, source: str, output: str, cfg: Config | None = None) -> tuple[Path, int]:
    """Run ``model_ref`` on ``source``; write one CSV row per example to ``output``.

    ``model_ref`` is an ``.onnx`` path or ``models:/<name>@<alias>`` (``models:/<name>/<version>``), downloaded from
    ``cfg``'s tracking store. Classification rows hold the predicted class and one probability column per class;
    regression rows the value.
    """
    with tempfile.TemporaryDirectory(prefix="dlforge-predict-") as tmp:
        path = resolve_model(model_ref, cfg, Path(tmp))
        session = export.open_session(path, threads=0)  # the graph is in memory now: the download can go
    meta = export.read_metadata(session)
    if not meta.get("task") or meta.get("role") == "generator":
        raise InputError(f"{path.name} is not a dlforge predictor (a generator, or no dlforge metadata)")
    ids, x = read_input(Path(source), meta)
    x = checked(x, meta)
    outputs = export.run_session(session, x)
    frame = prediction_frame(ids, outputs, meta)
    out = write_text_atomic(output, frame.to_csv(index=False))
    return out, len(frame)


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


def read_input(source: Path, meta: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    """(row ids, examples) from an image folder, an NPZ file, or a CSV/Parquet table (numbers or text)."""
    if not source.exists():
        raise InputError(f"input {str(source)!r} does not exist; pass a CSV, NPZ or image folder")
    if source.is_dir():
        return read_images(source, meta)
    suffix = source.suffix.lower()
    if suffix == ".npz":
        x = read_npz(source)
        return [str(i) for i in range(len(x))], x
    if suffix in TABLES:
        frame = read_frame(source)
        x = encode_text(frame, meta) if meta["kind"] == "text" else numeric(frame, meta)
        return [str(i) for i in range(len(x))], x
    raise InputError(f"unsupported input {source.name}; use .csv, .parquet, .npz or an image folder")


def read_frame(path: Path) -> pd.DataFrame:
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
    if frame.shape[1] != width:
        raise InputError(f"the model takes {width} feature columns, the input has {frame.shape[1]}; drop the others")
    return frame.to_numpy(dtype=np.float32).reshape(len(frame), *meta["input_shape"])


def encode_text(frame: pd.DataFrame, meta: dict[str, Any]) -> np.ndarray:
    """Token ids with the model's own vocabulary and length — the tokenizer training used."""
    texts = [c for c in frame.columns if frame[c].dtype == object]
    column = "text" if "text" in frame.columns else (texts[0] if len(texts) == 1 else None)
    if column is None:
        raise InputError(f"cannot tell the text column among {list(frame.columns)[:5]}; name it 'text'")
    return _tokenizer().encode(frame[column].fillna("").astype(str), meta["vocab"], meta["input_shape"][0])


@cache
def _tokenizer() -> ModuleType:
    """``dl_lightning/data/text.py`` loaded by path: importing the package would pull in torch via its ``__init__``."""
    path = Path(__file__).resolve().parent.parent / "dl_lightning" / "data" / "text.py"
    spec = importlib.util.spec_from_file_location("dlforge_text_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_images(folder: Path, meta: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    """Images under ``folder`` (recursive, sorted) as raw pixels 0..255, resized like training's image folders."""
    from PIL import Image, UnidentifiedImageError

    if meta["kind"] != "image":
        raise InputError(f"the model takes {meta['kind']} data, not an image folder")
    channels, height, _ = meta["input_shape"]
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGES)
    if not files:
        raise InputError(f"no images in {folder}")
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for file in files:
        try:
            with Image.open(file) as image:
                pixels = np.asarray(image.convert(mode).resize((height, height), Image.Resampling.BILINEAR))
        except (UnidentifiedImageError, OSError):
            raise InputError(f"cannot read image {file}; replace or remove it") from None
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
    if not text and not np.isfinite(x).all():
        raise InputError("the input holds NaN or infinite values; fill or drop those rows")
    return x


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
