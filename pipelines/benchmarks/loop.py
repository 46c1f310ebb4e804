"""Training-loop overhead: ``pipelines.train.train`` vs a hand-written PyTorch loop doing the same job.

Same net (the registry's ``module.net``, built by the same call so the initial weights are equal), same data split,
batch size, AdamW settings, seed and thread count, and the same shuffling: both draw the epoch permutation from the
global torch generator seeded by ``seed_everything`` and consume it in the same order (init, then per epoch the
sampler's seed and the dropout masks), so the two runs should end with equal weights. Both validate every epoch and
save a ``last`` and a ``best`` checkpoint, as ``dlforge train`` does. Augmentation and the lr schedule are turned off
(the hand loop would otherwise have to reimplement them); the final test is skipped (not part of an epoch).
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from pipelines.benchmarks.common import BenchContext, BenchResult, Row, interleave, quiet, ratio_row, steady
from pipelines.config import PROJECT_ROOT, Config, load_config
from pipelines.train import load_data, optim_settings, resolve_monitor, train

TITLE = "Training-loop overhead: dlforge train vs a plain PyTorch loop"
TARGET = 1.10
CASES = {"digits_cnn": "configs/digits_cnn.yaml", "breast_cancer_mlp": "configs/breast_cancer_mlp.yaml"}
# What makes the two jobs the same job: no augmentation or lr schedule to reimplement, no tracking, no early stop.
FAIR = [
    "data.augment.rotation=0",
    "data.augment.crop_padding=0",
    "optim.scheduler=none",
    "optim.warmup_epochs=0",
    "tracking.enabled=false",
    "trainer.early_stopping_patience=0",
]


class EpochTimer(Callback):
    """Epoch start times, the end of each epoch's last training step, the end of fit, and the final train loss."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.train_ends: list[float] = []
        self.end = 0.0
        self.steps = 0
        self._last = 0.0
        self.loss = float("nan")
        self.module: L.LightningModule | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._last = time.perf_counter()
        self.steps += 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.train_ends.append(self._last)  # validation ran after the last step, before this hook
        self.loss = float(trainer.callback_metrics.get("train/loss", float("nan")))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.end = time.perf_counter()
        self.module = pl_module


def epoch_times(starts: list[float], train_ends: list[float], end: float) -> tuple[list[float], list[float]]:
    """(full epoch incl. validation and checkpoints, training steps only) per epoch."""
    full = [b - a for a, b in zip(starts, [*starts[1:], end], strict=True)]
    return full, [t - s for s, t in zip(starts, train_ends, strict=True)]


def dlforge_fit(cfg: Config) -> dict[str, Any]:
    """One ``train()`` with the epoch timer; the test is skipped (it is not part of an epoch)."""
    timer = EpochTimer()
    with quiet():
        train(cfg, callbacks=[timer], test=False)
    full, steps = epoch_times(timer.starts, timer.train_ends, timer.end)
    net = timer.module.net  # type: ignore[union-attr]
    return {"epoch_s": full, "train_s": steps, "loss": timer.loss, "steps": timer.steps, "state": _state(net)}


def hand_fit(cfg: Config) -> dict[str, Any]:
    """The loop a PyTorch user writes for the same job: train, validate (loss, acc), save last and best."""
    from dl_lightning.registry import build_model

    L.seed_everything(cfg.seed, workers=True, verbose=False)  # what train() does first
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    splits = load_data(cfg)
    net = build_model(cfg.model.family, splits.spec, cfg.model.arch(), optim_settings(cfg)).net
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    train_set, val_set = (TensorDataset(*map(torch.from_numpy, pair)) for pair in (splits.train, splits.val))
    b = cfg.data.batch_size
    drop_last = len(train_set) % b == 1  # the DataModule's rule (a lone example breaks BatchNorm)
    loader = DataLoader(train_set, batch_size=b, shuffle=True, drop_last=drop_last)
    val_loader = DataLoader(val_set, batch_size=b)
    monitor, mode = resolve_monitor(cfg, splits.spec.task)
    folder = PROJECT_ROOT / cfg.output_dir if not cfg.output_dir.startswith("/") else cfg.output_dir
    best, starts, train_ends, steps, loss = None, [], [], 0, float("nan")
    for epoch in range(cfg.trainer.max_epochs):
        starts.append(time.perf_counter())
        net.train()
        total, count = torch.zeros(()), 0
        for x, y in loader:
            batch_loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            optimizer.step()
            total += batch_loss.detach() * len(x)  # a tensor: no host sync per step
            count, steps = count + len(x), steps + 1
        train_ends.append(time.perf_counter())
        loss = float(total) / count
        val = _validate(net, val_loader)
        state = {"state_dict": net.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
        torch.save(state, f"{folder}/hand-last.pt")
        score = val["acc" if monitor == "val/acc" else "loss"]
        if best is None or (score > best if mode == "max" else score < best):
            best = score
            torch.save(state, f"{folder}/hand-best.pt")
    full, train_s = epoch_times(starts, train_ends, time.perf_counter())
    return {"epoch_s": full, "train_s": train_s, "loss": loss, "steps": steps, "state": _state(net)}


@torch.no_grad()
def _validate(net: torch.nn.Module, loader: DataLoader) -> dict[str, float]:
    net.eval()
    total, correct, count = torch.zeros(()), torch.zeros(()), 0
    for x, y in loader:
        out = net(x)  # (B, K) logits
        total += F.cross_entropy(out, y, reduction="sum")
        correct += (out.argmax(dim=1) == y).sum()
        count += len(x)
    return {"loss": float(total) / count, "acc": float(correct) / count}


def _state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def max_weight_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())


def case_config(name: str, ctx: BenchContext, epochs: int, threads: int) -> Config:
    out = ctx.folder(f"loop-{name}")
    overrides = [*FAIR, f"trainer.max_epochs={epochs}", f"trainer.threads={threads}", f"output_dir={out}"]
    return load_config(PROJECT_ROOT / CASES[name], overrides)


def run(ctx: BenchContext) -> BenchResult:
    epochs = 3 if ctx.quick else 6
    threads = 1  # two shared cores: 2-thread timings of tiny ops swing with whoever else runs (OpenMP waits)
    rows, raw, setup = [], {}, {"epochs": epochs, "steady_epochs": epochs - 1, "threads": threads, "fair": FAIR}
    for name in CASES:
        cfg = case_config(name, ctx, epochs, threads)
        runs = interleave(
            {"dlforge": lambda cfg=cfg: dlforge_fit(cfg), "pytorch": lambda cfg=cfg: hand_fit(cfg)}, ctx.repeats
        )
        rows += case_rows(name, runs)
        setup[name] = {"batch_size": cfg.data.batch_size, "steps_per_epoch": runs["pytorch"][0]["steps"] // epochs}
        raw[name] = [
            {k: {kk: vv for kk, vv in r.items() if kk != "state"} for k, r in zip(runs, pair, strict=True)}
            for pair in zip(*runs.values(), strict=True)
        ]
    return BenchResult("loop", TITLE, rows, interpretation(rows, setup), setup, raw)


def case_rows(name: str, runs: dict[str, list[dict[str, Any]]]) -> list[Row]:
    ours, plain = runs["dlforge"], runs["pytorch"]
    epoch = ratio_row(f"{name}: epoch time (train + val + checkpoints)", *_steady(ours, plain, "epoch_s"), TARGET)
    steps = ratio_row(f"{name}: training steps only", *_steady(ours, plain, "train_s"))
    steps_per_epoch = plain[0]["steps"] / len(plain[0]["train_s"])
    per_step = [
        (steady(o["train_s"]) - steady(p["train_s"])) / steps_per_epoch * 1e3 for o, p in zip(ours, plain, strict=True)
    ]
    overhead = Row(f"{name}: overhead per training step", sorted(per_step)[len(per_step) // 2], "ms")
    loss_gap = max(abs(o["loss"] - p["loss"]) for o, p in zip(ours, plain, strict=True))
    weights = max(max_weight_diff(o["state"], p["state"]) for o, p in zip(ours, plain, strict=True))
    fair = Row(
        f"{name}: final train loss, dlforge vs PyTorch",
        loss_gap,
        "abs. difference",
        "≤ 1e-5",
        loss_gap <= 1e-5,
        f"{ours[0]['loss']:.6f} vs {plain[0]['loss']:.6f}; largest weight difference {weights:.1e}",
    )
    return [epoch, steps, overhead, fair]


def _steady(ours: list[dict], plain: list[dict], key: str) -> tuple[list[float], list[float]]:
    return [steady(r[key]) for r in ours], [steady(r[key]) for r in plain]


def interpretation(rows: list[Row], setup: dict[str, Any]) -> str:
    lines = []
    for name in CASES:
        epoch, steps, overhead, fair = (r for r in rows if r.measure.startswith(name))
        verdict = "meets" if epoch.met else "misses"
        lines.append(
            f"- **{name}** ({setup[name]['steps_per_epoch']} steps of batch {setup[name]['batch_size']} per epoch): "
            f"a dlforge epoch takes {epoch.value:.2f}× the plain loop's, which {verdict} the ≤ {TARGET:g} target; "
            f"the training steps alone {steps.value:.2f}×, i.e. about {overhead.value:.2f} ms of framework work per "
            f"step (Lightning's loop, hooks, the per-epoch metric objects). "
            + ("The runs agree (" if fair.met else "The runs do NOT agree (")
            + f"final train loss |Δ| {fair.value:.1e}; {fair.note}), so both trained the same model the same way."
        )
    lines.append(
        "- Why: the overhead is a fixed cost per step, so it matters in proportion to how little work a step does. "
        "The digits CNN does enough per step to hide most of it; the breast-cancer MLP's step is a fraction of a "
        "millisecond of arithmetic, so the same cost is a multiple of it. Before this benchmark every training step "
        "also called `self.log` twice (loss and accuracy), which profiling (cProfile) showed as the largest "
        "single item; `SupervisedModule` now logs its train metric objects once per epoch (same values — see the "
        "equal losses above). Measured side by side against the old code when the change was made (interleaved, 5 "
        "repeats, same machine): the digits CNN's overhead fell from 6.6 to 2.4 ms per step in one run and from "
        "10.0 to 2.1 in another; on the MLP the two runs disagreed (5.3 → 6.9 and 9.3 → 6.3 ms), i.e. within the "
        "noise of the shared cores. What remains is Lightning's own loop (closure, hooks, optimizer wrapper) and, "
        "per epoch, the full validation metric set (AUROC, F1, … — the plain loop computes loss and accuracy only) "
        "— costs a project built on Lightning keeps. So the ≤ 1.10 target is within reach only for steps that do "
        "several milliseconds of work; for tiny tabular nets a plain loop stays faster."
    )
    return "\n".join(lines)
