"""A registered ONNX model served by ``mlflow.pyfunc`` returns what ``dlforge predict`` writes: the same labels and
probabilities (values for regression), with the preprocessing stored in the file (text → token ids by its own
vocabulary). Real sqlite store, real registered versions, real ONNX Runtime; ``mlflow models predict`` too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import export, predict, tracking
from pipelines.compression import publish
from pipelines.config import load_config

ROOT = Path(__file__).resolve().parents[2]
VOCAB = ["<pad>", "<unk>", "good", "bad", "film", "plot"]


def _save(graph_nodes, inputs, outputs, weights, spec: dict, path: Path) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph(graph_nodes, "tiny", inputs, outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    export.set_metadata(model, export.model_metadata(spec, family="mlp", role="teacher", source_run_id=None))
    onnx.save(model, str(path))
    return path


def _dense_onnx(path: Path, task: str) -> Path:
    """Six features → three classes (or one value): MatMul + Add, dlforge metadata."""
    from onnx import TensorProto, helper, numpy_helper

    width = 3 if task == "classification" else 1
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal(s).astype("f4"), n) for n, s in (("w", (6, width)), ("b", (width,)))
    ]
    nodes = [helper.make_node("MatMul", ["input", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["out"])]
    spec = {"kind": "tabular", "task": task, "input_shape": [6], "num_outputs": width}
    spec["class_names"] = ["setosa", "versi color", "virginica"] if task == "classification" else []
    io = (
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", width])],
    )
    return _save(nodes, *io, weights, spec, path)


def _text_onnx(path: Path) -> Path:
    """Token ids (length 5) → embedding mean → two classes; the vocabulary in the metadata."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    shapes = (("emb", (len(VOCAB), 3)), ("w", (3, 2)))
    weights = [numpy_helper.from_array(rng.standard_normal(s).astype("f4"), n) for n, s in shapes]
    nodes = [
        helper.make_node("Gather", ["emb", "input"], ["e"]),
        helper.make_node("ReduceMean", ["e"], ["m"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["out"]),
    ]
    spec = {"kind": "text", "task": "classification", "input_shape": [5], "num_outputs": 2}
    spec |= {"class_names": ["neg", "pos"], "vocab": VOCAB}
    io = (
        [helper.make_tensor_value_info("input", TensorProto.INT64, ["batch", 5])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 2])],
    )
    return _save(nodes, *io, weights, spec, path)


def _table(kind: str) -> pd.DataFrame:
    if kind == "text":
        return pd.DataFrame({"review": ["good film", "bad plot, bad film", "unseen words only", ""]})
    x = np.random.default_rng(2).integers(0, 9, size=(7, 6))  # int64 columns, as pandas reads a CSV of counts
    return pd.DataFrame(x, columns=[f"feature {i}" for i in range(6)])  # names differ from the logged example's


def _register(store: str, tmp_path: Path, onnx_path: Path, name: str) -> str:
    """Log ``onnx_path`` as the compress stage does and register it under ``champion``; returns the URI."""
    cfg = load_config(None, [f"tracking.uri={store}", f"output_dir={tmp_path / 'out'}"])
    tracking.connect(cfg)
    examples = np.zeros((2, 5), np.int64) if "text" in name else np.zeros((2, 6), np.float32)
    with tracking.job_run(cfg, kind="compress") as run_id:
        uri = publish.log_predictor(run_id, "teacher", onnx_path, examples, {"dlforge_model": "teacher"})
        tracking.register_model(uri, name=name, run_id=run_id, alias="champion")
    return f"models:/{name}@champion"


@pytest.mark.parametrize("kind", ["classification", "regression", "text"])
def test_pyfunc_returns_what_dlforge_predict_writes(store, tmp_path, kind):
    import mlflow

    path = _text_onnx(tmp_path / "m.onnx") if kind == "text" else _dense_onnx(tmp_path / "m.onnx", kind)
    uri = _register(store, tmp_path, path, f"pyfunc-{kind}")
    table = _table(kind)
    table.to_csv(tmp_path / "in.csv", index=False)
    cfg = load_config(None, [f"tracking.uri={store}"])
    out, count = predict.predict(uri, str(tmp_path / "in.csv"), str(tmp_path / "p.csv"), cfg)
    written = pd.read_csv(out, dtype={"id": str, "prediction": str if kind != "regression" else float})

    served = mlflow.pyfunc.load_model(uri).predict(table)
    pd.testing.assert_frame_equal(served, written, check_dtype=False, rtol=1e-6)
    assert count == len(table)
    if kind == "regression":
        assert list(served.columns) == ["id", "prediction"]
        return
    probs = served.filter(like="prob_").to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert len(set(served["prediction"])) >= 1 and set(served["prediction"]) <= {
        "setosa",
        "versi color",
        "virginica",
        "neg",
        "pos",
    }
    logits = export.run_session(export.open_session(path), _encoded(table, path))
    names = export.read_metadata(path)["class_names"]
    assert list(served["prediction"]) == [names[i] for i in logits.argmax(1)]  # the stored preprocessing was applied


def _encoded(table: pd.DataFrame, path: Path) -> np.ndarray:
    meta = export.read_metadata(path)
    return predict.encode_text(table, meta) if meta["kind"] == "text" else table.to_numpy(np.float32)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_mlflow_models_predict_serves_the_champion_from_a_csv(store, tmp_path):
    """The command line a reviewer copies: ``mlflow models predict -m models:/…@champion -i x.csv -t csv``."""
    uri = _register(store, tmp_path, _dense_onnx(tmp_path / "m.onnx", "classification"), "cli-model")
    _table("classification").to_csv(tmp_path / "x.csv", index=False)
    command = [sys.executable, "-m", "mlflow", "models", "predict", "-m", uri, "-i", str(tmp_path / "x.csv")]
    command += ["-t", "csv", "--env-manager", "local", "-o", str(tmp_path / "out.json")]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=150,
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": store},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    served = pd.DataFrame(json.loads((tmp_path / "out.json").read_text())["predictions"])
    cfg = load_config(None, [f"tracking.uri={store}"])
    out, _ = predict.predict(uri, str(tmp_path / "x.csv"), str(tmp_path / "p.csv"), cfg)
    pd.testing.assert_frame_equal(served, pd.read_csv(out, dtype={"id": str}), check_dtype=False, rtol=1e-6)


def test_a_registered_model_carries_the_code_it_is_served_with(tmp_path):
    """Where dlforge is not installed: the shipped files alone import and predict (no module comes from the repo)."""
    folders = predict.serving_code(tmp_path / "code")
    assert [f.name for f in folders] == ["dl_lightning", "pipelines"]
    path = _dense_onnx(tmp_path / "m.onnx", "classification")
    probe = (
        "import sys, pandas as pd; sys.path.insert(0, sys.argv[1])\n"
        "import pipelines, pipelines.predict as p\n"
        "assert pipelines.__file__.startswith(sys.argv[1]), pipelines.__file__\n"
        "frame = p._load_pyfunc(sys.argv[2]).predict(pd.DataFrame([[1, 2, 3, 4, 5, 6]]))\n"
        "assert 'torch' not in sys.modules and 'mlflow' not in sys.modules\n"
        "print(frame['prediction'][0])"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "code"), str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() in {"setosa", "versi color", "virginica"}


def test_a_generator_is_not_a_predictor(tmp_path):
    from onnx import TensorProto, helper

    path = _save(
        [helper.make_node("Identity", ["input"], ["out"])],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 6])],
        [],
        {"kind": "tabular", "task": "", "input_shape": [6], "num_outputs": 6},
        tmp_path / "g.onnx",
    )
    from dl_lightning.errors import InputError

    with pytest.raises(InputError, match="not a dlforge predictor"):
        predict.Predictor(path)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_the_registered_pytorch_model_predicts_as_its_onnx_file(store, tmp_path, task):
    """``models:/<experiment>-<family>`` (the trained PyTorch model): pyfunc gives labels and probabilities (or
    values), equal to ``dlforge predict`` on the same net exported to ONNX."""
    import mlflow
    import torch

    from dl_lightning.data.spec import DataSpec
    from dl_lightning.registry import build_model

    names = ("setosa", "versi color", "virginica") if task == "classification" else ()
    spec = DataSpec("tabular", task, (6,), len(names) or 1, mean=(1.0,) * 6, std=(2.0,) * 6, class_names=names)
    torch.manual_seed(0)
    net, example = build_model("mlp", spec, {"hidden": [8], "dropout": 0.0}, {}).export_net()
    meta = export.model_metadata(spec.to_dict(), family="mlp", role="trained", source_run_id=None)
    cfg = load_config(None, [f"tracking.uri={store}", f"output_dir={tmp_path / 'out'}"])
    tracking.connect(cfg)
    with tracking.job_run(cfg, kind="train") as run_id:
        uri, serves = predict.log_trained_model(run_id, net, example, meta)
        tracking.register_model(uri, name=f"torch-{task}", run_id=run_id, alias="champion")
    assert serves
    table = _table("tabular")
    served = mlflow.pyfunc.load_model(f"models:/torch-{task}@champion").predict(table)
    onnx_path = export.export_onnx(net, example, tmp_path / "m.onnx", metadata=meta, output_name="out")
    expected = predict.Predictor(onnx_path).predict(table)  # what dlforge predict writes for the ONNX file
    pd.testing.assert_frame_equal(served, expected, check_dtype=False, rtol=1e-5, atol=1e-6)
    assert list(served.columns)[:2] == ["id", "prediction"] and len(served) == len(table)
