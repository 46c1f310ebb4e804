"""Measuring: the arrays every model is scored on, the test score, size and one-thread latency.

Every row of the report comes from :func:`measure_torch` or :func:`measure_onnx` on the same :class:`Probe`, so rows
differ only in the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from dl_lightning.data import Splits
from dl_lightning.data.user_datamodule import UserData
from pipelines import export
from pipelines.compression.results import Row
from pipelines.compression.teacher import Teacher
from pipelines.config import Config

PARITY_BATCHES = 4
STREAMED_TEST_EXAMPLES = 10_000  # a DataModule's test data may not fit in memory: score this many (whole batches)
LATENCY_BATCHES = (1, 64)


@dataclass(frozen=True)
class Probe:
    """The arrays every model is measured on: test split, parity batches, calibration batches, latency inputs."""

    test_x: np.ndarray
    test_y: np.ndarray | None  # None for the GAN (noise in, images out: no test metric)
    parity: list[np.ndarray]
    calibration: list[np.ndarray]
    task: str | None

    def batch(self, n: int) -> np.ndarray:
        """``n`` test inputs, cycling through the test split when it is shorter."""
        return self.test_x[np.arange(n) % len(self.test_x)]


def make_probe(cfg: Config, teacher: Teacher, splits: Splits | UserData) -> Probe:
    """The probe of ``splits`` (seeded by ``cfg.seed``); for a GAN, a fixed set of noise vectors instead."""
    b, rng = cfg.data.batch_size, np.random.default_rng(cfg.seed)
    if teacher.record.generative:  # the generator's inputs are noise: a fixed, seeded set stands in for data
        latent = teacher.module.export_net()[1].shape[1]
        noise = rng.standard_normal((256, latent)).astype(np.float32)
        return Probe(
            noise, None, _batches(noise, b, PARITY_BATCHES), _batches(noise, b, cfg.compress.calibration_batches), None
        )
    if isinstance(splits, UserData):
        return _streamed_probe(cfg, splits)
    train_x = splits.train[0][rng.permutation(len(splits.train[0]))]
    val_x = splits.val[0]
    parity = [*_batches(val_x, b, PARITY_BATCHES), val_x[:1]]  # batch 1 too: a dynamic axis must really be dynamic
    return Probe(
        splits.test[0], splits.test[1], parity, _batches(train_x, b, cfg.compress.calibration_batches), splits.spec.task
    )


def _streamed_probe(cfg: Config, data: UserData) -> Probe:
    """The probe of a user's DataModule, read without gathering its data: parity and static-INT8 calibration
    batches from its val loader, scores on its first :data:`STREAMED_TEST_EXAMPLES` test examples."""
    val = data.val_inputs(max(PARITY_BATCHES, cfg.compress.calibration_batches))
    test_x, test_y, cut = data.test_examples(STREAMED_TEST_EXAMPLES)
    if cut:
        print(f"compress: every model is scored on the first {len(test_x)} test examples of {data.source}", flush=True)
    parity = [*val[:PARITY_BATCHES], val[0][:1]]
    return Probe(test_x, test_y, parity, val[: cfg.compress.calibration_batches], data.spec.task)


def _batches(x: np.ndarray, size: int, count: int) -> list[np.ndarray]:
    return [x[i : i + size] for i in range(0, min(len(x), size * count), size)]


def score(outputs: np.ndarray, y: np.ndarray, task: str) -> float:
    """Accuracy of logits ``(N, K)`` or the MSE of values ``(N, 1)`` against ``y`` ``(N,)``."""
    if task == "classification":
        return float((outputs.argmax(axis=1) == y).mean())
    return float(np.mean((outputs.reshape(-1) - y.reshape(-1)) ** 2))


def count_params(net: nn.Module) -> int:
    """Number of parameters of ``net`` (trainable or not)."""
    return sum(p.numel() for p in net.parameters())


def _latencies(time_batch: Callable[[np.ndarray], tuple[float, float]], probe: Probe) -> dict[str, float]:
    """``b<N>_p50`` / ``b<N>_p95`` in ms for each batch size of the report, timed by ``time_batch``."""
    latency: dict[str, float] = {}
    for b in LATENCY_BATCHES:
        p50, p95 = time_batch(probe.batch(b))
        latency |= {f"b{b}_p50": p50, f"b{b}_p95": p95}
    return latency


def measure_torch(cfg: Config, name: str, key: str, net: nn.Module, probe: Probe) -> Row:
    """The row of ``net`` run eagerly in PyTorch: parameters, state-dict bytes, test metric, latency."""
    outputs = export.run_torch(net, probe.test_x)
    metric = None if probe.test_y is None else score(outputs, probe.test_y, probe.task)
    latency = _latencies(lambda x: torch_latency(net, x, cfg.compress.latency_repeats), probe)
    size = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    return Row(name, "pytorch", count_params(net), size, metric, latency, key=key)


def measure_onnx(cfg: Config, name: str, key: str, path: Path, params: int, probe: Probe, parity: float | None) -> Row:
    """The row of the ONNX file ``path`` on one ONNX Runtime thread: file bytes, test metric, latency."""
    session = export.open_session(path, threads=1)
    outputs = export.run_session(session, probe.test_x)
    metric = None if probe.test_y is None else score(outputs, probe.test_y, probe.task)
    latency = _latencies(lambda x: onnx_latency(session, x, cfg.compress.latency_repeats), probe)
    return Row(name, "onnxruntime", params, path.stat().st_size, metric, latency, parity, str(path), key)


def latency_ms(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> tuple[float, float]:
    """(p50, p95) wall time of ``fn()`` in milliseconds over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def onnx_latency(session: ort.InferenceSession, x: np.ndarray, repeats: int) -> tuple[float, float]:
    """(p50, p95) ms of one ``session.run`` on ``x``; the session's own thread count applies."""
    feed = {session.get_inputs()[0].name: x}
    return latency_ms(lambda: session.run(None, feed), repeats)


def torch_latency(net: nn.Module, x: np.ndarray, repeats: int) -> tuple[float, float]:
    """(p50, p95) ms of eager PyTorch on one thread (the thread count is restored afterwards)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tensor = torch.from_numpy(x)
        net.eval()
        with torch.inference_mode():
            return latency_ms(lambda: net(tensor), repeats)
    finally:
        torch.set_num_threads(previous)
