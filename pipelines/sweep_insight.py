"""What a sweep teaches beyond its best trial: which hyperparameters mattered, and how trials spread.

- :func:`param_importance`: fANOVA importances (Optuna's ``get_param_importances``) from the results table alone —
  the finished trials are rebuilt as Optuna trials, so it works whatever search algorithm ran.
- :func:`plot_importance`, :func:`plot_parallel`, :func:`plot_metric_vs_size`: the report's pictures.
- :func:`warm_start_points`: the best configurations of an earlier sweep (its ``sweep_results.csv``), kept only
  where they fit the new search space — Ray's ``points_to_evaluate``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from dl_lightning.errors import InputError
from tune.space import Dimension

MIN_TRIALS = 3  # fANOVA's forest needs a few finished trials to split on


def _hashable(value: Any) -> Any:
    """A choice as Optuna stores it: lists and tuples (layer widths) become the text of the tuple, so a list read
    back from a CSV and the space's tuple are the same choice."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(_frozen(value))


def _frozen(value: Any) -> Any:
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


def _distribution(dim: Dimension) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if dim.kind in ("loguniform", "uniform"):
        return FloatDistribution(float(dim.values[0]), float(dim.values[1]), log=dim.kind == "loguniform")
    if dim.kind == "randint":
        return IntDistribution(int(dim.values[0]), int(dim.values[1]) - 1)
    return CategoricalDistribution([_hashable(v) for v in dim.values])


def param_importance(trials: list[dict[str, Any]], space: Mapping[str, Dimension], mode: str) -> dict[str, float]:
    """fANOVA importance of each searched key (summing to 1, largest first) over the trials with a metric.

    Returns ``{}`` when fewer than ``MIN_TRIALS`` finished or no key varied: there is nothing to apportion.
    """
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    finished = [t for t in trials if _finite(t.get("best")) and all(k in t["params"] for k in space)]
    varied = [k for k in space if len({repr(t["params"][k]) for t in finished}) > 1]
    if len(finished) < MIN_TRIALS or not varied:
        return {}
    dists = {k: _distribution(space[k]) for k in varied}
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in memory": nothing to act on
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for t in finished:
        params = {k: _hashable(t["params"][k]) for k in varied}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(t["best"])))
    scores = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0), normalize=True)
    return {k: round(float(v), 4) for k, v in scores.items()}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _figure(width: float = 7, height: float = 4.2) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def plot_importance(importance: dict[str, float], path: Path) -> Path | None:
    """Horizontal bars of the importances, most important on top; ``None`` without importances."""
    if not importance:
        return None
    fig, ax = _figure(7, 0.5 * len(importance) + 1.5)
    keys = list(importance)[::-1]
    ax.barh(keys, [importance[k] for k in keys], color="tab:blue")
    ax.set_xlabel("fANOVA importance (share of the metric's variance)")
    ax.set_title("hyperparameter importance")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def _axis_values(values: list[Any], dim: Dimension) -> list[float]:
    """One axis of the parallel plot in [0, 1]: ranges by position (log for loguniform), choices by index."""
    if dim.is_range:
        low, high = (float(v) for v in dim.values)
        scale = math.log if dim.kind == "loguniform" else float
        span = (scale(high) - scale(low)) or 1.0
        return [(scale(float(v)) - scale(low)) / span for v in values]
    choices = [repr(_hashable(v)) for v in dim.values]
    return [choices.index(repr(_hashable(v))) / max(len(choices) - 1, 1) for v in values]


def plot_parallel(trials: list[dict[str, Any]], space: Mapping[str, Dimension], metric: str, path: Path) -> Path | None:
    """Parallel coordinates: one line per finished trial across the searched keys and the metric, coloured by it."""
    from matplotlib import colormaps

    finished = [t for t in trials if _finite(t.get("best")) and all(k in t["params"] for k in space)]
    if len(finished) < 2:
        return None
    keys = list(space)
    columns = [_axis_values([t["params"][k] for t in finished], space[k]) for k in keys]
    scores = [float(t["best"]) for t in finished]
    low, high = min(scores), max(scores)
    columns.append([(s - low) / ((high - low) or 1.0) for s in scores])
    fig, ax = _figure(max(6, 1.6 * len(columns)), 4.2)
    cmap = colormaps["viridis"]
    for i in range(len(finished)):
        ax.plot(range(len(columns)), [c[i] for c in columns], color=cmap(columns[-1][i]), alpha=0.8)
    ax.set_xticks(range(len(columns)), [*keys, metric], rotation=20, fontsize="small")
    ax.set_yticks([0, 1], ["low", "high"])
    ax.set_title(f"trials across the search space (colour: {metric}, {low:.4g} → {high:.4g})")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def trial_sizes(trials: list[dict[str, Any]], trials_dir: Path) -> dict[str, int]:
    """Parameters of each trial's model, counted in its best checkpoint (``<trials_dir>/<id>/train/checkpoints``)."""
    import torch

    sizes = {}
    for t in trials:
        ckpt = trials_dir / t["trial_id"] / "train" / "checkpoints" / "best.ckpt"
        if ckpt.is_file():
            state = torch.load(ckpt, map_location="cpu", weights_only=False).get("state_dict", {})
            sizes[t["trial_id"]] = int(sum(v.numel() for v in state.values() if hasattr(v, "numel")))
    return sizes


def plot_metric_vs_size(trials: list[dict[str, Any]], sizes: dict[str, int], metric: str, path: Path) -> Path | None:
    """Each trial's best metric against its parameter count; ``None`` unless the trials differ in size."""
    points = [(sizes[t["trial_id"]], float(t["best"])) for t in trials if t["trial_id"] in sizes and _finite(t["best"])]
    if len({size for size, _ in points}) < 2:  # one architecture searched: the plot would be a vertical line
        return None
    fig, ax = _figure(6, 4)
    ax.scatter([p[0] for p in points], [p[1] for p in points], color="tab:orange")
    ax.set_xlabel("parameters (state dict of the best checkpoint)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs model size, one point per trial")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def insight(trials: list[dict[str, Any]], space: Mapping[str, Dimension], metric: str, mode: str, out: Path) -> dict:
    """Importance and the three plots of a finished sweep, written into ``out``: what ``SweepResult`` carries."""
    importance = param_importance(trials, space, mode)
    sizes = trial_sizes(trials, out / "trials")
    plots = {
        "importance": plot_importance(importance, out / "sweep_importance.png"),
        "parallel": plot_parallel(trials, space, metric, out / "sweep_parallel.png"),
        "metric_vs_size": plot_metric_vs_size(trials, sizes, metric, out / "sweep_metric_vs_size.png"),
    }
    return {"importance": importance, "sizes": sizes, "plots": {k: str(v) for k, v in plots.items() if v}}


# ---------------------------------------------------------------- warm start


def read_results(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``sweep_results.csv``: trial id, best metric and each searched key's value (YAML-read)."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    best_col = next((c for c in (rows[0] if rows else {}) if c.startswith("best ")), None)
    fixed = {"trial_id", "status", "epochs", "time_s", "run_id"}
    out = []
    for row in rows:
        params = {k: yaml.safe_load(v) for k, v in row.items() if k not in fixed and " " not in k and v != ""}
        best = yaml.safe_load(row[best_col]) if best_col and row[best_col] else None
        out.append({"trial_id": row["trial_id"], "best": best, "params": params})
    return out


def _fits(value: Any, dim: Dimension) -> bool:
    if dim.is_range:
        low, high = dim.values
        inside = isinstance(value, (int, float)) and low <= value <= high
        return inside and (dim.kind != "randint" or (float(value).is_integer() and value < high))
    return repr(_hashable(value)) in {repr(_hashable(v)) for v in dim.values}


def warm_start_points(
    results: list[dict[str, Any]], space: Mapping[str, Dimension], mode: str, limit: int
) -> tuple[list[dict[str, Any]], list[str]]:
    """The best ``limit`` earlier configurations that fit ``space``, and one line per value dropped.

    A key the new space does not search is left out of the point (the new sweep samples it); a value outside the
    new space drops that point's key, and a point left with no key is dropped.
    """
    ranked = sorted((r for r in results if _finite(r["best"])), key=lambda r: r["best"], reverse=mode == "max")
    points, dropped = [], []
    for row in ranked[:limit]:
        point = {}
        for key, value in row["params"].items():
            if key not in space:
                continue
            if _fits(value, space[key]):
                point[key] = value
            else:
                dropped.append(f"trial {row['trial_id']}: {key}={value!r} is outside {space[key].describe()}")
        if point:
            points.append(point)
    return points, dropped


def resolve_warm_start(reference: str, find_csv: Any) -> Path:
    """The ``sweep_results.csv`` of ``tune.warm_start``: a path to it, or a sweep run id ``find_csv`` resolves.

    Raises:
        InputError: neither a readable ``.csv`` nor a run ``find_csv`` finds.
    """
    path = Path(reference)
    if path.suffix == ".csv":
        if not path.is_file():
            raise InputError(f"tune.warm_start={reference}: no such file; give a sweep_results.csv or a sweep run id")
        return path
    found = find_csv(reference)
    if found is None:
        raise InputError(
            f"tune.warm_start={reference}: no sweep run with a sweep_results.csv; "
            "give the file's path or a sweep run id"
        )
    return Path(found)
