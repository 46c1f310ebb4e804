"""From a data source to train/val/test arrays and the :class:`DataSpec` the model is built from."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import train_test_split

from dl_lightning.data.images import ImageSize
from dl_lightning.data.impute import STRATEGIES, apply_fill, fit_fill
from dl_lightning.data.loaders import read_source
from dl_lightning.data.raw import RawData
from dl_lightning.data.spec import DataSpec, Kind, Task
from dl_lightning.data.text import build_vocab, encode
from dl_lightning.errors import InputError

KINDS = ("tabular", "image", "sequence", "text")
TASKS = ("classification", "regression")
MIN_ROWS = 10  # below this a train/val/test split leaves too little to learn or measure anything
# Integer targets with more distinct values than this may be amounts, not class ids: ask rather than guess.
MAX_INFERRED_CLASSES = 100
_STD_FLOOR = 1e-6  # a constant feature gets std 1e-6, so normalizing never divides by zero
_STAT_AXES = {"tabular": (0,), "sequence": (0, 1), "image": (0, 2, 3)}

Pair = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True, eq=False)
class Splits:
    """Train/val/test ``(x, y)`` pairs and the spec derived from them.

    ``x`` is float32 (tabular ``(N, F)``, sequence ``(N, T, F)``, image ``(N, C, H, W)``) or int64 token ids
    ``(N, max_len)`` for text, never normalized; ``y`` is int64 class ids ``0..C-1`` or float32 regression
    targets, shape ``(N,)``. Every split has at least one row.
    """

    train: Pair
    val: Pair
    test: Pair
    spec: DataSpec


def load_splits(
    source: str,
    *,
    target: str | None = None,
    text_column: str | None = None,
    kind: str | None = None,
    task: str | None = None,
    image_size: ImageSize = "auto",
    max_len: int = 64,
    max_vocab: int = 20000,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 42,
    impute: str = "none",
) -> Splits:
    """Loads ``source`` (``builtin:NAME``, .csv, .parquet, .npz or an image folder) and splits it.

    Guarantees: the same arguments give identical splits; classification splits are stratified whenever every
    class has enough members; ``spec.mean``/``spec.std`` and ``spec.vocab`` come from the train split only;
    ``spec.fingerprint`` is the sha256 of the loaded arrays before splitting. Bad input raises InputError.
    Image folders are resized to ``image_size`` square, or keep their own size with ``"auto"``
    (see :func:`~dl_lightning.data.images.read_image_folder`). With ``impute`` (mean, median, most_frequent) a
    table's empty cells stay NaN in the splits and ``spec.fill`` holds the train split's per-feature fill values,
    which the net applies (and the normalization is fitted after filling).
    """
    _check_arguments(kind, task, val_fraction, test_fraction, max_len, max_vocab)
    if impute != "none" and impute not in STRATEGIES:
        raise InputError(f"unknown impute strategy '{impute}'; valid ones are: none, {', '.join(STRATEGIES)}")
    raw = read_source(
        source, target=target, text_column=text_column, kind=kind, image_size=image_size, allow_missing=impute != "none"
    )
    if impute != "none" and raw.kind != "tabular":
        raise InputError(f"data.impute fills missing cells of tables; this data is {raw.kind} — set data.impute=none")
    fingerprint = fingerprint_arrays(raw.x, raw.y, raw.x_test, raw.y_test)
    task_ = resolve_task(raw, task)
    y, y_test, class_names = encode_targets(raw, task_)
    train, val, test = split_rows(raw, y, y_test, task_, val_fraction, test_fraction, seed)
    vocab: tuple[str, ...] = ()
    if raw.kind == "text":
        vocab = build_vocab(train[0], max_vocab)  # from train only: val/test words the model never saw stay <unk>
        train, val, test = ((encode(x, vocab, max_len), y) for x, y in (train, val, test))
    fill = fit_fill(train[0], impute) if impute != "none" else ()
    mean, std = fit_normalization(apply_fill(train[0], fill) if fill else train[0], raw.kind)
    spec = DataSpec(
        kind=raw.kind,
        task=task_,
        input_shape=tuple(int(d) for d in train[0].shape[1:]),
        num_outputs=len(class_names) if task_ == "classification" else 1,
        class_names=class_names,
        mean=mean,
        std=std,
        vocab=vocab,
        fingerprint=fingerprint,
        fill=fill,
    )
    return Splits(train, val, test, spec)


def _check_arguments(
    kind: str | None,
    task: str | None,
    val_fraction: float,
    test_fraction: float,
    max_len: int,
    max_vocab: int,
) -> None:
    if kind is not None and kind not in KINDS:
        raise InputError(f"unknown data kind '{kind}'; valid ones are: {', '.join(KINDS)} — set data.kind")
    if task is not None and task not in TASKS:
        raise InputError(f"unknown task '{task}'; valid ones are: {', '.join(TASKS)} — set data.task")
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise InputError(
            f"val_fraction={val_fraction}, test_fraction={test_fraction}: each must be in (0, 1) and their sum below 1"
        )
    if max_len < 1 or max_vocab < 2:
        raise InputError(f"max_len={max_len} must be ≥ 1 and max_vocab={max_vocab} ≥ 2 — set data.max_len/max_vocab")


def fingerprint_arrays(*arrays: np.ndarray | None) -> str:
    """sha256 hex of the arrays' bytes (strings hashed as UTF-8); None entries are skipped."""
    digest = hashlib.sha256()
    for array in arrays:
        if array is None:
            continue
        if array.dtype == object:
            digest.update("\x1f".join(map(str, array.ravel())).encode())
        else:
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def resolve_task(raw: RawData, task: Task | None) -> Task:
    """The given task, else the source's, else inferred (non-integer floats: regression)."""
    y = raw.y if raw.y_test is None else np.concatenate([raw.y, raw.y_test])
    numeric = y.dtype.kind in "biuf"
    if task == "regression" and not numeric:
        raise InputError(
            f"task=regression but the targets of {raw.name} are not numeric — set data.task=classification"
        )
    if task is not None or raw.task is not None:
        return task or raw.task
    if y.dtype.kind == "f" and not np.array_equal(y, np.round(y)):
        return "regression"
    distinct = len(np.unique(y))
    if numeric and distinct > MAX_INFERRED_CLASSES:
        raise InputError(
            f"the targets of {raw.name} have {distinct} distinct whole-number values — "
            "set data.task=regression, or data.task=classification if they are class ids"
        )
    return "classification"


def encode_targets(raw: RawData, task: Task) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """``(y, y_test, class_names)``: float32 (regression) or int64 ``0..C-1`` + sorted names."""
    if task == "regression":
        as_float = None if raw.y_test is None else raw.y_test.astype(np.float32)
        return raw.y.astype(np.float32), as_float, ()
    if raw.class_names:  # builtins: already 0..C-1
        as_int = None if raw.y_test is None else raw.y_test.astype(np.int64)
        return raw.y.astype(np.int64), as_int, raw.class_names
    labels = raw.y if raw.y_test is None else np.concatenate([raw.y, raw.y_test])
    if labels.dtype.kind == "f" and np.array_equal(labels, np.round(labels)):
        labels = labels.astype(np.int64)  # whole-number floats (1.0) name their class "1", not "1.0"
    elif labels.dtype == object:
        labels = labels.astype(str)
    classes, codes = np.unique(labels, return_inverse=True)  # sorted, so class ids do not depend on row order
    if len(classes) < 2:
        found = f"a single class ('{classes[0]}')" if len(classes) else "no rows"
        raise InputError(f"the targets of {raw.name} have {found} — a classifier needs at least two; check data.target")
    codes = codes.reshape(-1).astype(np.int64)
    n = len(raw.y)
    return codes[:n], (None if raw.y_test is None else codes[n:]), tuple(str(c) for c in classes)


def split_rows(
    raw: RawData, y: np.ndarray, y_test: np.ndarray | None, task: Task, val: float, test: float, seed: int
) -> tuple[Pair, Pair, Pair]:
    """Seeded train/val/test split; a fixed test split from the source is kept and only val is split off."""
    n = len(raw.x)
    if n < MIN_ROWS:
        raise InputError(f"{raw.name} has only {n} rows; at least {MIN_ROWS} are needed to split train/val/test")
    stratify = task == "classification"
    rows = np.arange(n)
    if raw.x_test is None or y_test is None:
        rows, test_rows = _hold_out(rows, y, _count(n, test), stratify, seed)
        test_pair = (raw.x[test_rows], y[test_rows])
    else:
        test_pair = (raw.x_test, y_test)
    train_rows, val_rows = _hold_out(rows, y, _count(n, val), stratify, seed)
    if len(train_rows) == 0:
        raise InputError(f"val_fraction + test_fraction leave no training rows of {n} in {raw.name} — lower them")
    return (raw.x[train_rows], y[train_rows]), (raw.x[val_rows], y[val_rows]), test_pair


def _count(n: int, fraction: float) -> int:
    return max(1, round(n * fraction))


def _hold_out(rows: np.ndarray, y: np.ndarray, n_held: int, stratify: bool, seed: int) -> Pair:
    """``(kept, held)`` row indices, each sorted; stratified when every class fits on both sides."""
    if n_held >= len(rows):
        return rows[:0], rows
    labels = y[rows] if stratify and _can_stratify(y[rows], n_held) else None
    kept, held = train_test_split(rows, test_size=n_held, random_state=seed, shuffle=True, stratify=labels)
    return np.sort(kept), np.sort(held)


def _can_stratify(labels: np.ndarray, n_held: int) -> bool:
    # The conditions under which scikit-learn's stratified split is defined: two members per class, and room
    # for every class on both sides.
    counts = np.unique(labels, return_counts=True)[1]
    return counts.min() >= 2 and len(counts) <= n_held and len(counts) <= len(labels) - n_held


def fit_normalization(x_train: np.ndarray, kind: Kind) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-feature (tabular, sequence) or per-channel (image) mean and std of ``x_train``; empty for text."""
    if kind not in _STAT_AXES:
        return (), ()
    values = x_train.astype(np.float64)  # float64 so large pixel sums do not lose precision
    mean = values.mean(axis=_STAT_AXES[kind])
    std = np.maximum(values.std(axis=_STAT_AXES[kind]), _STD_FLOOR)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
