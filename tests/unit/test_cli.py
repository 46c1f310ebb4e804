"""The command line: resolved config, a real tiny training job, and one clear line + exit 2 for every bad input."""

import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image


def test_show_prints_resolved_config(cli):
    code, out, _ = cli("show", "model.family=rnn", "model.rnn.cell=gru")
    assert code == 0
    assert "family: rnn" in out and "cell: gru" in out


def test_train_writes_checkpoint_summary_and_test_score(cli, tiny, tmp_path):
    code, out, err = cli("train", "model.family=mlp", "data.source=builtin:iris", *tiny)
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["command"] == "train"
    assert summary["config"]["model"]["family"] == "mlp"
    assert 0.0 <= summary["metrics"]["test/acc"] <= 1.0
    assert summary["paths"]["best_checkpoint"].endswith("best.ckpt")
    assert summary["wall_time_s"] > 0
    assert "test/acc" in out


def test_version_and_help_are_for_users(capsys, monkeypatch):
    from pipelines.cli import COMMANDS, main
    from pipelines.version import dlforge_version

    monkeypatch.setenv("COLUMNS", "80")
    for flag in ("--version", "--help"):
        with pytest.raises(SystemExit) as done:
            main([flag])
        assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"dlforge {dlforge_version()}\n")
    assert "the one place that reads argv" not in out  # not the module's developer docstring
    for name in COMMANDS:  # each command listed with its line of help
        assert re.search(rf"^    {name} +\S", out, re.MULTILINE), name
    assert not re.search(r"^ {10,}\S", out, re.MULTILINE)  # no help line wrapped on an 80-column terminal


def test_tracked_train_prints_its_run_id_and_dashboard_link(cli, tiny, store):
    tracked = [a for a in tiny if a != "tracking.enabled=false"] + [f"tracking.uri={store}"]
    code, out, err = cli("train", "model.family=mlp", "data.source=builtin:iris", *tracked)
    assert code == 0, err
    run_id = re.search(r"mlflow_run +([0-9a-f]{32})", out).group(1)
    link = re.search(r"dashboard +(\S+)", out).group(1)
    assert link.startswith("http://127.0.0.1:5000/#/experiments/") and link.endswith(f"/runs/{run_id}")
    assert f"(serve it: dlforge ui tracking.uri={store})" in out
    table = re.search(r"runs_table +(\S+)", out).group(1)  # no pipeline yet: the runs table in MLflow's columns
    assert table == link.removesuffix(f"/{run_id}")
    from mlflow import MlflowClient

    inputs = MlflowClient(tracking_uri=store).get_run(run_id).inputs.dataset_inputs  # the Dataset column
    assert len(inputs) == 1 and inputs[0].dataset.name == "iris" and inputs[0].dataset.digest
    tags = {t.key: t.value for t in inputs[0].tags}
    assert (
        tags["mlflow.data.context"] == "training"
        and sum(int(tags[f"rows.{k}"]) for k in ("train", "val", "test")) == 150
    )
    assert '"x"' in inputs[0].dataset.schema and "builtin:iris" in inputs[0].dataset.source


def test_same_seed_same_metrics(cli, tiny, tmp_path):
    runs = []
    for name in ("a", "b"):
        args = [*tiny[1:], f"output_dir={tmp_path / name}", "model.family=mlp", "data.source=builtin:wine"]
        assert cli("train", *args)[0] == 0
        runs.append(json.loads((tmp_path / name / "summary.json").read_text())["metrics"])
    assert runs[0] == runs[1]


def test_resume_continues_from_last_checkpoint(cli, tiny, tmp_path):
    base = [*tiny, "model.family=mlp", "data.source=builtin:iris"]
    assert cli("train", *base)[0] == 0
    last = tmp_path / "out" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    code, _, err = cli("train", *base, "trainer.max_epochs=2", "--resume", "auto")
    assert code == 0, err


def _csv(tmp_path, frame: pd.DataFrame, name: str) -> str:
    path = tmp_path / f"{name}.csv"
    frame.to_csv(path, index=False)
    return str(path)


def _bad_inputs(tmp_path):
    rng = np.random.default_rng(0)
    ok = pd.DataFrame({"a": rng.normal(size=40), "b": rng.normal(size=40), "label": [0, 1] * 20})
    empty = tmp_path / "images"
    empty.mkdir()
    nan = ok.copy()
    nan.loc[3, "a"] = np.nan
    text_feature = ok.assign(b=["x"] * 40)
    single = ok.assign(label=0)
    return {
        "missing file": ([f"data.source={tmp_path / 'nope.csv'}"], "does not exist"),
        "unknown builtin": (["data.source=builtin:mnist"], "builtin"),
        "absent target": ([f"data.source={_csv(tmp_path, ok, 'ok')}", "data.target=y"], "target"),
        "non-numeric feature": (
            [f"data.source={_csv(tmp_path, text_feature, 'text')}", "data.kind=tabular", "model.family=mlp"],
            "'b'",
        ),
        "nan in features": ([f"data.source={_csv(tmp_path, nan, 'nan')}"], "NaN"),
        "single class": ([f"data.source={_csv(tmp_path, single, 'single')}"], "class"),
        "empty image folder": ([f"data.source={empty}"], "image"),
        "gan on a table": (["data.source=builtin:wine", "model.family=gan"], "gan"),
        "negative epochs": (["trainer.max_epochs=-3"], "trainer.max_epochs"),
        "learning rate zero": (["optim.lr=0"], "optim.lr"),
        "too many devices": (["trainer.devices=64", "trainer.strategy=ddp"], "trainer.devices"),
        "unknown key": (["trainer.epochs=3"], "did you mean"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "unknown builtin",
        "absent target",
        "non-numeric feature",
        "nan in features",
        "single class",
        "empty image folder",
        "gan on a table",
        "negative epochs",
        "learning rate zero",
        "too many devices",
        "unknown key",
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(cli, tiny, tmp_path, case):
    args, needle = _bad_inputs(tmp_path)[case]
    code, out, err = cli("train", *tiny, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlforge: error:"), err
    assert needle in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_malformed_yaml_is_exit_2(cli, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {family: cnn\n")
    code, _, err = cli("train", str(path))
    assert code == 2 and "not valid YAML" in err


def test_unwritable_output_dir_is_exit_2(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = cli("train", f"output_dir={blocker / 'out'}")
    assert code == 2 and "output_dir" in err


def test_image_folder_trains(cli, tiny, tmp_path):
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 255, size=(10 + i, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / label / f"{i}.png")
    code, _, err = cli("train", *tiny, f"data.source={tmp_path / 'imgs'}", "data.image_size=8", "model.family=cnn")
    assert code == 0, err


def test_run_refuses_multi_node_before_any_stage(cli, tiny, tmp_path):
    code, _, err = cli("run", *tiny, "trainer.num_nodes=2", "trainer.strategy=ddp")
    assert code == 2 and "torchrun or SLURM" in err
    assert not (tmp_path / "out").exists()


def test_run_quick_overlay_sits_between_file_and_overrides(tmp_path):
    import argparse

    from pipelines.cli import config_from
    from pipelines.run import quick_overrides

    config = tmp_path / "c.yaml"
    config.write_text("trainer: {max_epochs: 30}\ntune: {num_samples: 16}\n")
    args = argparse.Namespace(items=[str(config), "trainer.max_epochs=7"])
    cfg = config_from(args, preset=quick_overrides())
    assert cfg.trainer.max_epochs == 7  # the command line wins over --quick
    assert cfg.tune.num_samples == 2  # --quick wins over the file
