"""The shipped example of your own data, end to end: ``dlforge run configs/byo_datamodule.yaml`` sweeps (every trial
builds the DataModule in its own folder), trains, tests on its test loader, and compresses with static INT8
calibrated and parity-checked on batches of its val loader, then registers and promotes a champion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]


def test_dlforge_run_on_the_example_datamodule(tmp_path, store):
    out = tmp_path / "out"
    command = [
        *(sys.executable, "-m", "pipelines", "run", "configs/byo_datamodule.yaml"),
        f"output_dir={out}",
        f"tracking.uri={store}",
        "trainer.max_epochs=3",
        "tune.num_samples=2",
        "tune.grace_period=1",
        "data.args.batch_size=32",
        "compress.epochs=1",
        "compress.latency_repeats=3",
        "compress.quantization=static",  # calibrated on the DataModule's val batches
        "compress.calibration_batches=2",
        "compress.max_student_drop=100",  # a 1-epoch student is not the point here; the gates are unit-tested
        "compress.max_int8_drop=100",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=840, env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert {"sweep", "train", "compress"} <= set(summary["stage_seconds"])
    assert summary["metrics"]["test/acc"] > 0.8  # ten digits: chance is 0.1
    assert summary["champion"] == "teacher-int8" and summary["passed"]
    assert "static" in (out / "compress" / "compress_report.md").read_text()
    assert "streams its data; the test-split plots are skipped" in done.stdout
