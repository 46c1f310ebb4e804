"""`dlforge bench` smoke tests: tiny sizes, one repeat, the structure of the JSON and markdown — never timings."""

from __future__ import annotations

import json

import pytest

from pipelines.benchmarks.common import BenchContext, BenchResult, Row, interleave, ratio
from pipelines.benchmarks.runner import BENCHMARKS, run_benchmarks, to_markdown

ROW_KEYS = {"measure", "value", "unit", "target", "met", "note", "spread"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "benchmarks"
    ctx = BenchContext(repeats=1, quick=True, workdir=str(out.parent / "work"))
    data = run_benchmarks(["loop", "input"], ctx, out, log=lambda _: None)
    return out, data


def test_writes_json_and_markdown_with_machine_facts(report) -> None:
    out, data = report
    saved = json.loads(out.with_name("benchmarks.json").read_text())
    assert saved["repeats"] == 1 and saved["quick"] is True
    assert {"cpu", "cores", "torch", "lightning", "load_average", "load_average_end"} <= set(saved["machine"])
    assert [b["name"] for b in saved["benchmarks"]] == ["loop", "input"]
    md = out.with_name("benchmarks.md").read_text()
    assert md.startswith("# Benchmarks") and "Load average" in md
    for bench in saved["benchmarks"]:
        assert f"## {bench['title']}" in md


def test_each_benchmark_reports_rows_with_targets_and_an_interpretation(report) -> None:
    _, data = report
    by_name = {b["name"]: b for b in data["benchmarks"]}
    for name in ("loop", "input"):
        bench = by_name[name]
        assert bench["status"] == "ok", bench["interpretation"]
        assert bench["rows"] and bench["interpretation"]
        assert all(set(row) == ROW_KEYS for row in bench["rows"])
        assert all(row["met"] is None or row["target"] for row in bench["rows"])


def test_loop_benchmark_compares_the_same_training(report) -> None:
    _, data = report
    loop = next(b for b in data["benchmarks"] if b["name"] == "loop")
    agree = [r for r in loop["rows"] if r["measure"].endswith("final train loss, dlforge vs PyTorch")]
    assert len(agree) == 2  # digits CNN and breast-cancer MLP
    assert all(r["met"] for r in agree), agree  # same seed, data order and init: the same losses


def test_markdown_shows_failed_and_skipped_benchmarks() -> None:
    ok = BenchResult("a", "A title", [Row("r", 1.5, "×", "≤ 2", True, spread=[1.0, 2.0])], "fine")
    failed = BenchResult("b", "B title", [], "failed: RuntimeError: boom", status="error")
    machine = {"cpu": "x", "cores": 2, "python": "3", "torch": "t", "lightning": "l", "platform": "p"}
    report = {
        "machine": {**machine, "load_average": [1.0, 1.0, 1.0], "load_average_end": [1.0, 1.0, 1.0]},
        "repeats": 1,
        "quick": True,
        "wall_s": 1.0,
        "benchmarks": [vars(ok) | {"rows": [vars(r) for r in ok.rows]}, vars(failed)],
    }
    md = to_markdown(report)
    assert "| r | 1.50 × | [1.00, 2.00] | ≤ 2 | ✅ yes |" in md
    assert "*error*: failed: RuntimeError: boom" in md


def test_interleave_alternates_order_and_ratio_is_median() -> None:
    calls: list[str] = []
    interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert ratio([2.0, 3.0, 10.0], [1.0, 1.0, 1.0]) == (3.0, [2.0, 10.0])


def test_cli_runs_only_the_named_benchmarks(cli, tmp_path) -> None:
    code, out, _ = cli("bench", "--only", "input", "--repeats", "1", "--quick", "--out", str(tmp_path / "b"))
    assert code == 0
    assert json.loads((tmp_path / "b.json").read_text())["benchmarks"][0]["name"] == "input"
    assert set(BENCHMARKS) >= {"loop", "tracking", "ddp", "sweeps", "compression", "input", "main_job"}


def test_cli_refuses_overrides(cli, tmp_path) -> None:
    code, _, err = cli("bench", "seed=1", "--out", str(tmp_path / "b"))
    assert code == 2 and "no config" in err
