"""Review plots of a run, as PNG files: learning curves, confusion matrix (+ per-class report), residuals.

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly — no pyplot, no global state, no
display needed — so they are safe in threads, on headless cluster nodes and in tests. Margins are set in inches
from what each figure holds, not by constrained layout: that engine measures every tick label in an extra draw pass,
which was half the time of a figure (these plots are drawn at the end of every training job).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

_DPI = 100
_PNG = {"compress_level": 1}  # zlib level 1: ~25% faster to write than the default 6, files ~15% larger
_MAX_ANNOTATED_CLASSES = 20  # beyond this, counts in the cells become unreadable
_CHAR_IN = 0.085  # width of an average character of a 10-pt tick label, in inches (DejaVu Sans)


def plot_learning_curves(history: Mapping[str, Sequence[tuple[int, float]]], path: str | Path) -> Path:
    """One panel per metric name (``loss``, ``acc``, …) with a line per stage (``train/…``, ``val/…``).

    ``history`` maps ``stage/name`` → ``[(epoch, value), ...]``.
    """
    panels: dict[str, dict[str, Sequence[tuple[int, float]]]] = {}
    for key, points in sorted(history.items()):
        stage, _, name = key.rpartition("/")
        panels.setdefault(name, {})[stage or name] = points
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows))
    _set_margins(fig, left=0.6, right=0.15, bottom=0.5, top=0.3, cols=cols, rows=rows)
    for i, (name, lines) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        for stage, points in sorted(lines.items()):
            steps, values = zip(*points, strict=True) if points else ((), ())
            ax.plot(steps, values, marker="o" if len(steps) <= 30 else None, markersize=3, label=stage)
        ax.set_title(name, y=1.0)  # placed, not measured: an automatic title measures every tick label
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, path)


def plot_confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str], path: str | Path) -> Path:
    """Rows are true classes, columns predicted; colour is the row-normalized rate, text the count."""
    from sklearn.metrics import confusion_matrix

    k = len(class_names)
    counts = confusion_matrix(y_true, y_pred, labels=list(range(k)))  # (K, K)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(3.5 + 0.45 * k, 15)  # the matrix is a square of this many inches
    longest = max((len(n) for n in class_names), default=1) * _CHAR_IN
    rotate = k > 10 or longest > 0.9 * side / k  # x tick labels at 45° when they would not fit side by side
    left, bottom, top, right = 0.5 + longest, 0.5 + (longest * 0.71 if rotate else 0.2), 0.4, 1.1
    width, height = left + side + right, bottom + side + top
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((left / width, bottom / height, side / width, side / height))
    colorbar = fig.add_axes(((left + side + 0.2) / width, bottom / height, 0.2 / width, side / height))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, cax=colorbar, label="fraction of true class")
    ax.set_xticks(range(k), class_names, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f"confusion matrix (test, accuracy {accuracy:.3f}, n={counts.sum()})", y=1.0)
    if k <= _MAX_ANNOTATED_CLASSES:
        for (row, col), count in np.ndenumerate(counts):
            color = "white" if rates[row, col] > 0.5 else "black"
            ax.text(col, row, str(count), ha="center", va="center", color=color, fontsize=8)
    return _save(fig, path)


def classification_report_files(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str], folder: str | Path
) -> list[Path]:
    """Per-class precision, recall, F1 and support as ``classification_report.json`` and ``.md``."""
    from sklearn.metrics import classification_report

    labels = list(range(len(class_names)))
    report = classification_report(
        y_true, y_pred, labels=labels, target_names=list(class_names), output_dict=True, zero_division=0
    )
    folder = Path(folder)
    json_path = folder / "classification_report.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path = folder / "classification_report.md"
    md_path.write_text(_report_markdown(report, float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))))
    return [json_path, md_path]


def classification_review(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str], folder: str | Path
) -> list[Path]:
    """Confusion matrix PNG plus the per-class report files, all in ``folder``."""
    matrix = plot_confusion_matrix(y_true, y_pred, class_names, Path(folder) / "confusion_matrix.png")
    return [matrix, *classification_report_files(y_true, y_pred, class_names, folder)]


def plot_residuals(y_true: np.ndarray, y_pred: np.ndarray, path: str | Path) -> Path:
    """Two panels: predicted vs true (with the identity line) and residual vs predicted."""
    y_true, y_pred = np.asarray(y_true, float).reshape(-1), np.asarray(y_pred, float).reshape(-1)
    residual = y_true - y_pred
    rmse = float(np.sqrt(np.mean(residual**2)))
    fig = Figure(figsize=(9, 4))
    _set_margins(fig, left=0.75, right=0.15, bottom=0.55, top=0.35, cols=2)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    left.scatter(y_true, y_pred, s=10, alpha=0.6)
    bounds = [min(y_true.min(), y_pred.min()), max(y_true.max(), y_pred.max())]
    left.plot(bounds, bounds, color="grey", linestyle="--", linewidth=1)
    left.set(xlabel="true", ylabel="predicted")
    left.set_title(f"test predictions (RMSE {rmse:.4g}, n={len(y_true)})", y=1.0)
    right.scatter(y_pred, residual, s=10, alpha=0.6)
    right.axhline(0, color="grey", linestyle="--", linewidth=1)
    right.set(xlabel="predicted", ylabel="true − predicted")
    right.set_title("residuals", y=1.0)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _report_markdown(report: dict, accuracy: float) -> str:
    lines = ["| class | precision | recall | f1 | support |", "|---|---:|---:|---:|---:|"]
    for name, row in report.items():
        if isinstance(row, dict):
            lines.append(
                f"| {name} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1-score']:.3f} "
                f"| {int(row['support'])} |"
            )
    lines.append(f"\naccuracy: {accuracy:.4f}")
    return "\n".join(lines) + "\n"


def _set_margins(
    fig: Figure, *, left: float, right: float, bottom: float, top: float, cols: int = 1, rows: int = 1
) -> None:
    """Fixed margins in inches around a ``rows × cols`` grid; the gap between panels is ``left + right`` wide and
    ``bottom + top`` high, so each panel keeps room for its own tick labels, axis label and title."""
    width, height = fig.get_size_inches()
    panel_w = (width - (left + right) * cols) / cols
    panel_h = (height - (bottom + top) * rows) / rows
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=(left + right) / panel_w,
        hspace=(bottom + top) / panel_h,
    )


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # attaches the Agg canvas: no backend lookup, no display
    fig.savefig(path, dpi=_DPI, pil_kwargs=_PNG)
    return path
