"""The model registry: log models (PyTorch ``pt2``, single-file ONNX), register versions, move aliases, promote the
best version, and get a registered model back (its checkpoint or its ONNX file)."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dl_lightning import families
from dl_lightning.errors import InputError, first_line
from pipelines.config import Config
from pipelines.tracking.store import (
    _active_run,
    _ensure_connected,
    _mlflow,
    _mlflow_flavor,
    _mlflow_pytorch,
    filter_quote,
)

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

CANDIDATE = "candidate"


def log_model(
    run_id: str,
    net: torch.nn.Module,
    example: torch.Tensor,
    *,
    name: str = "model",
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Log ``net`` to ``run_id`` so that ``mlflow.pyfunc.load_model(uri).predict(x)`` works; returns the model URI.

    Saved as ``pt2`` (``torch.export``: no pickle, loads without dlforge installed) with a dynamic batch dimension;
    a net ``torch.export`` cannot trace falls back to pickle. The signature is inferred from ``example`` (a batch
    of float32 — or int64 token ids for text) and the net's output on it. Puts ``net`` in eval mode.
    """
    import torch
    from mlflow.models import infer_signature

    net = net.eval().cpu()
    example = example.float() if example.is_floating_point() else example
    if len(example) < 2:  # torch.export fixes a batch of 1 as a constant; 2 keeps the batch dimension dynamic
        example = torch.cat([example, example])
    with torch.no_grad():
        output = net(example).float()
    sample, signature = example.numpy(), infer_signature(example.numpy(), output.numpy())
    requirements = [f"torch=={torch.__version__.split('+')[0]}", "numpy"]
    with _active_run(run_id):
        for fmt in ("pt2", "pickle"):
            try:
                info = _mlflow_pytorch().log_model(
                    net,
                    name=name,
                    signature=signature,
                    input_example=sample,
                    pip_requirements=requirements,
                    serialization_format=fmt,
                    metadata=dict(metadata or {}),
                )
                return info.model_uri
            except Exception as exc:
                if fmt == "pickle":
                    raise
                log.warning("torch.export could not trace %s (%s); logging it pickled", type(net).__name__, exc)
    raise AssertionError("unreachable")


def registered_model_name(cfg: Config) -> str:
    """One registered model per experiment and family: ``<experiment>-<family>``, or ``<experiment>`` alone when
    one of its words already is the family (``digits-cnn``, not ``digits-cnn-cnn``)."""
    experiment, family = cfg.tracking.experiment, families.label(cfg.model.family)  # a class path: its class
    return experiment if family.lower() in re.split(r"[^a-z0-9]+", experiment.lower()) else f"{experiment}-{family}"


def register_model(
    model_uri: str,
    *,
    name: str,
    run_id: str | None,
    alias: str | None = CANDIDATE,
    tags: Mapping[str, Any] | None = None,
    description: str | None = None,
) -> str:
    """Register ``model_uri`` as a new version of ``name``, tagged with its source run; point ``alias`` at it.

    ``description`` (markdown) is what the version's page shows. Returns the version number as a string (what
    ``models:/name/<version>`` takes).
    """
    mlflow = _mlflow()
    version_tags = {"dlforge.source_run_id": run_id or "", **{k: str(v) for k, v in (tags or {}).items()}}
    with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints "Created version …"; dlforge reports it itself
        version = mlflow.register_model(model_uri, name, tags=version_tags)
    if description:
        mlflow.MlflowClient().update_model_version(name, version.version, description=description)
    if alias:
        set_alias(name, alias, version.version)
    return str(version.version)


def describe_registered_model(name: str, description: str, tags: Mapping[str, Any] | None = None) -> None:
    """Set the registered model's description (markdown, on its page) and ``tags`` (values as text)."""
    client = _mlflow().MlflowClient()
    client.update_registered_model(name, description=description)
    for key, value in (tags or {}).items():
        client.set_registered_model_tag(name, key, str(value))


def set_alias(name: str, alias: str, version: str | int) -> None:
    """Move ``alias`` (``candidate``, ``champion``) of registered model ``name`` to ``version``."""
    _mlflow().MlflowClient().set_registered_model_alias(name, alias, str(version))


def resolve_checkpoint(ref: str, cfg: Config | None = None, dest: str | Path | None = None) -> tuple[str, str]:
    """A run id or ``models:/<name>@<alias>`` / ``models:/<name>/<version>`` → (local .ckpt path, source run id).

    Downloads the run's ``checkpoints/`` artifacts (``best.ckpt`` preferred) into ``dest`` (default: a new temp
    folder). ``cfg`` names the store; without it the store this process already uses, else the default one.
    """
    _ensure_connected(cfg)
    client = _mlflow().MlflowClient()
    run_id = _source_run(client, ref) if ref.startswith("models:/") else ref
    folder = Path(dest or tempfile.mkdtemp(prefix="dlforge-ckpt-"))
    try:
        local = Path(client.download_artifacts(run_id, "checkpoints", str(folder)))
    except Exception as exc:
        raise InputError(f"{ref}: run {run_id} has no checkpoints/ artifacts to resolve ({first_line(exc)})") from exc
    found = sorted(local.glob("*.ckpt"), key=lambda p: p.name != "best.ckpt")
    if not found:
        raise InputError(f"{ref}: run {run_id} logged no .ckpt file; pass a checkpoint path instead")
    return str(found[0]), run_id


def download_run_file(run_id: str, artifact: str, cfg: Config | None = None) -> Path | None:
    """The run's artifact ``artifact`` (e.g. ``sweep/sweep_results.csv``) in a new temp folder; ``None`` when the
    run or the file does not exist in the store ``cfg`` names."""
    _ensure_connected(cfg)
    folder = tempfile.mkdtemp(prefix="dlforge-artifact-")
    try:
        return Path(_mlflow().MlflowClient().download_artifacts(run_id, artifact, folder))
    except Exception:  # MLflow raises several types for an unknown run or a missing file: both mean "not there"
        return None


def log_onnx_model(
    run_id: str,
    onnx_path: str | Path,
    *,
    name: str,
    input_example: Any,
    output_example: Any = None,
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Log a single-file ONNX model (no external data) with a signature from the examples; returns its URI.

    ``input_example``/``output_example`` are numpy arrays (float32 — or int64 token ids); this module reads the
    file as bytes, so it does not import onnx itself.
    """
    from mlflow.models import infer_signature

    onnx_flavor = _mlflow_flavor("onnx")
    signature = infer_signature(input_example, output_example)
    with _active_run(run_id):
        info = onnx_flavor.log_model(
            Path(onnx_path).read_bytes(),
            name=name,
            signature=signature,
            input_example=input_example,
            save_as_external_data=False,  # one file: the external-data default splits small models (mlflow#8522)
            # The providers dlforge measured and gated the file on. MLflow's default puts CUDA first, and every
            # load on a machine without it (the input-example check at each log, too) warns that CUDA is missing.
            onnx_execution_providers=["CPUExecutionProvider"],
            pip_requirements=["onnxruntime", "numpy"],
            metadata=dict(metadata or {}),
        )
    return info.model_uri


def log_served_model(
    run_id: str,
    data_path: str | Path,
    *,
    name: str,
    loader_module: str,
    code_paths: Sequence[str | Path],
    input_example: pd.DataFrame,
    output_example: pd.DataFrame,
    requirements: Sequence[str],
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Log ``data_path`` as a model MLflow serves through ``loader_module``'s ``_load_pyfunc`` (its custom-flavor
    hook), carrying ``code_paths`` (package folders put first on ``sys.path`` at load); returns the model URI.

    The input schema is positional — unnamed columns, text or any number — so any table whose columns are the
    features in training order is accepted, as ``dlforge predict`` accepts it; the output schema is the example's.
    """
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import AnyType

    # Numbers of any width (pandas reads a CSV of pixels as int64, which MLflow will not cast to float).
    columns = infer_signature(input_example).inputs.inputs
    positional = Schema([ColSpec(c.type if c.type == DataType.string else AnyType()) for c in columns])
    signature = ModelSignature(positional, infer_signature(input_example, output_example).outputs)
    with _active_run(run_id):
        info = _mlflow().pyfunc.log_model(
            name=name,
            loader_module=loader_module,
            data_path=str(data_path),
            code_paths=[str(p) for p in code_paths],
            signature=signature,
            input_example=input_example,
            pip_requirements=list(requirements),
            metadata=dict(metadata or {}),
        )
    return info.model_uri


def download_onnx(ref: str, cfg: Config | None = None, dest: str | Path | None = None) -> Path:
    """``models:/<name>@<alias>`` (or any model URI) of an ONNX model → the local ``.onnx`` file."""
    _ensure_connected(cfg)
    folder = Path(dest or tempfile.mkdtemp(prefix="dlforge-onnx-"))
    try:
        local = Path(_mlflow().artifacts.download_artifacts(artifact_uri=ref, dst_path=str(folder)))
    except Exception as exc:  # unknown name or alias, a store without the artifacts
        raise InputError(
            f"{ref}: cannot download it from the tracking store ({first_line(exc)}); {known_models()}"
        ) from exc
    found = sorted(local.rglob("*.onnx"))
    if not found:
        raise InputError(f"{ref} holds no .onnx file; register an ONNX model (dlforge compress) or pass a file")
    return found[0]


def _source_run(client: MlflowClient, ref: str) -> str:
    try:
        version = _version_of(client, ref)
    except Exception as exc:
        raise InputError(
            f"{ref} is not a registered model version in the tracking store ({first_line(exc)}); {known_models()}"
        ) from exc
    run_id = version.tags.get("dlforge.source_run_id") or version.run_id
    if not run_id:
        raise InputError(f"{ref} records no source run; pass the checkpoint path instead")
    return run_id


def _version_of(client: MlflowClient, ref: str) -> Any:
    """The MLflow ``ModelVersion`` of ``models:/<name>@<alias>`` or ``models:/<name>/<version>``; raises if none."""
    name, _, which = ref.removeprefix("models:/").partition("@")
    if which:
        return client.get_model_version_by_alias(name, which)
    name, _, number = name.partition("/")
    return client.get_model_version(name, number)


@dataclass(frozen=True)
class ModelVersion:
    """A registered model version, as plain values: its model's name, number, tags and source run."""

    name: str
    version: str
    tags: dict[str, str]
    run_id: str | None


def model_version(ref: str, cfg: Config | None = None) -> ModelVersion | None:
    """The version ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` names; None when the store has none.

    ``cfg`` names the store; without it the store this process already uses, else the default one.
    """
    _ensure_connected(cfg)
    try:
        found = _version_of(_mlflow().MlflowClient(), ref)
    except Exception:  # unknown name, alias or version
        return None
    return ModelVersion(found.name, str(found.version), dict(found.tags), found.run_id or None)


def known_models(limit: int = 10) -> str:
    """What the store does hold, for an error about a model it does not: ``name@alias,alias (N versions)``."""
    try:
        models = _mlflow().MlflowClient().search_registered_models(max_results=limit + 1)
    except Exception:  # the store itself is the problem: the caller's message says so
        return "the registered models could not be listed"
    if not models:
        return "the store has no registered models yet (dlforge train tracking.register=true makes one)"
    shown = []
    for model in models[:limit]:
        aliases = ",".join(sorted(model.aliases or {}))
        shown.append(f"models:/{model.name}@{aliases}" if aliases else f"models:/{model.name}/<version>")
    more = f" and {len(models) - limit} more" if len(models) > limit else ""
    return f"registered here: {'; '.join(shown)}{more}"


def tag_model_version(name: str, version: str | int, tags: Mapping[str, Any]) -> None:
    """Set ``tags`` (values as text) on version ``version`` of registered model ``name``."""
    client = _mlflow().MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


def promote_best(
    name: str, alias: str, *, metric: str | None, mode: str, where: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Point ``alias`` at the version of ``name`` with the best ``metric`` among those whose gates passed.

    A version's gates and test metrics are its tags (``dlforge.gates``, ``metric.<name>``); ``where`` narrows the
    candidates to versions with those tags (``{"dlforge.model": "teacher-int8"}``). Without a metric (a generator)
    the newest passing version wins. When no version has passed, the alias stays where it was. Returns the registry
    as the report shows it.
    """
    client = _mlflow().MlflowClient()
    versions = client.search_model_versions(f"name = {filter_quote(name)}")
    passed = [
        v
        for v in versions
        if v.tags.get("dlforge.gates") == "passed" and all(v.tags.get(k) == w for k, w in (where or {}).items())
    ]
    scored = [v for v in passed if f"metric.{metric}" in v.tags]
    if scored:
        best = (max if mode == "max" else min)(scored, key=lambda v: float(v.tags[f"metric.{metric}"]))
        client.set_registered_model_alias(name, alias, best.version)
    elif passed and metric is None:
        client.set_registered_model_alias(name, alias, max(passed, key=lambda v: int(v.version)).version)
    return _listing(client, name, alias, metric, versions)


def promote_version(name: str, alias: str, version: str | int, *, metric: str | None) -> dict[str, Any]:
    """Point ``alias`` at version ``version`` of ``name`` (the caller checked its gates); returns the registry as
    :func:`promote_best` does, each version's ``metric`` read from its ``metric.<metric>`` tag."""
    client = _mlflow().MlflowClient()
    client.set_registered_model_alias(name, alias, str(version))
    return _listing(client, name, alias, metric, client.search_model_versions(f"name = {filter_quote(name)}"))


def _listing(
    client: MlflowClient, name: str, alias: str, metric: str | None, versions: Sequence[Any]
) -> dict[str, Any]:
    """``{name, metric, champion, versions}``: where ``alias`` points and one row per version, oldest first."""
    aliases = client.get_registered_model(name).aliases  # alias → version, after the move
    rows = [
        {
            "version": str(v.version),
            "aliases": sorted(a for a, ver in aliases.items() if str(ver) == str(v.version)),
            "gates": v.tags.get("dlforge.gates", "—"),
            "model": v.tags.get("dlforge.model", ""),  # which artifact an ONNX version is (teacher-int8, student…)
            "metric": float(v.tags[f"metric.{metric}"]) if f"metric.{metric}" in v.tags else None,
            "run_id": v.run_id,
        }
        for v in sorted(versions, key=lambda v: int(v.version))
    ]
    return {"name": name, "metric": metric, "champion": aliases.get(alias), "versions": rows}
