"""Bad and hostile input: refused in one line (exit 2) before anything is written, bounded before it is parsed."""

from __future__ import annotations

import json
import pickle
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.cli import main


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlforge:"), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def refused(capsys):
    """Run dlforge in-process; assert exit ``code`` and one line on stderr; return that line."""

    def run(*args: str, code: int = 2) -> str:
        got = main(list(args))
        err = capsys.readouterr().err
        assert got == code, err
        return one_line(err)

    return run


TINY = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2", "data.batch_size=16"]


def _images(root: Path, classes: tuple[str, ...], n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for label in classes:
        (root / label).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


def _png_header(path: Path, width: int, height: int) -> Path:
    """A 60-byte PNG that declares ``width × height`` pixels (its data is never reached)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


# ---------------------------------------------------------------- item 7: nothing written before the refusal


def _bad_data(tmp_path: Path) -> dict[str, list[str]]:
    rng = np.random.default_rng(0)
    ok = pd.DataFrame({"a": rng.normal(size=40), "b": rng.normal(size=40), "label": [0, 1] * 20})
    ok.assign(b=["x"] * 40).to_csv(tmp_path / "strings.csv", index=False)
    return {
        "missing file": [f"data.source={tmp_path / 'nope.csv'}"],
        "string column": [f"data.source={tmp_path / 'strings.csv'}", "data.kind=tabular", "model.family=mlp"],
        "single-class folder": [f"data.source={_images(tmp_path / 'one', ('cat',))}", "model.family=cnn"],
        "family that cannot take the data": ["data.source=builtin:wine", "model.family=gan"],
    }


@pytest.mark.parametrize("command", ["train", "run", "tune", "compress"])
@pytest.mark.parametrize(
    "case", ["missing file", "string column", "single-class folder", "family that cannot take the data"]
)
def test_bad_data_with_tracking_on_writes_no_folder_no_store_no_run(refused, tmp_path, command, case):
    if command == "compress" and case == "family that cannot take the data":
        pytest.skip("compress trains the teacher's family, not model.family")
    store, out = tmp_path / "store" / "mlflow.db", tmp_path / "out"
    extra = ["--teacher", str(tmp_path / "teacher.ckpt")] if command == "compress" else []
    args = [*_bad_data(tmp_path)[case], f"output_dir={out}", f"tracking.uri=sqlite:///{store}", *TINY, *extra]
    refused(command, *args)
    assert not out.exists()
    assert not store.parent.exists()  # not even a new, empty store


# ---------------------------------------------------------------- item 10: credentials never reach a file


def test_credentials_in_tracking_uri_are_redacted_in_summary(capsys, tmp_path):
    uri = "http://alice:s3cretPW@127.0.0.1:9"
    args = ["train", "model.family=mlp", "data.source=builtin:iris", f"output_dir={tmp_path}", *TINY]
    assert main([*args, f"tracking.uri={uri}", "tracking.enabled=false"]) == 0
    text = (tmp_path / "summary.json").read_text()
    out = capsys.readouterr()
    assert "s3cretPW" not in text and "s3cretPW" not in out.out + out.err
    assert json.loads(text)["config"]["tracking"]["uri"] == "http://***@127.0.0.1:9"


def test_credentials_turn_off_mlflows_view_run_lines(monkeypatch):
    from pipelines import tracking
    from pipelines.config import load_config
    from pipelines.tracking import store

    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    monkeypatch.setattr(store, "_reachable_uri", lambda cfg: "http://alice:s3cretPW@127.0.0.1:9")
    monkeypatch.setattr(store, "_experiment_id", lambda *args: "0")
    tracking.connect(load_config(None, ["tracking.uri=http://alice:s3cretPW@127.0.0.1:9"]))
    import os

    assert os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true"
    assert tracking.redact_argv(["x", "tracking.uri=http://alice:s3cretPW@h"]) == ["x", "tracking.uri=http://***@h"]


# ---------------------------------------------------------------- item 12: small inputs, big costs


def test_yaml_alias_bomb_is_refused_fast(refused, tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    assert bomb.stat().st_size < 500
    started = time.perf_counter()
    line = refused("show", str(bomb))
    assert time.perf_counter() - started < 10
    assert "aliases" in line


def test_yaml_tag_is_named_a_tag_not_a_syntax_error(refused, tmp_path):
    config = tmp_path / "tag.yaml"
    config.write_text(f'seed: !!python/object/apply:os.system ["touch {tmp_path / "pwned"}"]\n')
    line = refused("train", str(config))
    assert "YAML tag" in line and "syntax" not in line
    assert not (tmp_path / "pwned").exists()


def test_csv_of_a_million_columns_is_refused_before_parsing(refused, tmp_path):
    wide = tmp_path / "wide.csv"
    wide.write_text(",".join(f"c{i}" for i in range(1_000_000)) + "\n")
    started = time.perf_counter()
    line = refused("train", f"data.source={wide}", f"output_dir={tmp_path / 'out'}", "tracking.enabled=false")
    assert time.perf_counter() - started < 20
    assert "1000000 columns" in line and ".npz" in line


@pytest.mark.parametrize(("side", "why"), [(20000, "bomb"), (10000, "bomb")])  # over 2× and 1× PIL's limit
def test_png_decompression_bomb_is_one_line(refused, tmp_path, side, why):
    root = _images(tmp_path / "imgs", ("cat", "dog"))
    _png_header(root / "cat" / "bomb.png", side, side)
    line = refused("train", f"data.source={root}", "model.family=cnn", f"output_dir={tmp_path / 'o'}", *TINY)
    assert "bomb.png" in line and why in line.lower()


# ---------------------------------------------------------------- predict: ONNX metadata and inputs


def _onnx_model(path: Path, input_shape: list[int], kind: str = "tabular") -> Path:
    """An Identity graph carrying dlforge metadata: the declared input shape is whatever the test says."""
    import onnx
    from onnx import TensorProto, helper

    width = int(np.prod(input_shape)) if np.prod(input_shape) < 1000 else 4
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", width])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    meta = {"task": "classification", "kind": kind, "input_shape": input_shape, "role": "teacher"}
    for key, value in meta.items():
        model.metadata_props.add(key=f"dlforge.{key}", value=json.dumps(value))
    onnx.save(model, str(path))
    return path


def test_onnx_declaring_a_huge_input_is_refused_before_allocating(refused, tmp_path):
    model = _onnx_model(tmp_path / "huge.onnx", [1, 40000, 40000], kind="image")
    root = _images(tmp_path / "imgs", ("a",), n=2)
    line = refused("predict", str(model), str(root), "--output", str(tmp_path / "p.csv"))
    assert "1,600,000,000 values" in line and not (tmp_path / "p.csv").exists()


def test_predict_csv_with_too_few_columns_asks_for_all_of_them(refused, tmp_path):
    model = _onnx_model(tmp_path / "m.onnx", [4])
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    line = refused("predict", str(model), str(tmp_path / "x.csv"))
    assert "only 2" in line and "drop" not in line


def test_predict_output_errors_name_the_output_flag(refused, tmp_path):
    model = _onnx_model(tmp_path / "m.onnx", [2])
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    (tmp_path / "a-file").write_text("x")
    line = refused("predict", str(model), str(tmp_path / "x.csv"), "--output", str(tmp_path / "a-file" / "p.csv"))
    assert "--output" in line and "output_dir" not in line


def test_predict_png_bomb_is_one_line(refused, tmp_path):
    model = _onnx_model(tmp_path / "m.onnx", [1, 8, 8], kind="image")
    (tmp_path / "imgs").mkdir()
    _png_header(tmp_path / "imgs" / "bomb.png", 20000, 20000)
    assert "bomb" in refused("predict", str(model), str(tmp_path / "imgs"), "--output", str(tmp_path / "p.csv"))


def test_unknown_registry_model_lists_the_ones_that_exist(refused, tmp_path, store):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store, registry_uri=store)
    client.create_registered_model("real-mlp")
    client.create_model_version("real-mlp", source=str(tmp_path))
    client.set_registered_model_alias("real-mlp", "champion", "1")
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    line = refused("predict", "models:/nope@champion", str(tmp_path / "x.csv"), f"tracking.uri={store}")
    assert "models:/real-mlp@champion" in line


# ---------------------------------------------------------------- tracebacks and wrong words


def test_a_300_character_output_folder_is_one_line(refused, tmp_path):
    line = refused("train", f"output_dir={tmp_path / ('a' * 300)}", "tracking.enabled=false")
    assert "folder name of 300 bytes" in line


def test_resume_with_another_architecture_is_one_line(refused, tmp_path):
    base = ["model.family=mlp", "data.source=builtin:iris", f"output_dir={tmp_path}", "tracking.enabled=false", *TINY]
    assert main(["train", *base]) == 0
    line = refused("train", *base, "model.mlp.hidden=[8]", "--resume", str(tmp_path / "checkpoints" / "last.ckpt"))
    assert "another model or data" in line and "drop --resume" in line


def test_huge_csv_values_are_blamed_on_the_data_not_the_learning_rate(refused, tmp_path):
    frame = pd.DataFrame({"a": np.arange(40.0), "b": np.arange(40.0), "label": [0, 1] * 20})
    frame.loc[5, "a"] = 1e308
    frame.to_csv(tmp_path / "huge.csv", index=False)
    line = refused("train", f"data.source={tmp_path / 'huge.csv'}", "model.family=mlp", "tracking.enabled=false")
    assert "float32" in line and "1e+308" in line and "optim.lr" not in line


def test_nul_bytes_are_named_as_such(refused, tmp_path):
    (tmp_path / "nul.csv").write_bytes(b"a,b,label\n14.23,1,0\n1\x00\x002,3,1\n" + b"1,2,0\n" * 20)
    line = refused("train", f"data.source={tmp_path / 'nul.csv'}", "model.family=mlp", "tracking.enabled=false")
    assert "NUL byte at line 3" in line and "14.23" not in line


def test_non_numeric_column_names_the_offending_value(tmp_path):
    from dl_lightning.data.tables import numeric_features
    from dl_lightning.errors import InputError

    with pytest.raises(InputError, match="'n/a'"):
        numeric_features(pd.DataFrame({"a": ["14.23", "n/a", "3"]}), "t.csv")


def test_single_class_image_folder_says_so(refused, tmp_path):
    root = _images(tmp_path / "one", ("cat",))
    line = refused("train", f"data.source={root}", "model.family=cnn", "tracking.enabled=false")
    assert "one class subfolder ('cat')" in line and "data.target" not in line


def test_sigterm_to_compress_does_not_advise_a_resume_it_lacks(capsys, tmp_path, monkeypatch):
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    import pipelines.compression.stage

    def killed(*args, **kwargs):
        raise SIGTERMException()

    monkeypatch.setattr(pipelines.compression.stage, "compress", killed)
    args = ["data.source=builtin:iris", f"output_dir={tmp_path}", "tracking.enabled=false", "--teacher", "t.ckpt"]
    assert main(["compress", *args]) == 143
    line = one_line(capsys.readouterr().err)
    assert "SIGTERM" in line and "--resume" not in line


def test_experiment_names_with_a_quote_are_searchable(store):
    from mlflow import MlflowClient

    from pipelines import tracking
    from pipelines.config import load_config

    name = "team's-mlp"
    tracking.connect(load_config(None, [f"tracking.uri={store}"]))
    client = MlflowClient()
    client.create_registered_model(name)
    client.create_model_version(name, source="/tmp")
    client.set_model_version_tag(name, "1", "dlforge.gates", "passed")
    client.set_model_version_tag(name, "1", "metric.test/acc", "0.9")
    assert tracking.promote_best(name, "champion", metric="test/acc", mode="max")["champion"] in (1, "1")
    with pytest.raises(ValueError, match="both"):
        tracking.filter_quote("a'b\"c")


def test_input_error_in_a_trial_is_recorded_not_raised_so_ray_never_retries(tmp_path):
    from dl_lightning.errors import InputError
    from pipelines.config import load_config
    from pipelines.sweep import TrainingTrial, _raise_input_errors
    from tune.sweep import SweepOutcome, TrialContext, TrialRecord

    cfg = load_config(None, ["data.source=builtin:wine", "model.family=gan", "tracking.enabled=false", *TINY])
    ctx = TrialContext("t1", str(tmp_path / "t1"), None)
    TrainingTrial(cfg, "val/acc", None, str(tmp_path))({}, ctx)  # returns: Ray sees a trial that ended, not a failure
    reason = ctx.load_state()["input_error"]
    assert "gan" in reason
    record = TrialRecord("t1", {}, "not run", 0, None, None, 0.0, state=ctx.load_state())
    with pytest.raises(InputError, match="trial t1: .*gan"):
        _raise_input_errors(SweepOutcome([record], None, str(tmp_path), 0.0, 0.0, 1))


# ---------------------------------------------------------------- item 9: a sweep folder dlforge did not write


class Planted:
    """Unpickling this creates a file: proof that code from the folder ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_tune_resume_refuses_a_planted_pickle_and_runs_nothing(refused, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    folder, marker = tmp_path / "sweep", tmp_path / "pwned"
    folder.mkdir()
    (folder / "dlforge_sweep.json").write_text(
        json.dumps({"config": {"output_dir": str(tmp_path / "o")}, "run_id": None})
    )
    (folder / "tuner.pkl").write_bytes(pickle.dumps(Planted(marker)))
    line = refused("tune", "--resume", str(folder))
    assert "did not write it" in line
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_a_signed_folder_is_accepted_and_any_change_is_refused(tmp_path, monkeypatch):
    from dl_lightning.errors import InputError
    from tune.integrity import record_digests, verify_experiment

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    folder = tmp_path / "sweep"
    (folder / "trial_1").mkdir(parents=True)
    (folder / "tuner.pkl").write_bytes(pickle.dumps({"ok": 1}))
    (folder / "experiment_state-x.json").write_text("{}")
    record_digests(folder)
    verify_experiment(folder)  # dlforge's own folder: accepted
    assert (tmp_path / "config" / "dlforge" / "sweep.key").stat().st_mode & 0o077 == 0
    (folder / "trial_1" / "error.pkl").write_bytes(pickle.dumps(Planted(tmp_path / "pwned")))
    with pytest.raises(InputError, match="trial_1/error.pkl .* changed or added"):
        verify_experiment(folder)
    (folder / "trial_1" / "error.pkl").unlink()
    record = json.loads((folder / "dlforge_digest.json").read_text())
    record["files"]["tuner.pkl"] = ["0" * 64]  # a forged record: the signature no longer matches
    (folder / "dlforge_digest.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match="not signed by your dlforge key"):
        verify_experiment(folder)


def test_a_state_save_copied_after_the_last_record_is_set_aside_not_read(tmp_path, monkeypatch):
    """A driver killed between Ray's copy of a state save and dlforge's record of it: resume from the save before."""
    from dl_lightning.errors import InputError
    from tune.integrity import record_digests, verify_experiment

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / "experiment_state-1.json").write_text("{}")
    record_digests(folder)
    (folder / "experiment_state-2.json").write_text('{"late": 1}')
    assert verify_experiment(folder) == ["experiment_state-2.json"]
    assert (folder / "experiment_state-2.json.unverified").is_file() and not (
        folder / "experiment_state-2.json"
    ).exists()
    (folder / "experiment_state-1.json").write_text('{"changed": 1}')  # a recorded save changed: still refused
    with pytest.raises(InputError, match="changed or added"):
        verify_experiment(folder)


def test_a_lost_ddp_rank_is_one_line_not_a_gloo_traceback(capsys, tmp_path, monkeypatch):
    import torch.distributed

    import pipelines.train

    def lost(*args, **kwargs):
        raise torch.distributed.DistBackendError(
            "[../third_party/gloo/transport/tcp/pair.cc:534] Connection closed by peer"
        )

    monkeypatch.setattr(pipelines.train, "train", lost)
    args = ["model.family=mlp", "data.source=builtin:iris", f"output_dir={tmp_path}", "tracking.enabled=false"]
    assert main(["train", *args]) == 1
    line = one_line(capsys.readouterr().err)
    assert "DDP process was lost" in line and "--resume auto" in line


def test_a_trial_hung_before_its_first_batch_is_ended_by_its_watchdog(tmp_path, monkeypatch):
    import pipelines.sweep
    from pipelines.config import load_config
    from tune.sweep import TrialContext

    def hang(payload):  # data loading that never yields a batch: the per-batch deadline never runs
        while True:
            time.sleep(0.01)

    monkeypatch.setattr(pipelines.sweep, "fit_trial", hang)
    monkeypatch.setattr(pipelines.sweep, "WATCHDOG_GRACE_S", 0.5)
    cfg = load_config(None, ["data.source=builtin:iris", "tracking.enabled=false", "tune.trial_timeout_s=1"])
    ctx = TrialContext("t1", str(tmp_path / "t1"), None)
    started = time.perf_counter()
    pipelines.sweep.TrainingTrial(cfg, "val/acc", None, str(tmp_path))({}, ctx)  # returns: Ray sees no failure to retry
    assert time.perf_counter() - started < 15
    assert "timed_out" in ctx.load_state()
