"""``RunningMean``: the per-step metric path gives the same epoch values as torchmetrics' ``MeanMetric``; the val
metric set updated once per epoch gives the values of per-batch updates."""

from __future__ import annotations

import math

import torch
from torchmetrics import MeanMetric

from dl_lightning.modules.base import RunningMean


def test_batch_weighted_mean_equals_mean_metric_over_every_example():
    torch.manual_seed(0)
    ours, reference = RunningMean(), MeanMetric()
    for size in (32, 32, 7):
        loss = torch.rand(())
        ours.add(loss * size, size)
        reference.update(loss.expand(size))
    assert math.isclose(float(ours.compute()), float(reference.compute()), rel_tol=1e-6)
    hits = torch.tensor([1.0, 0.0, 1.0, 1.0])
    ours.reset()
    ours.update(hits)
    assert float(ours.compute()) == 0.75


def test_a_nan_stays_in_the_mean_and_reset_forgets_it():
    mean = RunningMean()
    mean.add(torch.tensor(2.0), 2)
    mean.add(torch.tensor(float("nan")), 1)
    assert math.isnan(float(mean.compute()))  # a diverged loss is not averaged away
    mean.reset()
    mean.add(torch.tensor(3.0), 3)
    assert float(mean.compute()) == 1.0


def test_validation_metrics_from_one_update_per_epoch_equal_torchmetrics_over_every_batch():
    """Val batches are handed to the metric set once at the epoch's end: the logged values are those of the same
    metrics updated batch by batch (the path before), on a val split of three uneven batches."""
    import lightning.pytorch as L
    from torch.utils.data import DataLoader, TensorDataset

    from dl_lightning.modules.base import classification_metrics
    from dl_lightning.registry import build_model
    from tests.fixtures import random_inputs, random_targets, tiny_spec

    spec = tiny_spec("tabular", standardized=True)
    module = build_model("mlp", spec, {"hidden": [8]}, {})
    x, y = torch.from_numpy(random_inputs(spec, 40)), torch.from_numpy(random_targets(spec, 40))
    loader = DataLoader(TensorDataset(x, y), batch_size=16)  # 16, 16, 8
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    (logged,) = trainer.validate(module, loader, verbose=False)
    reference = classification_metrics(spec.num_outputs)
    module.eval()  # as validation ran it (dropout off)
    with torch.no_grad():
        for xb, yb in loader:
            reference.update(module(xb).softmax(dim=1), yb.long())
    expected = {f"val/{k}": float(v) for k, v in reference.compute().items()}
    assert set(expected) <= set(logged)
    for key, value in expected.items():
        assert math.isclose(logged[key], value, rel_tol=1e-6, abs_tol=1e-7), key
