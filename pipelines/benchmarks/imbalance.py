"""Class imbalance: minority recall and macro F1 with ``data.class_weights=balanced`` / ``data.sampler=balanced``.

scikit-learn's breast-cancer set is made imbalanced: 30% of it (natural class mix) is held out as a fixed test
split; from the rest the malignant (minority) rows are subsampled until they are 5% of the training rows. The same
MLP is trained three ways — neither option, balanced class weights, balanced sampler — over three seeds (each draws
its own minority subsample), through ``pipelines.train.train``, and scored on the same test rows.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.benchmarks.common import BenchContext, BenchResult, Row, quiet
from pipelines.config import load_config

TITLE = "Class imbalance: minority recall and macro F1, breast cancer with the minority at 5% (3 seeds)"
SEEDS = (0, 1, 2)
MINORITY_SHARE = 0.05
EPOCHS, QUICK_EPOCHS = 20, 1
ARMS = {
    "neither": [],
    "class_weights=balanced": ["data.class_weights=balanced"],
    "sampler=balanced": ["data.sampler=balanced"],
}
NET = ["model.family=mlp", "trainer.threads=1", "tracking.enabled=false", "trainer.monitor=val/f1"]


def imbalanced_npz(folder: Path, seed: int) -> str:
    """Train pool with the minority (class 0, malignant) at ``MINORITY_SHARE``; the natural-mix test split fixed."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    x, y = load_breast_cancer(return_X_y=True)
    x_pool, x_test, y_pool, y_test = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    majority, minority = np.flatnonzero(y_pool == 1), np.flatnonzero(y_pool == 0)
    keep = round(len(majority) * MINORITY_SHARE / (1 - MINORITY_SHARE))
    chosen = np.random.default_rng(seed).choice(minority, keep, replace=False)
    rows = np.concatenate([majority, chosen])
    path = folder / f"imbalanced{seed}.npz"
    np.savez(path, x=x_pool[rows].astype(np.float32), y=y_pool[rows], x_test=x_test.astype(np.float32), y_test=y_test)
    return str(path)


def scores(checkpoint: str, source: str) -> dict[str, float]:
    """Minority recall, macro F1 and accuracy of a checkpoint on the fixed test rows."""
    import torch
    from sklearn.metrics import f1_score, recall_score

    from dl_lightning.registry import load_model

    data = np.load(source)
    with torch.no_grad():
        pred = load_model(checkpoint).net(torch.from_numpy(data["x_test"])).argmax(dim=1).numpy()
    y = data["y_test"]
    return {
        "minority_recall": float(recall_score(y, pred, pos_label=0)),
        "macro_f1": float(f1_score(y, pred, average="macro")),
        "acc": float((pred == y).mean()),
    }


def measure(ctx: BenchContext, epochs: int, seeds: tuple[int, ...]) -> dict[str, Any]:
    from pipelines.train import train

    folder = ctx.folder("imbalance")
    runs: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    for seed in seeds:
        source = imbalanced_npz(folder, seed)
        for arm, extra in ARMS.items():
            out = folder / f"{arm.replace('=', '-')}{seed}"
            cfg = load_config(
                None,
                [
                    *NET,
                    *extra,
                    f"data.source={source}",
                    f"trainer.max_epochs={epochs}",
                    f"seed={seed}",
                    f"output_dir={out}",
                ],
            )
            with quiet():
                result = train(cfg)
            runs[arm].append(scores(result.best_checkpoint or result.last_checkpoint, source))
    train_rows = len(np.load(source)["y"])
    return {"runs": runs, "train_rows": train_rows, "test_rows": len(np.load(source)["y_test"])}


def result_rows(job: dict[str, Any]) -> list[Row]:
    base = job["runs"]["neither"]
    rows = []
    for arm, runs in job["runs"].items():
        recall = statistics.mean(r["minority_recall"] for r in runs) * 100
        f1 = statistics.mean(r["macro_f1"] for r in runs) * 100
        per_seed = ", ".join(f"{r['minority_recall'] * 100:.1f}" for r in runs)
        rows.append(Row(f"{arm}: minority recall, mean of seeds", recall, "%", note=f"per seed {per_seed}"))
        rows.append(Row(f"{arm}: macro F1, mean of seeds", f1, "%"))
        if arm != "neither":
            gain = recall - statistics.mean(r["minority_recall"] for r in base) * 100
            rows.append(Row(f"{arm} − neither: minority recall", gain, "points", "> 0", gain > 0))
    return rows


def run(ctx: BenchContext) -> BenchResult:
    epochs = QUICK_EPOCHS if ctx.quick else EPOCHS
    seeds = SEEDS[:1] if ctx.quick else SEEDS
    job = measure(ctx, epochs, seeds)
    rows = result_rows(job)
    gains = [r for r in rows if r.measure.endswith("− neither: minority recall")]
    helped = [r.measure.split(" −")[0] for r in gains if r.met]
    interpretation = (
        f"- Minority recall rises with: {', '.join(helped) or 'neither option'} (vs no option, mean of "
        f"{len(seeds)} seeds; {job['train_rows']} training rows of which {MINORITY_SHARE:.0%} minority, "
        f"{job['test_rows']} test rows in the natural mix).\n"
        "- Every arm picks its best epoch by val/f1 (what the training command's imbalance line suggests); accuracy "
        "alone would reward predicting the majority."
    )
    setup = {"net": " ".join(NET), "epochs": epochs, "seeds": list(seeds), "minority share of train": MINORITY_SHARE}
    return BenchResult("imbalance", TITLE, rows, interpretation, setup, job)
