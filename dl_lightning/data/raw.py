"""The shape every reader hands to the splitter, and the checks readers share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dl_lightning.data.bounds import check_float32_range
from dl_lightning.data.spec import Kind, Task
from dl_lightning.errors import InputError


@dataclass(frozen=True, eq=False)
class RawData:
    """One loaded source, before splitting.

    ``x`` is float32 ``(N, ...)`` for numeric kinds or an object array of ``N`` strings for text; ``y`` holds
    the labels as loaded. ``x_test``/``y_test`` are a fixed test split when the source has one. ``task`` and
    ``class_names`` are set only by sources that know them (builtins, whose ``y`` is already ``0..C-1``).
    """

    x: np.ndarray
    y: np.ndarray
    kind: Kind
    name: str  # how error messages refer to the source
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    task: Task | None = None
    class_names: tuple[str, ...] = ()


def check_finite(values: np.ndarray, what: str, name: str) -> None:
    """Raises InputError naming ``what`` and how many entries are NaN/Inf, or that it is not numeric."""
    if values.dtype.kind not in "biuf":
        raise InputError(f"{what} in {name} is not numeric (dtype {values.dtype}) — store numbers")
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise InputError(f"{what} in {name} has {bad} NaN/Inf values — fill or drop them")
    check_float32_range(values, what, name)
