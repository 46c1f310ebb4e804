"""Read a data source into raw arrays: sklearn builtins, CSV/Parquet tables, NPZ arrays, or image folders.

Nothing here splits, encodes labels or fits statistics (see ``splits.py``); a reader only guarantees that
numeric features are finite float32 and that ``x`` and ``y`` have as many rows.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn import datasets

from dl_lightning.data.images import ImageSize, read_image_folder
from dl_lightning.data.raw import RawData, check_finite
from dl_lightning.data.spec import Kind, Task
from dl_lightning.data.tables import read_table, table_kind
from dl_lightning.errors import InputError, first_line

PYTHON_DOCS_TOPICS = ("compound", "debugger", "specialnames", "types")


def load_python_docs() -> RawData:
    """Sentences of Python's own reference manual (``pydoc_data``, shipped with CPython), labelled by topic.

    A real text corpus that needs no download: ~1,100 sentences about statements, pdb, special methods and
    built-in types.
    """
    from pydoc_data.topics import topics

    texts, labels = [], []
    for label, topic in enumerate(PYTHON_DOCS_TOPICS):
        sentences = re.split(r"(?<=[.!?])\s+", topics[topic])
        kept = [" ".join(s.split()) for s in sentences if 6 <= len(s.split()) <= 60]
        texts += kept
        labels += [label] * len(kept)
    y = np.array(labels, dtype=np.int64)
    x = np.array(texts, dtype=object)
    return RawData(x, y, "text", "builtin:python_docs", task="classification", class_names=PYTHON_DOCS_TOPICS)


# name → (loader, kind, task): scikit-learn's bundled sets and CPython's own docs, so nothing is downloaded.
BUILTINS: dict[str, tuple[Callable, Kind, Task]] = {
    "digits": (datasets.load_digits, "image", "classification"),
    "breast_cancer": (datasets.load_breast_cancer, "tabular", "classification"),
    "wine": (datasets.load_wine, "tabular", "classification"),
    "iris": (datasets.load_iris, "tabular", "classification"),
    "diabetes": (datasets.load_diabetes, "tabular", "regression"),
    "python_docs": (load_python_docs, "text", "classification"),
}
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
_KIND_BY_NDIM: dict[int, Kind] = {2: "tabular", 3: "sequence", 4: "image"}


def read_source(
    source: str,
    *,
    target: str | None,
    text_column: str | None,
    kind: Kind | None,
    image_size: ImageSize,
    allow_missing: bool = False,
) -> RawData:
    """Reads ``source`` and shapes ``x`` for ``kind`` (inferred from the source when None); ``allow_missing``
    keeps empty cells of a CSV/Parquet table as NaN."""
    if source.startswith("builtin:"):
        raw = load_builtin(source.removeprefix("builtin:"))
    else:
        path = locate(source)
        if path.is_dir():
            raw = read_image_folder(path, image_size)
        elif path.suffix.lower() in TABLE_SUFFIXES:
            raw = read_table(path, target=target, text_column=text_column, kind=kind, allow_missing=allow_missing)
        else:
            raw = read_npz(path)
    return shape_for_kind(raw, kind)


def locate(source: str) -> Path:
    """The path of a file or folder source, or InputError when it is missing or of a type no reader takes."""
    path = Path(source).expanduser()
    if not path.exists():
        raise InputError(f"data source {source} does not exist — set data.source to a file, folder or builtin:NAME")
    if not path.is_dir() and path.suffix.lower() not in (*TABLE_SUFFIXES, ".npz"):
        raise InputError(
            f"unsupported file type '{path.suffix}' of {path.name} — use .csv, .parquet, .npz or an image folder"
        )
    return path


def source_kind(
    source: str, *, target: str | None = None, text_column: str | None = None
) -> tuple[Kind | None, tuple[int, ...] | None]:
    """The kind ``source`` is by itself and, for NPZ files, the shape of ``x`` — without loading the data.

    Builtins and folders are known by name; NPZ files by the header of ``x``; tables by whether they hold one
    free-text column (the file is read). ``(None, None)`` when the header cannot be read: loading will say why.
    Raises InputError for unknown builtins and missing or unsupported paths.
    """
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in BUILTINS:
            load_builtin(name)  # raises, naming the valid builtins
        return BUILTINS[name][1], None
    path = locate(source)
    if path.is_dir():
        return "image", None
    if path.suffix.lower() in TABLE_SUFFIXES:
        return table_kind(path, target=target, text_column=text_column), None
    shape = npz_shape(path, "x")
    return (_KIND_BY_NDIM.get(len(shape)), shape) if shape else (None, None)


def npz_shape(path: Path, key: str) -> tuple[int, ...] | None:
    """The shape of array ``key`` in an NPZ file, read from its header only; None when it cannot be read."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as member:
            version = np.lib.format.read_magic(member)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            return tuple(int(d) for d in reader(member)[0])
    except (KeyError, ValueError, OSError, zipfile.BadZipFile):
        return None


def load_builtin(name: str) -> RawData:
    """One of :data:`BUILTINS`; digits come as 8×8 single-channel images with pixel values 0..16."""
    if name not in BUILTINS:
        valid = ", ".join(f"builtin:{n}" for n in BUILTINS)
        raise InputError(f"unknown builtin data set 'builtin:{name}'; valid ones are: {valid} — set data.source")
    loader, kind, task = BUILTINS[name]
    if kind == "text":
        return loader()
    bunch = loader()
    x = bunch.images[:, None] if kind == "image" else bunch.data  # (N, 1, 8, 8) or (N, F)
    names = tuple(str(n) for n in bunch.target_names) if task == "classification" else ()
    y = bunch.target.astype(np.int64 if task == "classification" else np.float32)
    return RawData(x.astype(np.float32), y, kind, f"builtin:{name}", task=task, class_names=names)


def read_npz(path: Path) -> RawData:
    """Arrays ``x``, ``y`` and optionally the fixed test split ``x_test``, ``y_test``."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise InputError(f"cannot read {path.name} as .npz ({first_line(err)}) — save it with numpy.savez") from err
    missing = [key for key in ("x", "y") if key not in arrays]
    if missing:
        held = ", ".join(arrays) or "nothing"
        raise InputError(f"{path.name} has no array {' or '.join(missing)} (it holds: {held}) — save x= and y=")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise InputError(f"{path.name} has only one of x_test, y_test — save both for a fixed test split, or neither")
    x, y = _checked_pair(arrays, "x", "y", path.name)
    if "x_test" not in arrays:
        return RawData(x, y, _kind_of(x, path.name), path.name)
    x_test, y_test = _checked_pair(arrays, "x_test", "y_test", path.name)
    if x_test.shape[1:] != x.shape[1:]:
        raise InputError(
            f"x_test in {path.name} has examples of shape {x_test.shape[1:]} but x has {x.shape[1:]} — make them equal"
        )
    return RawData(x, y, _kind_of(x, path.name), path.name, x_test=x_test, y_test=y_test)


def _checked_pair(arrays: dict[str, np.ndarray], x_key: str, y_key: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Features as finite float32, targets as a 1-D array of the same length."""
    x, y = arrays[x_key], arrays[y_key]
    if x.ndim < 2:
        raise InputError(f"array '{x_key}' in {name} has shape {x.shape}; it needs one row per example, (N, F) or more")
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y  # (N, 1) is a common way to save targets
    if y.ndim != 1:
        raise InputError(f"array '{y_key}' in {name} has shape {y.shape}; it must be one target per row, (N,)")
    if len(x) != len(y):
        raise InputError(f"'{x_key}' has {len(x)} rows but '{y_key}' has {len(y)} in {name} — make them equal")
    check_finite(x, f"array '{x_key}'", name)
    if y.dtype.kind == "f":
        check_finite(y, f"array '{y_key}'", name)
    return x.astype(np.float32), y


def _kind_of(x: np.ndarray, name: str) -> Kind:
    if x.ndim not in _KIND_BY_NDIM:
        raise InputError(f"array 'x' in {name} has shape {x.shape}; use (N,F), (N,T,F) or (N,C,H,W)")
    return _KIND_BY_NDIM[x.ndim]


def shape_for_kind(raw: RawData, kind: Kind | None) -> RawData:
    """Reshapes numeric ``x`` to the layout of ``kind``: (N,F), (N,T,F) or (N,C,H,W); text passes through."""
    if kind is None or kind == raw.kind:
        return raw
    if raw.kind == "text" or kind == "text":
        raise InputError(
            f"{raw.name} is {raw.kind} data but data.kind={kind} — text needs a CSV/Parquet text column; "
            "set data.kind to match the source"
        )
    x_test = None if raw.x_test is None else _reshape(raw.x_test, kind, raw.name)
    return replace(raw, x=_reshape(raw.x, kind, raw.name), x_test=x_test, kind=kind)


def _reshape(x: np.ndarray, kind: Kind, name: str) -> np.ndarray:
    if kind == "tabular":
        return x.reshape(len(x), -1)
    if kind == "sequence" and x.ndim == 2:
        return x[:, :, None]  # (N, T) → (N, T, 1): one feature per step
    if kind == "sequence" and x.ndim == 4 and x.shape[1] == 1:
        return x[:, 0]  # a single-channel image read row by row
    if kind == "image" and x.ndim == 3:
        return x[:, None]  # (N, H, W) → (N, 1, H, W)
    if x.ndim == {"sequence": 3, "image": 4}[kind]:
        return x
    raise InputError(f"{name} has examples of shape {x.shape[1:]}, which cannot be read as {kind} — set data.kind")
