"""A model card (``model_card.md``) for every registered version: what it was trained on, how, how well — with a
bootstrap confidence interval over the test set — how it was compressed, which gates it passed, where it came from,
and what the user says it is for (``model_card.intended_use``).

The card is plain markdown built from facts the stages already hold; :func:`train_card` is the PyTorch version's,
:func:`onnx_card` an ONNX version's. Both are logged as an artifact of their run and set as the version's
description.
"""

from __future__ import annotations

import os
import platform
from typing import Any

import numpy as np

from pipelines.config import Config

BOOTSTRAP_ROUNDS = 1000
LEVEL = 0.95
KEY_HPARAMS = ("optim.name", "optim.lr", "optim.weight_decay", "optim.scheduler", "data.batch_size", "model.dropout")


def per_example(outputs: np.ndarray, y: np.ndarray, task: str) -> np.ndarray:
    """Each test example's share of the metric: a hit (1/0) for classification, the squared error for regression."""
    if task == "classification":
        return (outputs.argmax(axis=1) == y).astype(np.float64)
    return (outputs.reshape(-1) - y.reshape(-1)).astype(np.float64) ** 2


def bootstrap_ci(values: np.ndarray, *, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> tuple[float, float, float]:
    """The mean of ``values`` and its ``LEVEL`` percentile-bootstrap interval (test examples resampled)."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (rounds, len(values)))].mean(axis=1)
    tail = (1 - LEVEL) / 2 * 100
    return float(values.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def data_facts(spec: dict[str, Any], source: str, splits: Any) -> dict[str, Any]:
    """Source, digest, split sizes and the train split's class balance (``splits`` may be ``None``: streamed)."""
    facts: dict[str, Any] = {"source": source, "digest": spec.get("fingerprint") or "unknown", "kind": spec.get("kind")}
    if splits is None or not hasattr(splits, "train"):
        return facts
    facts["sizes"] = {name: len(getattr(splits, name)[0]) for name in ("train", "val", "test")}
    if spec.get("task") == "classification":
        names = spec.get("class_names") or []
        counts = np.bincount(splits.train[1].astype(np.int64))
        facts["balance"] = {(names[i] if i < len(names) else str(i)): int(n) for i, n in enumerate(counts)}
    return facts


def hardware() -> str:
    """This machine in one line: CPU architecture and count, and the GPU when torch sees one."""
    import torch

    text = f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return text


def training_facts(cfg: Config, epochs: int, wall_s: float | None, family: str | None = None) -> dict[str, Any]:
    """Family, the key hyperparameters, epochs, seed, hardware and wall time of the fit."""
    flat = cfg.flat()
    return {
        "family": family or cfg.model.family,
        "hyperparameters": {k: flat[k] for k in KEY_HPARAMS if k in flat} | {"architecture": cfg.model.arch()},
        "epochs": epochs,
        "seed": cfg.seed,
        "hardware": hardware(),
        "wall_s": wall_s,
    }


def metric_facts(metric: str, values: np.ndarray) -> dict[str, Any]:
    """The test metric with its bootstrap interval, from per-example values (:func:`per_example`)."""
    mean, low, high = bootstrap_ci(values)
    return {"metric": metric, "value": mean, "ci": [low, high], "n": len(values), "level": LEVEL}


def render(title: str, facts: dict[str, Any], intended_use: str) -> str:
    """The card's markdown: one section per fact group that is present, intended use last."""
    lines = [f"# Model card — {title}", ""]
    for heading, key in SECTIONS:
        if facts.get(key):
            lines += [f"## {heading}", "", *RENDERERS[key](facts[key]), ""]
    use = intended_use.strip() or "Not stated: set `model_card.intended_use` in the config to say what it is for."
    return "\n".join([*lines, "## Intended use and limits", "", use, ""])


def _kv(facts: dict[str, Any]) -> list[str]:
    return [f"- **{k}**: {_value(v)}" for k, v in facts.items() if v is not None]


def _value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_value(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _test(facts: dict[str, Any]) -> list[str]:
    low, high = facts["ci"]
    return [
        f"- **{facts['metric']}**: {facts['value']:.4f}, {facts['level']:.0%} CI [{low:.4f}, {high:.4f}] "
        f"(bootstrap over the {facts['n']} test examples, {BOOTSTRAP_ROUNDS} resamples)"
    ]


def _gates(gates: list[dict[str, Any]]) -> list[str]:
    return [f"- {'PASS' if g['passed'] else 'FAIL'} — {g['name']}: {g['detail']}" for g in gates]


SECTIONS = (
    ("Data", "data"),
    ("Training", "training"),
    ("Test metrics", "test"),
    ("Compression", "compression"),
    ("Gates", "gates"),
    ("Lineage", "lineage"),
)
RENDERERS = {"data": _kv, "training": _kv, "test": _test, "compression": _kv, "gates": _gates, "lineage": _kv}


# ---------------------------------------------------------------- the two cards


def train_card(cfg: Config, result: Any, module: Any, splits: Any, lineage: dict[str, Any]) -> str:
    """The PyTorch version's card: ``result`` a ``TrainResult``, ``module`` its best checkpoint, ``splits`` its data
    (the test metric and its interval come from the module's outputs on the test split)."""
    from pipelines import export

    facts: dict[str, Any] = {
        "data": data_facts(result.data, cfg.data.source, splits),
        "training": training_facts(cfg, result.epochs, getattr(result, "wall_s", None)),
        "lineage": lineage,
    }
    task = result.data.get("task")
    if task and hasattr(splits, "test"):
        net = module.export_net()[0]
        outputs = export.run_torch(net, splits.test[0])
        metric = "test/acc" if task == "classification" else "test/mse"
        facts["test"] = metric_facts(metric, per_example(outputs, splits.test[1], task))
    return render(f"{cfg.model.family} (PyTorch fp32)", facts, cfg.model_card.intended_use)


def onnx_card(cfg: Config, key: str, result: Any, probe: Any, splits: Any, lineage: dict[str, Any]) -> str:
    """An ONNX version's card: ``key`` its artifact, ``result`` the ``CompressResult``, ``probe`` what it was
    measured on (test metric and interval from the file's own outputs)."""
    from pipelines import export

    row = next(r for r in result.rows if r.file == result.files[key])
    meta = export.read_metadata(row.file)
    latency = {k: f"{v:.3f} ms" for k, v in row.latency_ms.items() if k.endswith("p50")}
    compression = {
        "artifact": key,
        "recipe": meta.get("quantization", "none"),
        "size": f"{row.size_bytes / 1e3:.1f} kB",
        "latency (one thread, p50)": latency,
        "parity max |Δ| vs PyTorch": _parity(result, key),
    }
    gates = [g for g in result.gates if not g.guards or key in g.guards]
    facts: dict[str, Any] = {
        "data": data_facts(meta, cfg.data.source, splits),
        "training": training_facts(cfg, 0, None, meta.get("family")) | {"epochs": "see the teacher's card"},
        "compression": compression,
        "gates": [{"name": g.name, "passed": g.passed, "detail": g.detail} for g in gates],
        "lineage": lineage,
    }
    if probe.test_y is not None and probe.task:
        outputs = export.run_session(export.open_session(row.file), probe.test_x)
        facts["test"] = metric_facts(result.metric, per_example(outputs, probe.test_y, probe.task))
    return render(f"{key} ({meta.get('family')}, ONNX)", facts, cfg.model_card.intended_use)


def _parity(result: Any, key: str) -> str:
    """The fp32 file's parity with PyTorch (the quantized file is made from it, so it inherits it)."""
    fp32 = result.files.get(key.removesuffix("-int8"))
    row = next((r for r in result.rows if r.file == fp32 and r.parity_max_abs_diff is not None), None)
    return "—" if row is None else f"{row.parity_max_abs_diff:.1e}"
