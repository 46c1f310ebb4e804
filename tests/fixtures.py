"""The tiny data the unit tests share, like Lightning's ``BoringModel`` / ``RandomDataset``.

One small ``DataSpec`` per data kind (``SPECS``), ``tiny_spec`` for a variant of one (another shape, more classes,
class names), and seeded random inputs and targets that fit a spec. A test that needs a particular shape asks for it
here instead of writing out a whole spec, so the normalization and vocabulary stay consistent across tests.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from dl_lightning.data.spec import DataSpec, Kind, Task

KINDS: tuple[Kind, ...] = ("tabular", "image", "sequence", "text")
VOCAB = ("<pad>", "<unk>", *(f"w{i}" for i in range(30)))  # index 0 pads, 1 is unknown, as the text loader builds it

# kind → (task, input shape, outputs, normalization mean, std); small enough that a net builds and fits in a second
_DEFAULTS: dict[str, tuple[Task, tuple[int, ...], int, float, float]] = {
    "tabular": ("classification", (5,), 3, 1.0, 2.0),
    "image": ("classification", (1, 8, 8), 3, 4.0, 5.0),
    "sequence": ("regression", (6, 3), 1, 0.5, 1.5),
    "text": ("classification", (7,), 2, 0.0, 0.0),  # token ids: no normalization
}


def tiny_spec(
    kind: Kind,
    *,
    task: Task | None = None,
    input_shape: tuple[int, ...] | None = None,
    num_outputs: int | None = None,
    standardized: bool = False,
    **changes: Any,
) -> DataSpec:
    """The small spec of ``kind``, with ``task``, ``input_shape`` or ``num_outputs`` changed when given.

    ``mean``/``std`` are constant and as long as the spec's features (tabular, sequence) or channels (image), so they
    follow ``input_shape``; ``standardized``: 0 and 1, for a test that feeds standard-normal data and wants the net to
    see it unchanged. Text has none and takes ``VOCAB``. ``changes`` (``class_names``, ``mean``, ``std``, ...)
    replace fields last.
    """
    default_task, default_shape, default_outputs, mean, std = _DEFAULTS[kind]
    mean, std = (0.0, 1.0) if standardized else (mean, std)
    shape = tuple(int(d) for d in (input_shape or default_shape))
    width = 0 if kind == "text" else (shape[0] if kind == "image" else shape[-1])
    spec = DataSpec(
        kind,
        task or default_task,
        shape,
        num_outputs or default_outputs,
        mean=(mean,) * width,
        std=(std,) * width,
        vocab=VOCAB if kind == "text" else (),
    )
    return dataclasses.replace(spec, **changes)


SPECS: dict[str, DataSpec] = {kind: tiny_spec(kind) for kind in KINDS}


def random_inputs(spec: DataSpec, n: int, seed: int = 0) -> np.ndarray:
    """``n`` raw-scale examples of ``spec``: token ids (int64) for text, noise shifted and scaled (float32) otherwise.

    Raw scale (not standardized) so that the normalization inside the net has work to do.
    """
    rng = np.random.default_rng(seed)
    if spec.kind == "text":
        return rng.integers(0, len(spec.vocab), (n, *spec.input_shape)).astype(np.int64)
    return (rng.standard_normal((n, *spec.input_shape)) * 3 + 2).astype(np.float32)


def random_targets(spec: DataSpec, n: int, seed: int = 0) -> np.ndarray:
    """``n`` targets of ``spec``: classes cycling from 0 (every class present, so AUROC is defined) or float32 noise."""
    if spec.task == "classification":
        return np.arange(n) % spec.num_outputs
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)
