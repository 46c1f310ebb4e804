"""`dlforge bench --only quality`: its rows, its plain references, and that `--only` keeps the other sections."""

from __future__ import annotations

import json

import pytest
import torch

from pipelines.benchmarks import quality
from pipelines.benchmarks.common import BenchContext
from pipelines.benchmarks.runner import keep_earlier, to_markdown
from pipelines.config import load_config
from pipelines.train import load_data

ROW_KEYS = {"measure", "value", "unit", "target", "met", "note", "spread"}


def test_quick_run_reports_one_row_per_family_and_data(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(quality, "DATASETS", {"tabular (CSV)": quality.DATASETS["tabular (CSV)"]})
    result = quality.run(BenchContext(repeats=1, quick=True, workdir=str(tmp_path)))
    assert result.status == "ok" and len(result.rows) == 1
    row = result.rows[0]
    assert row.measure == "mlp on tabular (CSV): dlforge − plain" and row.unit == "points"
    assert isinstance(row.met, bool) and "dlforge" in row.note and "plain PyTorch" in row.note
    case = result.raw["versus_plain"]["mlp on tabular (CSV)"]
    assert 0 <= case["dlforge"] <= 1 and 0 <= case["plain"] <= 1
    assert case["points"] == pytest.approx(100 * (case["dlforge"] - case["plain"]))


@pytest.mark.parametrize("data", list(quality.DATASETS))
def test_every_plain_reference_runs_on_its_data(data: str, tmp_path) -> None:
    maker, n, families = quality.DATASETS[data]
    source = maker(tmp_path, n=max(40, n // 20))
    for family in families:
        splits = load_data(load_config(None, [f"data.source={source}", f"model.family={family}", "data.max_len=16"]))
        net = quality.plain_net(family, splits)
        out = net(torch.from_numpy(splits.test[0][:3]))
        assert out.shape == (min(3, len(splits.test[0])), splits.spec.num_outputs)


def test_only_one_benchmark_keeps_the_other_sections(tmp_path) -> None:
    earlier = {"benchmarks": [{"name": "loop", "title": "Loop"}, {"name": "quality", "title": "Old quality"}]}
    (tmp_path / "b.json").write_text(json.dumps(earlier))
    report = {"benchmarks": [{"name": "quality", "title": "New quality"}]}
    keep_earlier(report, tmp_path / "b")
    assert [(b["name"], b["title"], b.get("earlier", False)) for b in report["benchmarks"]] == [
        ("loop", "Loop", True),
        ("quality", "New quality", False),
    ]


def test_an_earlier_section_says_so_in_the_markdown() -> None:
    bench = {"name": "loop", "title": "Loop", "status": "ok", "rows": [], "interpretation": "fine"}
    bench |= {"setup": {}, "seconds": 1.0, "earlier": True}
    machine = {"cpu": "x", "cores": 2, "python": "3", "torch": "t", "lightning": "l", "platform": "p"}
    machine |= {"load_average": [1.0] * 3, "load_average_end": [1.0] * 3}
    report = {"machine": machine, "repeats": 1, "quick": False, "wall_s": 1.0, "benchmarks": [bench]}
    assert "From an earlier run than the header's." in to_markdown(report)
