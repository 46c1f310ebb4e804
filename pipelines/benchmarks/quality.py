"""Model quality on data dlforge was never tuned on: each family's default net against a plain PyTorch script.

For every family × data kind it takes, ``dlforge train`` with defaults (the real ``train()``, tracking off) and
the fifteen-line PyTorch net a user would write instead (two conv+pool blocks and a linear head; one LSTM layer;
a small MLP; one encoder layer) train on the same train split for the same epochs and batch size; both are scored
on the same test split. The plain script gets Adam 1e-3 and no validation loop.

The section is a list of parts (:data:`PARTS`): each part is a function ``(ctx, datasets) -> (rows, raw)``; more
rows (e.g. distilled vs scratch students) come in as another part, without touching this one.
"""

from __future__ import annotations

import math
import multiprocessing
import statistics
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dl_lightning.data import Splits
from pipelines.benchmarks import quality_data
from pipelines.benchmarks.common import BenchContext, BenchResult, Row, quiet

TITLE = "Model quality: dlforge defaults vs a plain PyTorch script"
EPOCHS = 10
THREADS = 1  # both sides alike; one thread also keeps the figures steady on a shared machine
BATCH = 64
# 5 seeds: one seed swings a case by ±2–4 points (test sets of ~110–300 examples), so 3 could not tell a 1-point gap
# from noise; the note gives the standard error of the mean difference (seeds pair both sides on one split)
SEEDS = (0, 1, 2, 3, 4)
WORKERS = 2  # (case, seed) runs in parallel, one thread each: the section stays within ~15 min on 2 cores
MAX_GAP = 1.0  # points of test accuracy dlforge may trail the plain script by (issue 13)

# data set name → (maker, examples, families that take it); sizes small enough for minutes on two cores. Text is
# held out from the shipped configs (builtin:python_docs is configs/python_docs_transformer.yaml's data): eight other
# topics of CPython's manual (~720 sentences, whatever the size) and made-up reviews where word order matters
DATASETS: dict[str, tuple[Callable[..., str], int, tuple[str, ...]]] = {
    "gray 20×20 images": (quality_data.gray_digits, 1200, ("cnn", "mlp")),
    "RGB 24×24 images": (quality_data.rgb_shapes, 1000, ("cnn", "mlp")),
    "1-D signals (NPZ)": (quality_data.signals, 1200, ("cnn", "rnn", "transformer", "mlp")),
    "tabular (CSV)": (quality_data.tabular, 1500, ("mlp",)),
    "text (Python manual, other topics)": (quality_data.python_topics, 0, ("rnn", "transformer", "mlp")),
    "text (made-up reviews)": (quality_data.review_sentences, 2000, ("rnn", "transformer", "mlp")),
}


@dataclass(frozen=True)
class Case:
    """One family on one data set: the config overrides and the splits both sides train on."""

    family: str
    data: str
    source: str
    overrides: list[str]


def run(ctx: BenchContext) -> BenchResult:
    folder = ctx.folder("quality")
    sources = make_datasets(folder, ctx.quick)
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    for part in PARTS:
        part_rows, part_raw = part(ctx, sources)
        rows += part_rows
        raw |= part_raw
    setup = {"epochs": _epochs(ctx), "batch_size": BATCH, "threads": THREADS, "seeds": len(_seeds(ctx))}
    setup["examples"] = {name: n or "all" for name, (_, n, _) in DATASETS.items()}
    return BenchResult("quality", TITLE, rows, _interpretation(raw), setup, raw)


def make_datasets(folder: Path, quick: bool) -> dict[str, str]:
    """data set name → ``data.source``; quick runs make a tenth of each."""
    return {name: maker(folder, n=n // 10 if quick else n) for name, (maker, n, _) in DATASETS.items()}


def _epochs(ctx: BenchContext) -> int:
    return 1 if ctx.quick else EPOCHS


# ---------------------------------------------------------------- part: dlforge vs plain PyTorch


def versus_plain(ctx: BenchContext, sources: dict[str, str]) -> tuple[list[Row], dict[str, Any]]:
    """One row per family × data set: dlforge's test accuracy minus the plain script's, in points, averaged over
    :data:`SEEDS` (each seed its own split and initialization, the same for both sides); [min, max] over seeds."""
    rows, raw = [], {}
    names = {
        f"{family} on {data}": (family, data, source)
        for data, source in sources.items()
        for family in DATASETS[data][2]
    }
    cases = [Case(f, d, s, _overrides(ctx, f, s, seed)) for f, d, s in names.values() for seed in _seeds(ctx)]
    results = iter(run_cases(cases))
    for name in names:
        runs = [next(results) for _ in _seeds(ctx)]
        ours, plain = (statistics.mean(r[i] for r in runs) for i in (0, 1))
        gaps = [100 * (a - b) for a, b in runs]
        error = statistics.stdev(gaps) / math.sqrt(len(gaps)) if len(gaps) > 1 else None
        raw[name] = {"dlforge": ours, "plain": plain, "points": statistics.mean(gaps), "error": error, "per_seed": runs}
        note = f"dlforge {ours:.3f}, plain PyTorch {plain:.3f}" + (
            f"; standard error {error:.2f}" if error is not None else ""
        )
        met = raw[name]["points"] >= -MAX_GAP
        target = f"≥ −{MAX_GAP:g}"
        spread = [min(gaps), max(gaps)]
        rows.append(Row(f"{name}: dlforge − plain", raw[name]["points"], "points", target, met, note, spread))
    return rows, {"versus_plain": raw}


def run_cases(cases: list[Case]) -> list[tuple[float, float]]:
    """:func:`compare` on every case, in order, :data:`WORKERS` at a time in fresh processes (spawned: no state of
    this process, Lightning's or torch's, leaks into a run)."""
    if len(cases) < 2:
        return [compare(case) for case in cases]
    with ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(compare, cases))


def _seeds(ctx: BenchContext) -> tuple[int, ...]:
    return SEEDS[:1] if ctx.quick else SEEDS


def _overrides(ctx: BenchContext, family: str, source: str, seed: int) -> list[str]:
    out = Path(ctx.workdir) / "quality" / "runs" / f"{family}-{Path(source).name}-{seed}"
    return [
        f"data.source={source}",
        f"model.family={family}",
        f"trainer.max_epochs={_epochs(ctx)}",
        f"data.batch_size={BATCH}",
        f"trainer.threads={THREADS}",
        "tracking.enabled=false",
        f"output_dir={out}",
        f"seed={seed}",
    ]


def compare(case: Case) -> tuple[float, float]:
    """``(dlforge test accuracy, plain script test accuracy)`` on the same splits, both seeded by the config."""
    from pipelines.config import load_config
    from pipelines.train import load_data, train

    cfg = load_config(None, case.overrides)
    with quiet():
        ours = train(cfg).metrics["test/acc"]
        splits = load_data(cfg)
    torch.set_num_threads(THREADS)
    torch.manual_seed(cfg.seed)
    return ours, plain_accuracy(plain_net(case.family, splits), splits, cfg.trainer.max_epochs)


# ---------------------------------------------------------------- the plain script


def plain_accuracy(net: nn.Module, splits: Splits, epochs: int) -> float:
    """Adam 1e-3, batch BATCH, ``epochs`` over the train split, no validation; accuracy on the test split."""
    x, y = (torch.from_numpy(a) for a in splits.train)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(x)).split(BATCH):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    net.eval()
    x_test, y_test = (torch.from_numpy(a) for a in splits.test)
    with torch.no_grad():
        return float((net(x_test).argmax(1) == y_test).float().mean())


def plain_net(family: str, splits: Splits) -> nn.Module:
    """The net a user writes in fifteen lines for this family and data, inputs standardized like dlforge's."""
    spec = splits.spec
    n_out, shape = spec.num_outputs, spec.input_shape
    if spec.kind == "text":
        body = {"mlp": BagOfWords, "rnn": TextLSTM, "transformer": TextEncoder}[family](len(spec.vocab), n_out)
        return body
    scale = _Standardize(spec.mean, spec.std, channel_dims=2 if spec.kind == "image" else 0)
    if family == "cnn":
        return nn.Sequential(scale, ConvNet(shape, n_out, image=spec.kind == "image"))
    if family == "rnn":
        return nn.Sequential(scale, SignalLSTM(shape[-1], n_out))
    if family == "transformer":
        return nn.Sequential(scale, SignalEncoder(shape, n_out))
    return nn.Sequential(scale, nn.Flatten(), nn.Linear(math.prod(shape), 128), nn.ReLU(), nn.Linear(128, n_out))


class _Standardize(nn.Module):
    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], channel_dims: int) -> None:
        super().__init__()
        view = (-1,) + (1,) * channel_dims
        self.register_buffer("mean", torch.tensor(mean).view(view))
        self.register_buffer("std", torch.tensor(std).view(view))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ConvNet(nn.Module):
    """Two conv+pool blocks and a flattened linear head, over images (B, C, H, W) or signals (B, T, F)."""

    def __init__(self, shape: tuple[int, ...], n_out: int, image: bool) -> None:
        super().__init__()
        conv, pool = (nn.Conv2d, nn.MaxPool2d) if image else (nn.Conv1d, nn.MaxPool1d)
        c_in, sizes = (shape[0], shape[1:]) if image else (shape[-1], shape[:1])
        self.image = image
        self.body = nn.Sequential(
            conv(c_in, 32, 3, padding=1), nn.ReLU(), pool(2), conv(32, 64, 3, padding=1), nn.ReLU(), pool(2)
        )
        self.head = nn.Linear(64 * math.prod(s // 4 for s in sizes), n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x if self.image else x.transpose(1, 2)  # signals: (B, T, F) → (B, F, T)
        return self.head(self.body(x).flatten(1))


class SignalLSTM(nn.Module):
    """One LSTM layer; the output at the last step feeds a linear head."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.lstm, self.head = nn.LSTM(n_in, 128, batch_first=True), nn.Linear(128, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0][:, -1])  # (B, T, 128) → last step


class SignalEncoder(nn.Module):
    """One encoder layer over a linear embedding plus a learned position table, mean-pooled."""

    def __init__(self, shape: tuple[int, ...], n_out: int) -> None:
        super().__init__()
        self.embed, self.position = nn.Linear(shape[-1], 64), nn.Parameter(torch.zeros(1, shape[0], 64))
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 128, batch_first=True), 1)
        self.head = nn.Linear(64, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x) + self.position).mean(1))


class BagOfWords(nn.Module):
    """Mean of the token embeddings (padding excluded), then a small MLP."""

    def __init__(self, vocab: int, n_out: int) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab, 64, mode="mean", padding_idx=0)
        self.head = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, n_out))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.bag(tokens))


class TextLSTM(nn.Module):
    """Embedding, one LSTM layer, the output at each sentence's last real token."""

    def __init__(self, vocab: int, n_out: int) -> None:
        super().__init__()
        self.embed, self.lstm = nn.Embedding(vocab, 64, padding_idx=0), nn.LSTM(64, 128, batch_first=True)
        self.head = nn.Linear(128, n_out)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.lstm(self.embed(tokens))[0]  # (B, T, 128)
        last = ((tokens != 0).sum(1) - 1).clamp_min(0)  # right padding: the last real position
        return self.head(out[torch.arange(len(tokens)), last])


class TextEncoder(nn.Module):
    """Embedding plus a learned position table, one encoder layer that ignores padding, mean over real tokens."""

    def __init__(self, vocab: int, n_out: int, max_len: int = 512) -> None:
        super().__init__()
        self.embed, self.position = nn.Embedding(vocab, 64, padding_idx=0), nn.Parameter(torch.zeros(1, max_len, 64))
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 128, batch_first=True), 1)
        self.head = nn.Linear(64, n_out)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pad = tokens == 0  # (B, T)
        h = self.encoder(self.embed(tokens) + self.position[:, : tokens.shape[1]], src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).float()
        return self.head((h * keep).sum(1) / keep.sum(1).clamp_min(1))


# ---------------------------------------------------------------- the section

# The parts of the section, in order; each returns rows and the raw numbers behind them (under its own key).
PARTS: list[Callable[[BenchContext, dict[str, str]], tuple[list[Row], dict[str, Any]]]] = [versus_plain]


def _interpretation(raw: dict[str, Any]) -> str:
    cases = raw.get("versus_plain", {})
    if not cases:
        return "No family × data case ran."
    gaps = {name: case["points"] for name, case in cases.items()}
    seeds = len(next(iter(cases.values()))["per_seed"])
    worst = min(gaps, key=gaps.get)
    behind = [name for name, gap in gaps.items() if gap < -MAX_GAP]
    verdict = (
        f"every case is within {MAX_GAP:g} point of the plain script or ahead"
        if not behind
        else f"{len(behind)} of {len(gaps)} cases trail by more than {MAX_GAP:g} point: {', '.join(behind)}"
    )
    close = [name for name, case in cases.items() if abs(case["points"] + MAX_GAP) < 2 * (case.get("error") or 0.0)]
    return (
        f"dlforge's default nets against a plain PyTorch script of the same epochs and batch size, on data made for "
        f"this benchmark: {verdict}. Median difference {statistics.median(gaps.values()):+.2f} points; the worst case "
        f"is {worst} ({gaps[worst]:+.2f}). Means over {seeds} seed(s), [min, max] over seeds: test sets hold 165–300 "
        "examples (the Python-manual text ~110), so one example is 0.3–0.9 points and a single seed swings by ±2–4 "
        "points; the standard error of "
        "each mean is in its note. "
        + (
            f"Within two standard errors of the {MAX_GAP:g}-point line, so not told apart from it: {', '.join(close)}."
            if close
            else f"Every mean is more than two standard errors from the {MAX_GAP:g}-point line."
        )
    )
