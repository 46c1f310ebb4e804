"""Input pipeline: the image-folder loader and the DataModule's train loader vs what the CNN consumes.

A temporary folder of 32×32 grayscale PNGs (the digits, upscaled; one subfolder per class) is read by
``load_splits`` — decode, resize, split, normalization statistics — exactly as ``dlforge train`` reads an image
folder. The folder is read once per job into memory; the train loader then serves batches every epoch. The CNN's
rate is training steps (forward, backward, AdamW) on ready-made batches of the same size, one thread.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipelines.benchmarks.common import BenchContext, BenchResult, Row, interleave, median, ratio
from pipelines.config import load_config

TITLE = "Input pipeline: image-folder and train loader vs the CNN's consumption"
SIZE, BATCH = 32, 64


def write_png_folder(root, count: int) -> None:
    """``count`` digits as 32×32 PNGs in one folder per class (what a user's image folder looks like)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in range(count):
        pixels = (digits.images[i] * 255 / 16).astype(np.uint8)
        folder = root / str(digits.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).resize((SIZE, SIZE), Image.Resampling.BILINEAR).save(folder / f"{i:05d}.png")


def folder_rate(cfg) -> float:
    from pipelines.train import load_data

    started = time.perf_counter()
    splits = load_data(cfg)
    count = sum(len(pair[0]) for pair in (splits.train, splits.val, splits.test))
    return count / (time.perf_counter() - started)


def loader_rate(datamodule) -> float:
    started, count = time.perf_counter(), 0
    for x, _ in datamodule.train_dataloader():
        count += len(x)
    return count / (time.perf_counter() - started)


def cnn_rate(model, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Images per second of training steps of the family's net on ready batches (no loader in the way)."""
    net = model.net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    started = time.perf_counter()
    for x, y in batches:
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return sum(len(x) for x, _ in batches) / (time.perf_counter() - started)


def run(ctx: BenchContext) -> BenchResult:
    from dl_lightning.data import DlforgeDataModule
    from dl_lightning.registry import build_model
    from pipelines.train import load_data, optim_settings

    count = 300 if ctx.quick else 1500
    root = ctx.folder("input-images")
    write_png_folder(root, count)
    cfg = load_config(None, [f"data.source={root}", f"data.image_size={SIZE}", f"data.batch_size={BATCH}"])
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        splits = load_data(cfg)
        datamodule = DlforgeDataModule(splits, batch_size=BATCH)
        model = build_model("cnn", splits.spec, cfg.model.arch(), optim_settings(cfg))
        batches = list(datamodule.train_dataloader())[:8]
        runs = interleave(
            {
                "folder": lambda: folder_rate(cfg),
                "loader": lambda: loader_rate(datamodule),
                "cnn": lambda: cnn_rate(model, batches),
            },
            ctx.repeats,
        )
    finally:
        torch.set_num_threads(previous)
    rows = rows_for(runs, len(splits.train[0]))
    setup = {"images": count, "image_size": SIZE, "batch_size": BATCH, "threads": 1, "cnn": cfg.model.arch()}
    return BenchResult("input", TITLE, rows, interpretation(rows), setup, runs)


def rows_for(runs: dict[str, list[float]], train_count: int) -> list[Row]:
    folder, loader, cnn = (median(runs[k]) for k in ("folder", "loader", "cnn"))
    loader_ratio, loader_spread = ratio(runs["loader"], runs["cnn"])
    folder_ratio, folder_spread = ratio(runs["folder"], runs["cnn"])
    # Reading the folder happens once per job; an epoch of training happens every epoch.
    share = [
        train_count / c / (train_count / f + train_count / c) for f, c in zip(runs["folder"], runs["cnn"], strict=True)
    ]
    return [
        Row("image-folder loader (decode + resize), images/s", folder, "img/s"),
        Row("DataModule train loader, images/s", loader, "img/s"),
        Row("CNN training steps, images/s (1 thread)", cnn, "img/s"),
        Row(
            "train loader / CNN",
            loader_ratio,
            "×",
            "≥ 1",
            loader_ratio >= 1,
            "the loader must outrun the model",
            loader_spread,
        ),
        Row(
            "image-folder loader / CNN",
            folder_ratio,
            "×",
            "report",
            None,
            f"reading the folder ≈ {100 * (1 - median(share)):.0f}% of the first epoch's time",
            folder_spread,
        ),
    ]


def interpretation(rows: list[Row]) -> str:
    folder, loader, cnn, loader_ratio, folder_ratio = rows
    verdict = "so the model never waits for data" if loader_ratio.met else "so the MODEL WAITS FOR DATA"
    return (
        f"- The in-memory train loader serves {loader.value:,.0f} images/s, {loader_ratio.value:.0f}× what the "
        f"CNN trains on one thread ({cnn.value:,.0f} images/s), {verdict}: batches are slices of tensors already "
        "in memory (collate of a TensorDataset), no decoding per epoch, so `data.num_workers=0` is the right default "
        "here.\n"
        f"- Decoding and resizing PNGs runs at {folder.value:,.0f} images/s ({folder_ratio.value:.1f}× the CNN). "
        "It happens once per job, before the first epoch, not every epoch: "
        f"{folder_ratio.note}. For folders far larger than memory a streaming loader with workers would be "
        "needed; dlforge reads a folder into memory (`dl_lightning/data/images.py`)."
    )
