"""CSV and Parquet files: numeric feature columns and a target (tabular), or a text column and a label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dl_lightning.data.bounds import check_float32_range, check_table_file
from dl_lightning.data.raw import RawData
from dl_lightning.data.spec import Kind
from dl_lightning.errors import InputError, first_line

DEFAULT_TARGETS = ("target", "label")
# A string column is free text when its values average at least this many words; fewer look like categories.
MIN_TEXT_WORDS = 3.0


def read_table(
    path: Path, *, target: str | None, text_column: str | None, kind: Kind | None, allow_missing: bool = False
) -> RawData:
    """Tabular ``x`` (float32, one column per feature) or text ``x`` (one string per row), with raw ``y``.

    Text is chosen when ``kind="text"``, when ``text_column`` is set, or when exactly one non-numeric feature
    column holds free text; otherwise every feature column must be numeric and finite (empty cells are kept as NaN
    when ``allow_missing``: ``data.impute`` fills them).
    """
    frame = read_frame(path)
    target = pick_target(frame, target, path.name)
    y = target_values(frame[target], target, path.name)
    features = frame.drop(columns=[target])
    if features.shape[1] == 0:
        raise InputError(f"{path.name} has no columns besides the target '{target}' — add feature columns")
    if text_column is not None and kind not in (None, "text"):
        raise InputError(f"data.text_column is set but data.kind={kind} — unset one of them")
    if kind == "text" or text_column is not None or (kind is None and _one_free_text_column(features)):
        column = pick_text_column(features, text_column, path.name)
        # A missing text is an empty document, not an error: it encodes to all padding.
        texts = features[column].fillna("").astype(str).to_numpy(dtype=object)
        return RawData(texts, y, "text", path.name)
    return RawData(numeric_features(features, path.name, allow_missing), y, "tabular", path.name)


def table_kind(path: Path, *, target: str | None = None, text_column: str | None = None) -> Kind:
    """``text`` when ``text_column`` is set or the feature columns hold exactly one free-text column, else
    ``tabular``: the rule :func:`read_table` applies when ``data.kind`` is not set."""
    if text_column is not None:
        return "text"
    frame = read_frame(path)
    features = frame.drop(columns=[pick_target(frame, target, path.name)])
    return "text" if _one_free_text_column(features) else "tabular"


def read_frame(path: Path) -> pd.DataFrame:
    """The file as a DataFrame; unreadable files raise InputError (too wide or binary ones before parsing)."""
    check_table_file(path)
    try:
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except pd.errors.EmptyDataError as err:
        raise InputError(f"{path.name} is empty — write a header row and data rows") from err
    except (ValueError, OSError) as err:  # pandas ParserError and pyarrow's errors subclass these
        raise InputError(f"cannot read {path.name} ({first_line(err)}) — check the file format") from err


def pick_target(frame: pd.DataFrame, target: str | None, name: str) -> str:
    """``target`` when given; else a column named ``target`` or ``label``; else the last column."""
    columns = [str(c) for c in frame.columns]
    if target is None:
        return next((c for c in DEFAULT_TARGETS if c in columns), columns[-1])
    if target not in columns:
        raise InputError(f"target column '{target}' not in {name}; columns are: {', '.join(columns)} — set data.target")
    return target


def target_values(column: pd.Series, target: str, name: str) -> np.ndarray:
    """Labels as a plain numpy array: bool, int64, float64, or strings (object) for anything else."""
    missing = int(column.isna().sum())
    if missing:
        raise InputError(f"target column '{target}' in {name} has {missing} missing values — fill or drop those rows")
    if pd.api.types.is_bool_dtype(column):
        return column.to_numpy(dtype=bool)
    if pd.api.types.is_integer_dtype(column):
        return column.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(column):
        values = column.to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            raise InputError(f"target column '{target}' in {name} has Inf values — fix or drop those rows")
        check_float32_range(values, f"target column '{target}'", name)
        return values
    return column.astype(str).to_numpy(dtype=object)


def numeric_features(features: pd.DataFrame, name: str, allow_missing: bool = False) -> np.ndarray:
    """``(N, F)`` float32; names the first non-numeric column, or the first column holding NaN/Inf (NaN passes
    with ``allow_missing``; Inf never does)."""
    for column in features.columns:
        if not pd.api.types.is_numeric_dtype(features[column]):
            example = _first_non_number(features[column])
            raise InputError(
                f"feature column '{column}' in {name} is not numeric (e.g. {str(example)!r}) — encode it as "
                "numbers, drop it, or set data.kind=text if it is free text"
            )
    values = features.to_numpy(dtype=np.float64, na_value=np.nan)
    check_float32_range(values, "the feature columns", name)  # 1e308 would train as Inf, blamed on optim.lr
    bad = np.count_nonzero(np.isinf(values) if allow_missing else ~np.isfinite(values), axis=0)  # (F,)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        others = int(np.count_nonzero(bad)) - 1
        more = f" (and {others} more columns)" if others else ""
        raise InputError(
            f"feature column '{features.columns[first]}' in {name} has {bad[first]} NaN/Inf values{more} "
            "— fill or drop those rows" + ("" if allow_missing else ", or set data.impute=median for empty cells")
        )
    return values.astype(np.float32)


def _first_non_number(column: pd.Series) -> str:
    """The first cell that does not read as a number: what makes the column non-numeric, not merely its first."""
    values = column.dropna()
    failed = values[pd.to_numeric(values, errors="coerce").isna()]
    return str((failed if len(failed) else values).iloc[0]) if len(values) else "NaN"


def pick_text_column(features: pd.DataFrame, text_column: str | None, name: str) -> str:
    """``text_column`` when given, else the only string column, else the only one that reads as free text."""
    columns = [str(c) for c in features.columns]
    if text_column is not None:
        if text_column not in columns:
            raise InputError(
                f"text column '{text_column}' not in {name}; columns are: {', '.join(columns)} — set data.text_column"
            )
        return text_column
    candidates = _string_columns(features)
    if len(candidates) > 1:
        candidates = [c for c in candidates if _looks_like_text(features[c])]
    if len(candidates) != 1:
        found = ", ".join(candidates) if candidates else "none"
        raise InputError(f"cannot tell the text column of {name} (candidates: {found}) — set data.text_column")
    return candidates[0]


def _string_columns(features: pd.DataFrame) -> list[str]:
    return [str(c) for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]


def _one_free_text_column(features: pd.DataFrame) -> bool:
    candidates = _string_columns(features)
    return len(candidates) == 1 and _looks_like_text(features[candidates[0]])


def _looks_like_text(column: pd.Series) -> bool:
    values = column.dropna()
    if values.empty or not all(isinstance(v, str) for v in values):
        return False
    return float(values.str.split().str.len().mean()) >= MIN_TEXT_WORDS
