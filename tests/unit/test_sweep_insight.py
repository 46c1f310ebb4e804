"""Sweep insight: fANOVA importance from the results table, the plots, and warm start from an earlier sweep."""

from __future__ import annotations

import numpy as np
import pytest

from dl_lightning.errors import InputError
from pipelines.sweep import SweepPlan, write_results_csv
from pipelines.sweep_insight import (
    insight,
    param_importance,
    read_results,
    resolve_warm_start,
    warm_start_points,
)
from tune.space import parse_space

SPACE = parse_space(
    {
        "optim.lr": {"loguniform": [1e-4, 1e-1]},
        "model.dropout": {"uniform": [0.0, 0.5]},
        "model.mlp.hidden": {"choice": [[64], [128, 64]]},
        "data.batch_size": {"choice": [32, 64]},
    },
    ["optim.lr", "model.dropout", "model.mlp.hidden", "data.batch_size"],
)


def _trials(n: int = 24, seed: int = 0) -> list[dict]:
    """Accuracy set by the learning rate alone (peak at 1e-2), plus a little noise; the other keys are random."""
    rng = np.random.default_rng(seed)
    trials = []
    for i in range(n):
        lr = float(10 ** rng.uniform(-4, -1))
        params = {
            "optim.lr": lr,
            "model.dropout": float(rng.uniform(0, 0.5)),
            "model.mlp.hidden": [[64], [128, 64]][i % 2],
            "data.batch_size": [32, 64][(i // 2) % 2],
        }
        acc = 0.95 - 0.1 * (np.log10(lr) + 2) ** 2 + rng.normal(0, 0.003)
        trial = {"trial_id": f"t_{i:05d}", "status": "done", "epochs": 3, "best": acc, "last": acc, "params": params}
        trials.append(trial | {"time_s": 1.0, "run_id": None})
    return trials


def test_importance_finds_the_one_parameter_that_matters():
    importance = param_importance(_trials(), SPACE, "max")
    assert list(importance)[0] == "optim.lr" and importance["optim.lr"] > 0.8
    assert set(importance) == set(SPACE) and sum(importance.values()) == pytest.approx(1, abs=1e-3)


def test_importance_needs_finished_trials_that_vary():
    trials = _trials(6)
    assert param_importance(trials[:2], SPACE, "max") == {}  # too few to split on
    for t in trials:
        t["params"] = {**trials[0]["params"]}
    assert param_importance(trials, SPACE, "max") == {}  # nothing varied
    failed = [{**t, "best": None} for t in _trials(6)]
    assert param_importance(failed, SPACE, "max") == {}


def test_insight_writes_its_plots(tmp_path):
    trials = _trials(8)
    seen = insight(trials, SPACE, "val/acc", "max", tmp_path)
    assert list(seen["importance"])[0] == "optim.lr"
    assert set(seen["plots"]) == {"importance", "parallel"}  # no trial checkpoints here: no size plot
    assert all((tmp_path / f"sweep_{name}.png").stat().st_size > 1000 for name in seen["plots"])


def test_warm_start_keeps_the_best_points_that_fit_and_names_what_it_dropped(tmp_path):
    trials = _trials(8)
    plan = SweepPlan(space=SPACE, metric="val/acc", mode="max")
    csv_path = write_results_csv(tmp_path / "sweep_results.csv", trials, plan)
    rows = read_results(csv_path)
    assert rows[3]["params"] == trials[3]["params"] and rows[3]["best"] == pytest.approx(trials[3]["best"])
    narrower = parse_space(
        {"optim.lr": {"loguniform": [1e-3, 1e-1]}, "data.batch_size": {"choice": [32, 128]}},
        ["optim.lr", "data.batch_size"],
    )
    points, dropped = warm_start_points(rows, narrower, "max", limit=4)
    best_first = sorted(trials, key=lambda t: -t["best"])[:4]
    assert len(points) == 4 and all(set(p) <= {"optim.lr", "data.batch_size"} for p in points)
    for point, trial in zip(points, best_first, strict=True):
        assert point.get("optim.lr", trial["params"]["optim.lr"]) == pytest.approx(trial["params"]["optim.lr"])
    expected = sum(t["params"]["data.batch_size"] == 64 for t in best_first)
    expected += sum(t["params"]["optim.lr"] < 1e-3 for t in best_first)
    assert len(dropped) == expected and all("is outside" in line for line in dropped)


def test_warm_start_reference_must_resolve(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        resolve_warm_start(str(tmp_path / "missing.csv"), lambda run: None)
    with pytest.raises(InputError, match="no sweep run"):
        resolve_warm_start("0123abcd", lambda run: None)
    found = tmp_path / "sweep_results.csv"
    assert resolve_warm_start("0123abcd", lambda run: found) == found


@pytest.mark.parametrize("command", ["run", "tune"])
def test_a_bad_warm_start_is_refused_before_anything_is_written(cli, tmp_path, command):
    out, store = tmp_path / "out", tmp_path / "store" / "mlflow.db"
    common = ["data.source=builtin:iris", "model.family=mlp", f"output_dir={out}", f"tracking.uri=sqlite:///{store}"]
    code, _, err = cli(command, *common, f"tune.warm_start={tmp_path / 'missing.csv'}")
    assert code == 2 and "no such file" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(command, *common, "tune.warm_start=0123456789abcdef0123456789abcdef")
    assert code == 2 and "no sweep run" in err and len(err.strip().splitlines()) == 1
    not_results = tmp_path / "other.csv"
    not_results.write_text("a,b\n1,2\n")
    code, _, err = cli(command, *common, f"tune.warm_start={not_results}")
    assert code == 2 and "cannot read it as sweep_results.csv" in err
    assert not out.exists() and not store.parent.exists()  # no output folder, lock, store or run
