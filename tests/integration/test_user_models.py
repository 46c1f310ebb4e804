"""A user's own model through every stage: a sweep over its own arguments, `dlforge run` of each example end to end
(export, parity, INT8, a distilled student, registry), and a model that does not export. Its 2-process DDP training
is in test_ddp.py (the same fit also shows that rank 0 alone writes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.conftest import run_dlforge

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NET = f"{ROOT / 'examples' / 'my_net.py'}:MyNet"
DIGITS_CHANCE = 0.1


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.timeout(900)
def test_a_sweep_searches_the_models_own_arguments(tmp_path):
    space = "tune.space={model.args.hidden: {choice: [8, 48]}}"
    proc = run_dlforge(
        "tune",
        f"model.family={NET}",
        "data.source=builtin:digits",
        "trainer.max_epochs=2",
        "tune.num_samples=2",
        "tune.search=grid",
        space,
        "tracking.enabled=false",
        f"output_dir={tmp_path}",
        timeout=840,
    )
    _ok(proc)
    summary = json.loads((tmp_path / "summary.json").read_text())
    best = yaml.safe_load(Path(summary["paths"]["best_config"]).read_text())
    assert best["model"]["args"]["hidden"] in (8, 48) and best["model"]["family"] == NET


@pytest.mark.timeout(900)
@pytest.mark.parametrize("config", ["byo_net.yaml", "byo_lightning.yaml"])
def test_each_example_runs_end_to_end(config, tmp_path, store):
    proc = run_dlforge(
        "run",
        str(ROOT / "configs" / config),
        "--no-sweep",
        "trainer.max_epochs=2",  # digits: ~0.9 after two epochs (teacher, then student and scratch, as many)
        "compress.max_student_drop=100",  # two epochs: the gate's mechanics, not the student's quality
        "compress.latency_repeats=3",
        f"output_dir={tmp_path / 'out'}",
        f"tracking.uri={store}",
        timeout=840,
    )
    _ok(proc)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["metrics"]["test/acc"] > DIGITS_CHANCE + 0.5
    assert summary["champion"] and Path(summary["paths"]["onnx_teacher"]).is_file()
    assert Path(summary["paths"]["onnx_student"]).is_file()
    client = MlflowClient(tracking_uri=store)
    names = {m.name for m in client.search_registered_models()}
    assert any(name.endswith("-onnx") for name in names) and len(names) == 2, names


UNTRACEABLE = """
import math
import torch
from torch import nn


class Untraceable(nn.Module):
    def __init__(self, input_shape, num_outputs):
        super().__init__()
        self.head = nn.Linear(math.prod(input_shape), num_outputs)

    def forward(self, x):
        scale = float(abs(x.detach().numpy()).max()) or 1.0  # plain numpy: runs, but torch.export cannot trace it
        return self.head(x.flatten(1) / scale)
"""


@pytest.mark.timeout(600)
def test_a_model_that_does_not_export_stops_compress_in_one_line(tmp_path, store):
    (tmp_path / "untraceable.py").write_text(UNTRACEABLE)
    proc = run_dlforge(
        "run",
        f"model.family={tmp_path / 'untraceable.py'}:Untraceable",
        "data.source=builtin:digits",
        "--no-sweep",
        "trainer.max_epochs=1",  # a checkpoint to register and export is all it needs
        f"output_dir={tmp_path / 'out'}",
        f"tracking.uri={store}",
        "tracking.experiment=untraceable",
        timeout=540,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "does not export to ONNX" in last and "Traceback" not in proc.stderr
    names = {m.name for m in MlflowClient(tracking_uri=store).search_registered_models()}
    assert names == {"untraceable"}  # the fp32 checkpoint was registered; no ONNX model
