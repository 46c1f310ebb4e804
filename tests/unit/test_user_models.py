"""A user's own model by class path: import, signature checks, training as a plain net or as a LightningModule,
checkpoints as plain data, and checkpoints that name a class the config does not (refused, nothing imported)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dl_lightning.errors import InputError
from dl_lightning.modules.base import FAMILY_KEY
from dl_lightning.registry import load_model
from dl_lightning.user_model import check_args, data_facts, load_class
from tests.fixtures import tiny_spec

ROOT = Path(__file__).resolve().parents[2]
NET = f"{ROOT / 'examples' / 'my_net.py'}:MyNet"
LIT = f"{ROOT / 'examples' / 'my_lightning.py'}:MyLitClassifier"
DIGITS = ["data.source=builtin:digits"]


def test_a_class_imports_from_a_file_or_a_module():
    assert load_class(NET).__name__ == "MyNet"
    assert load_class("torch.nn:Linear") is torch.nn.Linear


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (f"{ROOT / 'examples' / 'my_net.py'}:MyNett", r"has no class 'MyNett'; did you mean .*my_net.py:MyNet\?"),
        ("no_such_package_xyz.mod:Net", r"no module named 'no_such_package_xyz'"),
        ("missing/file.py:Net", r"file 'missing/file.py' not found"),
        ("os:system", r"os has no class 'system'"),
        ("builtins:eval", r"builtins has no class 'eval'"),
    ],
)
def test_a_class_that_cannot_be_used_is_one_line(path, message):
    with pytest.raises(InputError, match=message):
        load_class(path)


def test_arguments_are_checked_against_the_signature():
    cls = load_class(NET)
    check_args(NET, cls, {"hidden": 8, "depth": 1})
    with pytest.raises(InputError, match=r"model.args.hiden is not an argument .*did you mean model.args.hidden\?"):
        check_args(NET, cls, {"hiden": 8})
    with pytest.raises(InputError, match=r"model.args.num_outputs is filled in from the data"):
        check_args(NET, cls, {"num_outputs": 3})
    with pytest.raises(InputError, match=r"model.args.units is not an argument of Linear; its arguments: in_features"):
        check_args("x:Dense", torch.nn.Linear, {"in_features": 3, "out_features": 2, "units": 1})
    with pytest.raises(InputError, match=r"Linear needs the argument 'out_features'; set model.args.out_features"):
        check_args("torch.nn:Linear", torch.nn.Linear, {"in_features": 3})


def test_data_facts_are_given_only_when_declared():
    data = {"kind": "tabular", "input_shape": [4], "num_outputs": 3, "vocab": []}
    assert data_facts(load_class(NET), data) == {"input_shape": (4,), "num_outputs": 3}
    assert data_facts(torch.nn.Linear, data) == {}


def test_model_args_come_from_yaml_and_the_command_line(tmp_path):
    from pipelines.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text(f"model:\n  family: {NET}\n  args: {{hidden: 8, depth: 3}}\n")
    cfg = load_config(path, ["model.args.hidden=16"])
    assert cfg.model.arch() == {"hidden": 16, "depth": 3}
    assert cfg.flat()["model.args.hidden"] == 16


def test_a_plain_net_trains_under_the_supervised_module(cli, tiny, tmp_path):
    code, _, err = cli("train", f"model.family={NET}", "model.args.hidden=32", *DIGITS, *tiny, "trainer.max_epochs=2")
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {"test/acc", "test/f1", "test/loss"} <= set(summary["metrics"])  # dlforge's metrics apply
    path = str(tmp_path / "out" / "checkpoints" / "last.ckpt")
    checkpoint = torch.load(path, weights_only=True)  # plain data: the class path and its arguments as strings
    assert checkpoint[FAMILY_KEY] == NET and checkpoint["dlforge_model"]["args"] == {"hidden": 32}
    model = load_model(path, allowed=NET)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)  # digits: 8×8 images of one channel
    with pytest.raises(InputError, match="the config does not"):
        load_model(path)  # no configured class path: the one inside the file is not imported


def test_a_lightning_module_trains_as_it_is(cli, tiny, tmp_path):
    code, _, err = cli(
        "train", f"model.family={LIT}", *DIGITS, *tiny, "trainer.max_epochs=2", "trainer.monitor=val/acc"
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "out" / "summary.json").read_text())["metrics"]
    assert set(metrics) == {"test/acc", "test/loss"}  # what its own test_step logs, nothing dlforge adds
    model = load_model(str(tmp_path / "out" / "checkpoints" / "best.ckpt"), allowed=LIT)
    assert type(model).__name__ == "MyLitClassifier" and model.hparams.hidden == 64


def test_a_wrong_argument_stops_before_anything_is_written(cli, tiny, tmp_path):
    code, _, err = cli("train", f"model.family={NET}", "model.args.hiden=32", *DIGITS, *tiny)
    assert code == 2 and "did you mean model.args.hidden?" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- checkpoints naming a class: never imported


@pytest.fixture
def forged(cli, tiny, tmp_path):
    """Checkpoints of a real mlp fit whose family says ``os:system``, ``builtins:eval`` or a file that leaves a
    marker when imported; returns (paths, marker)."""
    code, _, err = cli("train", "model.family=mlp", "data.source=builtin:iris", *tiny)
    assert code == 0, err
    checkpoint = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", weights_only=True)
    marker = tmp_path / "imported"
    planted = tmp_path / "planted.py"
    planted.write_text(f"open({str(marker)!r}, 'w').close()\nimport torch\nclass Net(torch.nn.Module):\n    pass\n")
    paths = []
    for name in ("os:system", "builtins:eval", f"{planted}:Net"):
        path = tmp_path / f"forged-{len(paths)}.ckpt"
        torch.save({**checkpoint, FAMILY_KEY: name}, path)
        paths.append(str(path))
    return paths, marker


@pytest.mark.parametrize("how", ["resume", "teacher", "init_from"])
def test_a_checkpoint_naming_a_class_the_config_does_not_is_refused(forged, how, cli, tiny, tmp_path):
    paths, marker = forged
    base = ["model.family=mlp", "data.source=builtin:iris", *tiny[1:]]
    for i, path in enumerate(paths):
        out = f"output_dir={tmp_path / f'{how}-{i}'}"
        if how == "resume":
            code, _, err = cli("train", *base, out, "--resume", path)
        elif how == "teacher":
            code, _, err = cli("compress", *base, out, "--teacher", path)
        else:
            code, _, err = cli("train", *base, out, f"model.init_from={path}")
        assert code == 2, err
        assert "the config does not" in err and len(err.strip().splitlines()) == 1, err
        assert not marker.exists()  # the class named in the file was never imported
        assert not (tmp_path / f"{how}-{i}" / "checkpoints").exists()  # nothing trained


def test_the_student_is_the_same_class_with_compress_student_args():
    from pipelines.compression.students import student_arch, student_fit_config
    from pipelines.compression.teacher import Teacher
    from pipelines.config import load_config

    spec = tiny_spec("image", num_outputs=10)
    teacher = Teacher(None, "t.ckpt", NET, spec, {"hidden": 64, "depth": 2}, None)
    base = [f"model.family={NET}", "model.args.hidden=64"]
    cfg = load_config(None, [*base, "compress.student.args.hidden=8"])
    assert student_arch(cfg, teacher) == (NET, {"hidden": 8, "depth": 2})
    other = load_config(None, [*base, "compress.student.family=mlp", "compress.student.width=0.5"])
    family, arch = student_arch(other, teacher)
    assert family == "mlp" and arch["hidden"] == [128, 64]  # the mlp section's (256, 128), halved
    assert student_fit_config(other, teacher, family).model.family == "mlp"


def test_a_sweep_may_search_the_models_own_arguments():
    from pipelines.config import load_config
    from pipelines.sweep import plan_sweep

    space = "tune.space={model.args.hidden: {choice: [8, 48]}}"
    plan = plan_sweep(load_config(None, [f"model.family={NET}", space]))
    assert "model.args.hidden" in plan.space
    typo = "tune.space={model.args.hiden: {choice: [8, 48]}}"
    with pytest.raises(InputError, match="did you mean 'model.args.hidden'"):
        plan_sweep(load_config(None, [f"model.family={NET}", typo]))
