"""``RunningMean``: the per-step metric path gives the same epoch values as torchmetrics' ``MeanMetric``; the val
metric set updated once per epoch gives the values of per-batch updates; a fit publishes the values that the
logging path would."""

from __future__ import annotations

import math

import lightning.pytorch as L
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


def test_held_batches_fold_into_the_values_added_step_by_step():
    """``hold`` keeps the batches and folds them (every HOLD_BATCHES and before compute): the losses' weighted
    mean and the hit rate equal those of summing each step at once; reset forgets held batches too."""
    from dl_lightning.modules.base import HOLD_BATCHES, hit_count, weighted_loss_sum

    torch.manual_seed(0)
    loss_mean, hits, reference_loss, reference_hits = (
        RunningMean(weighted_loss_sum),
        RunningMean(hit_count),
        RunningMean(),
        RunningMean(),
    )
    for step in range(HOLD_BATCHES + 5):  # one fold on the way, the rest at compute
        size = 7 if step % 3 else 16
        loss, out, y = torch.rand(()), torch.randn(size, 3), torch.randint(0, 3, (size,))
        loss_mean.hold(loss, count=size)
        hits.hold(out, y, count=size)
        reference_loss.add(loss * size, size)
        reference_hits.add((out.argmax(dim=1) == y).sum(), size)
    assert math.isclose(float(loss_mean.compute()), float(reference_loss.compute()), rel_tol=1e-6)
    assert float(hits.compute()) == float(reference_hits.compute())
    loss_mean.reset()
    loss_mean.hold(torch.tensor(float("nan")), count=2)
    assert math.isnan(float(loss_mean.compute()))  # a diverged loss stays in the mean
    loss_mean.reset()
    loss_mean.hold(torch.tensor(3.0), count=3)
    assert float(loss_mean.compute()) == 3.0


def test_validation_metrics_from_one_update_per_epoch_equal_torchmetrics_over_every_batch():
    """Val batches are handed to the metric set once at the epoch's end: the logged values are those of the same
    metrics updated batch by batch (the path before), on a val split of three uneven batches."""
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


class _EpochValues(L.Callback):
    """What every epoch-end reader (the epoch line, tracking) sees: callback_metrics at on_train_epoch_end."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        from dl_lightning.metrics import stage_metrics

        self.epochs.append(stage_metrics(trainer.callback_metrics))


def test_a_fit_publishes_the_values_that_self_log_would():
    """In a fit, the epoch values skip ``self.log`` (~0.4 ms a call): train values are published by
    ``TrainEpochValues``, val values straight into callback_metrics. They equal the logging path's: train values
    as the same fit without the callback logs them, val values as ``trainer.validate`` (which logs) returns them."""
    from torch.utils.data import DataLoader, TensorDataset

    from dl_lightning.modules.base import TrainEpochValues
    from dl_lightning.registry import build_model
    from tests.fixtures import random_inputs, random_targets, tiny_spec

    spec = tiny_spec("tabular", standardized=True)
    x, y = torch.from_numpy(random_inputs(spec, 60)), torch.from_numpy(random_targets(spec, 60))
    train, val = DataLoader(TensorDataset(x[:40], y[:40]), batch_size=16), DataLoader(TensorDataset(x[40:], y[40:]))
    seen = {}
    for publish in (True, False):
        torch.manual_seed(0)  # the same weights and dropout masks in both fits
        module, recorder = build_model("mlp", spec, {"hidden": [8]}, {}), _EpochValues()
        trainer = L.Trainer(
            max_epochs=2,
            callbacks=[TrainEpochValues(), recorder] if publish else [recorder],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
            accelerator="cpu",
        )
        trainer.fit(module, train, val)
        seen[publish] = recorder.epochs
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "val/auroc"} <= set(seen[True][0])
    assert seen[True] == seen[False]
    assert seen[True][0] != seen[True][1]  # each epoch's own values: the means were reset between epochs
    (validated,) = trainer.validate(module, val, verbose=False)
    val_keys = {k for k in seen[False][-1] if k.startswith("val/")}
    assert val_keys == set(validated)
    for key in val_keys:
        assert math.isclose(seen[False][-1][key], validated[key], rel_tol=1e-6), key
