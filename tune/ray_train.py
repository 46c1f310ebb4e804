"""Multi-worker trials: a Ray Train ``TorchTrainer`` started inside the Tune trial function (Ray Train V2 pattern).

Each worker runs the handed-in function once; Ray Train has already set up the process group (gloo on CPU, NCCL on
GPU) on a free port of its choosing (so concurrent trials never clash on MASTER_PORT, Lightning #697) and exported
``RANK``, ``LOCAL_RANK``, ``NODE_RANK``, ``WORLD_SIZE`` and ``LOCAL_WORLD_SIZE``. With :func:`ddp_overrides` applied,
Lightning sees an externally launched DDP job — the same path torchrun takes — reuses that process group, and
trains with ``trainer.strategy=ddp``. Metrics go ``ray.train.report`` → Ray's ``TuneReportCallback`` → the Tune trial.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray.train
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from tune.callbacks import report_via_train

WorkerFn = Callable[[dict[str, Any]], None]


def run_with_workers(
    worker_fn: WorkerFn,
    payload: dict[str, Any],
    *,
    num_workers: int,
    cpu: float,
    gpu: float,
    storage_path: str,
    name: str,
) -> None:
    """Run ``worker_fn(payload)`` on ``num_workers`` Ray Train workers as one DDP job; call from a Tune trial.

    Args:
        cpu, gpu: the whole trial's share, split evenly between the workers (2 workers × 0.5 CPU fit a
            2-core machine; 2 × 1 CPU beside a running trial would wait for CPUs forever).
        storage_path: absolute folder for Ray Train's run state.

    Raises:
        ray.train.TrainingFailedError: a worker failed (the Tune trial fails with it, and ``max_failures``
            retries the whole trial: a half-dead DDP group cannot continue).
    """
    scaling = ScalingConfig(
        num_workers=num_workers,
        use_gpu=gpu > 0,
        resources_per_worker={"CPU": cpu / num_workers, **({"GPU": gpu / num_workers} if gpu > 0 else {})},
    )
    trainer = TorchTrainer(
        _worker_entry,
        train_loop_config={"fn": worker_fn, "payload": payload},
        scaling_config=scaling,
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=[TuneReportCallback()],
            failure_config=FailureConfig(max_failures=0),
        ),
    )
    trainer.fit()


def ddp_overrides(use_gpu: bool) -> dict[str, Any]:
    """Config overrides that make ``train()`` join this worker's DDP group (call inside a Ray Train worker)."""
    context = ray.train.get_context()
    local, world = context.get_local_world_size(), context.get_world_size()
    return {
        "trainer.strategy": "ddp",
        "trainer.devices": local,
        "trainer.num_nodes": max(1, world // local),  # Ray packs workers evenly; uneven splits are not supported
        "trainer.accelerator": "gpu" if use_gpu else "cpu",
    }


def world_rank() -> int:
    return ray.train.get_context().get_world_rank()


def _worker_entry(config: dict[str, Any]) -> None:
    report_via_train()
    config["fn"](config["payload"])
