"""Every family's default net learns: on a small made-up task it beats chance by a clear margin in a few epochs.

Parametrized over the registry × the kinds each family takes. The tasks are about *where* or *which*: a bump in
one quarter of a signal, a bright patch in one quadrant of an image, a keyword among filler tokens, a linear rule
on tabular features — four classes each, so chance is 0.25. The GAN has no accuracy: it is judged by its own
criterion, that its samples take the layout of the data (untrained, they have none).
"""

from __future__ import annotations

import dataclasses

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dl_lightning.data.spec import DataSpec
from dl_lightning.data.splits import fit_normalization
from dl_lightning.registry import FAMILIES, build_model
from pipelines.config import ModelConfig, OptimConfig
from tests.fixtures import KINDS, VOCAB, tiny_spec

CLASSES = 4
CHANCE = 1 / CLASSES
MIN_ACCURACY = 0.6  # more than twice chance
EPOCHS = 5
TRAIN, TEST = 320, 256  # examples
CASES = [(f, k) for f, cls in FAMILIES.items() if f != "gan" for k in KINDS if k in cls.accepts]


def made_up(kind: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of a four-class task of ``kind``; ``y`` cycles through the classes."""
    y = np.arange(n) % CLASSES
    if kind == "tabular":  # the class is the largest of four fixed projections of 8 features
        x = rng.normal(size=(n, 8))
        y = (x @ np.random.default_rng(7).normal(size=(8, CLASSES))).argmax(1)
    elif kind == "sequence":  # a bump in quarter y of 16 steps, 2 features
        x = rng.normal(0, 0.5, (n, 16, 2))
        x[np.arange(n), 4 * y + rng.integers(0, 4, n), 0] += 3.0
    elif kind == "image":  # a bright 2×2 patch in quadrant y of an 8×8 image
        x = rng.normal(0, 0.5, (n, 1, 8, 8))
        rows, cols = 4 * (y // 2) + rng.integers(0, 3, n), 4 * (y % 2) + rng.integers(0, 3, n)
        for dr in (0, 1):
            for dc in (0, 1):
                x[np.arange(n), 0, rows + dr, cols + dc] += 3.0
    else:  # keyword y (token 2 + y) at a random place among 10 filler tokens, random right padding
        x = rng.integers(2 + CLASSES, len(VOCAB), (n, 12))
        x[np.arange(n), rng.integers(0, 10, n)] = 2 + y
        x = x * (np.arange(12)[None] < rng.integers(10, 13, (n, 1)))  # lengths 10..12: the keyword stays
        return x.astype(np.int64), y.astype(np.int64)
    return x.astype(np.float32), y.astype(np.int64)


def spec_for(kind: str, x: np.ndarray) -> DataSpec:
    mean, std = fit_normalization(x, kind)
    return tiny_spec(kind, task="classification", input_shape=x.shape[1:], num_outputs=CLASSES, mean=mean, std=std)


def default_model(family: str, spec: DataSpec) -> L.LightningModule:
    """The family's net as `dlforge train` builds it with no config: default architecture and optimizer."""
    arch = dataclasses.replace(ModelConfig(), family=family).arch()
    optim = {**dataclasses.asdict(OptimConfig()), "max_epochs": EPOCHS}
    return build_model(family, spec, arch, optim)


@pytest.mark.parametrize(("family", "kind"), CASES, ids=["-".join(c) for c in CASES])
def test_default_net_beats_chance_on_a_made_up_task(family: str, kind: str, one_thread) -> None:
    rng = np.random.default_rng(0)
    L.seed_everything(0, verbose=False)
    x, y = made_up(kind, TRAIN, rng)
    x_test, y_test = made_up(kind, TEST, rng)
    model = default_model(family, spec_for(kind, x))
    train = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=32, shuffle=True)
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train)
    with torch.no_grad():
        accuracy = float((model.eval()(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    assert accuracy >= MIN_ACCURACY, f"{family} on {kind}: test accuracy {accuracy:.2f}, chance {CHANCE:.2f}"


def test_gan_learns_where_the_light_is(one_thread) -> None:
    """The GAN by its own criterion: its samples reproduce the data's layout (bright left half, dark right half)."""
    rng = np.random.default_rng(0)
    L.seed_everything(0, verbose=False)
    x = rng.normal(40, 10, (TRAIN, 1, 8, 8))
    x[..., :4] += 160  # (N, 1, 8, 8): the left half bright
    x = x.astype(np.float32)
    model = default_model("gan", spec_for("image", x))
    train = DataLoader(TensorDataset(torch.from_numpy(x), torch.zeros(TRAIN)), batch_size=32, shuffle=True)
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train)
    samples = model.sample(64, seed=1)  # (64, 1, 8, 8), raw scale
    contrast = float(samples[..., :4].mean() - samples[..., 4:].mean())
    assert contrast > 0.5 * 160, f"left − right brightness of the samples {contrast:.0f}, of the data 160"
