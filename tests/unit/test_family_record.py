"""A family is one record: a toy family registered inside the test goes through train → compress (a shrunk student,
ONNX export with parity, INT8) without any other file knowing it; no stage branches on a family's name."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from torch import nn

from dl_lightning import families
from dl_lightning.families import Family
from dl_lightning.modules.base import SupervisedModule
from dl_lightning.nets.common import standardizer
from dl_lightning.registry import monitor_for, record_for

ROOT = Path(__file__).resolve().parents[2]


class ToyModule(SupervisedModule):
    """One hidden layer: ``hidden`` is its only width."""

    family = "toy"

    def __init__(self, data: dict, hidden: int = 16, optim: dict | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.init_supervised(data, optim)
        n_in = data["input_shape"][0]
        layers = [nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, data["num_outputs"])]
        self.net = nn.Sequential(standardizer(data), *layers)


@pytest.fixture
def toy():
    record = families.register(Family("toy", ToyModule, frozenset({"tabular"}), width_keys=("hidden",)))
    yield record
    families.unregister("toy")


def test_a_registered_family_trains_and_compresses(toy, cli, tiny, tmp_path):
    args = ["model.family=toy", "model.args.hidden=32", "data.source=builtin:breast_cancer", *tiny]
    code, _, err = cli("train", *args, "trainer.max_epochs=3", "trainer.limit_train_batches=1.0")
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["metrics"]["test/acc"] > 0.85  # chance: 0.63
    checkpoint = tmp_path / "out" / "checkpoints" / "best.ckpt"
    assert checkpoint.is_file()
    out = tmp_path / "compressed"
    compress = [
        *args,
        f"output_dir={out}",
        "compress.epochs=2",
        "compress.scratch=false",
        "compress.quantization=dynamic",
    ]
    code, _, err = cli("compress", *compress, "--teacher", str(checkpoint))
    report = json.loads((out / "compress_report.json").read_text())
    assert report["teacher"]["family"] == "toy"
    assert report["student"]["family"] == "toy" and report["student"]["arch"]["hidden"] < 32
    assert {"teacher", "teacher-int8", "student", "student-int8"} <= set(report["files"])
    assert all(Path(p).is_file() for p in report["files"].values())
    assert code == 0, err


def test_the_record_answers_what_stages_used_to_branch_on(toy):
    assert monitor_for("toy", "classification") == ("val/acc", "max")
    assert monitor_for("gan", "classification") == (None, "min")
    assert record_for("gan").generative and not record_for("toy").generative
    assert record_for("rnn").sequence_axis and not record_for("mlp").sequence_axis
    assert "toy" in families.names()


def test_an_unknown_family_names_the_closest_and_the_class_path_form():
    from pipelines.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"did you mean mlp\?.*pkg.module:Class"):
        load_config(None, ["model.family=mpl"])


def test_no_stage_branches_on_a_family_name():
    """Family traits live in the records (dl_lightning/families.py); benchmarks pick families by name on purpose."""
    # "same" is compress.student.family's word for the teacher's family, not a family
    pattern = re.compile(r"""family\s*(==|!=|in)\s*[("'](?!same")|WIDTH_KEYS|== "gan"|"rnn", "transformer"\)""")
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("pipelines", "dl_lightning")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if "benchmarks" not in path.parts
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
