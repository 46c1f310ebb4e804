"""``RunningMean``: the per-step metric path gives the same epoch values as torchmetrics' ``MeanMetric``."""

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
