"""Bounds on what a file may ask of memory and time, checked before it is parsed; also used at predict time.

Imports only numpy and the project's error type (predict-time code loads this file without torch).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from dl_lightning.errors import InputError

MAX_TABLE_COLUMNS = 65_536  # a 256×256 image flattened; a header-only CSV of 1M columns took 103 s and 3.6 GB
MAX_HEADER_BYTES = 8 << 20  # the header line is read alone, with this cap, before pandas sees the file
FLOAT32_MAX = float(np.finfo(np.float32).max)  # ≈3.4e38: larger values become Inf in the model's float32
_CHUNK = 1 << 20


def check_table_file(path: Path) -> None:
    """Refuse a CSV/Parquet file with more than MAX_TABLE_COLUMNS columns, or a CSV holding NUL bytes.

    Reads the CSV header line alone (at most MAX_HEADER_BYTES) and scans the bytes for NUL; Parquet's column count
    comes from its footer. Nothing is parsed into a table here.
    """
    if path.suffix.lower() != ".csv":
        _check_parquet_columns(path)
        return
    with path.open("rb") as handle:
        header = handle.readline(MAX_HEADER_BYTES + 1)
    if len(header) > MAX_HEADER_BYTES:
        raise InputError(f"{path.name} has a header line over {MAX_HEADER_BYTES >> 20} MB — is it a CSV file?")
    _check_no_nul(path)
    columns = next(csv.reader(io.StringIO(header.decode("utf-8", errors="replace"))), [])
    _check_column_count(len(columns), path.name)


def check_float32_range(values: np.ndarray, what: str, name: str) -> None:
    """Raise InputError when finite numbers in ``values`` do not fit float32 (they would train as Inf)."""
    if values.dtype.kind != "f" or values.dtype.itemsize <= 4 or values.size == 0:
        return
    with np.errstate(invalid="ignore"):
        huge = np.abs(values) > FLOAT32_MAX
    if huge.any():
        example = float(values[huge].flat[0])
        raise InputError(
            f"{what} in {name} holds {int(huge.sum())} values beyond float32's range (e.g. {example:g}) — rescale "
            "them (standardize, or take a log)"
        )


def _check_no_nul(path: Path) -> None:
    """NUL bytes mean a binary or UTF-16 file; pandas would read them as odd text cells, far from the cause."""
    offset, lines = 0, 1
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            at = block.find(b"\x00")
            if at >= 0:
                line = lines + block.count(b"\n", 0, at)
                raise InputError(
                    f"{path.name} holds a NUL byte at line {line} (byte {offset + at}): a binary or UTF-16 file — "
                    "save it as UTF-8 text CSV"
                )
            offset, lines = offset + len(block), lines + block.count(b"\n")


def _check_parquet_columns(path: Path) -> None:
    try:
        import pyarrow.parquet as pq

        count = len(pq.read_schema(path).names)
    except Exception:  # not readable as Parquet: the reader says so in its own words
        return
    _check_column_count(count, path.name)


def _check_column_count(count: int, name: str) -> None:
    if count > MAX_TABLE_COLUMNS:
        raise InputError(
            f"{name} has {count} columns, over the {MAX_TABLE_COLUMNS} dlforge reads from a table — store wide "
            "arrays as .npz (x of shape (N, ...))"
        )
