"""Real 2-process DDP on CPU (gloo): Lightning re-launches the command per rank; rank 0 alone writes files."""

import json

import pytest

from tests.conftest import run_dlforge

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_two_process_ddp_trains_and_rank_zero_writes(tiny, tmp_path):
    result = run_dlforge(
        "train",
        *tiny,
        "trainer.max_epochs=2",
        "model.family=mlp",
        "data.source=builtin:breast_cancer",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["trainer"]["devices"] == 2
    assert 0.0 <= summary["metrics"]["test/acc"] <= 1.0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    # rank 1 runs the same command; it must not print a second summary or write a second set of files
    assert result.stdout.count("summary.json") == 1
