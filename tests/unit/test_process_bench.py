"""The whole-process benchmark compares like with like, and the GPU check skips cleanly without a GPU."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipelines.benchmarks import process
from pipelines.benchmarks.common import BenchContext
from pipelines.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def _plain_script():
    spec = importlib.util.spec_from_file_location("process_plain", process.PLAIN_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_plain_script_trains_the_same_layers_as_dlforge(tmp_path):
    from dl_lightning.registry import build_model
    from pipelines.train import load_data, optim_settings

    data = process.signals(tmp_path / "signals.npz", 400)
    assert np.load(data)["x"].shape == (400, process.STEPS, 1)
    cfg = load_config(None, process.dlforge_overrides(data, tmp_path / "out", 1, 100))
    splits = load_data(cfg)
    ours = build_model(cfg.model.family, splits.spec, cfg.model.arch(), optim_settings(cfg)).net
    plain = _plain_script().build_net(process.STEPS, 1, process.CLASSES)
    shapes = sorted(tuple(p.shape) for p in ours.parameters())
    assert shapes == sorted(tuple(p.shape) for p in plain.parameters())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_process_section_reports_wall_and_memory_ratios_with_targets(tmp_path):
    result = process.run(BenchContext(repeats=1, quick=True, workdir=str(tmp_path)))
    rows = {row.measure: row for row in result.rows}
    wall = rows["wall time, dlforge train (tracking on) / plain"]
    assert wall.target == f"≤ {process.WALL_TARGET:g}" and wall.value > 0
    assert rows["peak RSS, dlforge / plain"].target == f"≤ {process.RSS_TARGET:g}"


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine runs the check itself")
def test_gpu_check_skips_with_one_line_where_there_is_no_gpu():
    done = subprocess.run([str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and done.stdout.startswith("gpu_check: skipped")
