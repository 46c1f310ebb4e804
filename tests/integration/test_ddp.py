"""Real 2-process DDP on CPU (gloo) of a user's own net: Lightning re-launches the command per rank; the net learns;
rank 0 alone writes files.

One fit proves both: the built-in families' DDP fits run in test_pipeline, test_processes and test_multinode."""

import json
from pathlib import Path

import pytest

from tests.conftest import run_dlforge

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
NET = f"{ROOT / 'examples' / 'my_net.py'}:MyNet"
DIGITS_CHANCE = 0.1


def test_a_user_net_trains_on_two_ddp_processes_and_rank_zero_alone_writes(tmp_path):
    result = run_dlforge(
        "train",
        f"model.family={NET}",
        "data.source=builtin:digits",
        "trainer.max_epochs=3",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "trainer.accelerator=cpu",
        "tracking.enabled=false",
        f"output_dir={tmp_path / 'out'}",
        timeout=540,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["trainer"]["devices"] == 2
    assert summary["metrics"]["test/acc"] > DIGITS_CHANCE + 0.5
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    # rank 1 runs the same command; it must not print a second summary or write a second set of files
    assert result.stdout.count("summary.json") == 1
