"""The data a training run used, as MLflow dataset inputs: the runs table's Dataset column and lineage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipelines.tracking.store import _mlflow


def log_dataset(
    run_id: str | None,
    *,
    name: str,
    source: str,
    digest: str,
    input_shape: Sequence[int],
    dtype: str,
    sizes: Mapping[str, int],
) -> None:
    """Log the dataset as the run's input (context ``training``), its rows per split as the input's tags.

    MLflow keeps one input per dataset and run, so the splits are tags (``rows.train``…), not inputs of their own.

    Args:
        name: the dataset's short name (``digits``); source: where it was read (a path, URL or ``builtin:…``);
        digest: a fingerprint of its content; input_shape, dtype: one example's features (the schema);
        sizes: rows per split, keyed ``train``/``val``/``test``.
    """
    if run_id is None:
        return
    import numpy as np
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.types import Schema, TensorSpec

    schema = Schema([TensorSpec(np.dtype(dtype), (-1, *input_shape), "x")])
    entity = MetaDataset(_source(source), name=name, digest=digest[:36], schema=schema)._to_mlflow_entity()
    tags = [InputTag("mlflow.data.context", "training")] + [InputTag(f"rows.{k}", str(n)) for k, n in sizes.items()]
    _mlflow().MlflowClient().log_inputs(run_id, datasets=[DatasetInput(entity, tags)])


def _source(source: str) -> Any:
    """A file or URL MLflow knows how to describe, else a code source naming dlforge's ``data.source``."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    if not source.startswith("builtin:"):
        try:
            return resolve_dataset_source(source)
        except Exception:  # a source MLflow has no resolver for: named, not described
            pass
    return CodeDatasetSource({"dlforge.data_source": source})
