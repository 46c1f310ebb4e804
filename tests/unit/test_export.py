"""ONNX export for every family in the registry: checker, parity, metadata, INT8 recipes, hostile files, predict."""

from __future__ import annotations

import copy
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from dl_lightning.data.spec import DataSpec
from dl_lightning.errors import InputError
from dl_lightning.registry import FAMILIES, build_model
from pipelines import export
from pipelines.compression.quantization import choose_recipe, quantize_onnx
from pipelines.config import ModelConfig
from tests.fixtures import VOCAB, random_inputs, tiny_spec

ROOT = Path(__file__).resolve().parents[2]
# one data kind per family; text goes through the transformer so the vocabulary reaches the metadata
SPECS = {
    "mlp": tiny_spec("tabular", input_shape=(12,), class_names=("a", "b", "c")),
    "cnn": tiny_spec("image", num_outputs=4),
    "rnn": tiny_spec("sequence", input_shape=(10, 3)),  # long enough to feed a shorter sequence too
    "transformer": tiny_spec("text", input_shape=(9,), class_names=("neg", "pos")),
    "gan": tiny_spec("image", num_outputs=4),
}


# Small nets: export time grows with depth (dynamo traces every layer); parity and quantizability do not need size.
# Wide enough that the INT8 weights outweigh the quantization parameters they add.
SMALL = {
    "mlp": {"hidden": (64, 32)},
    "cnn": {"channels": (8, 16), "hidden": 32},
    "rnn": {"hidden_size": 32, "num_layers": 1, "embed_dim": 16},
    "transformer": {"d_model": 32, "nhead": 2, "num_layers": 1, "dim_feedforward": 64},
    "gan": {"latent_dim": 16, "width": 16},
}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """family → (net, .onnx path, spec), exported once per module: an export takes seconds."""
    folder, cache = tmp_path_factory.mktemp("onnx"), {}

    def get(family: str) -> tuple[torch.nn.Module, Path, DataSpec]:
        if family not in cache:
            cache[family] = _export(family, folder)
        return cache[family]

    return get


def _export(family: str, folder: Path) -> tuple[torch.nn.Module, Path, DataSpec]:
    torch.manual_seed(0)
    spec = SPECS[family]
    arch = dataclasses.replace(ModelConfig(), family=family).arch() | SMALL[family]
    module = build_model(family, spec, arch, {})
    net, example = module.eval().export_net()
    meta = export.model_metadata(spec.to_dict(), family=family, role="teacher", source_run_id="abc123")
    path = export.export_onnx(
        net, example, folder / f"{family}.onnx", metadata=meta, sequence_axis=family in ("rnn", "transformer")
    )
    return net, path, spec


@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_parity_and_int8_for_every_family(family, tmp_path, exports):
    net, path, spec = exports(family)
    model = onnx.load(str(path))
    assert model.opset_import[0].version >= 17
    assert all(t.data_location != TensorProto.EXTERNAL for t in model.graph.initializer)  # one file
    session = export.open_session(path)
    if family == "gan":
        batches = [np.random.default_rng(1).standard_normal((5, net.generator.project[0].in_features)).astype("f4")]
    else:
        batches = [random_inputs(spec, 5), random_inputs(spec, 1, seed=2)]  # batch 1 proves the batch axis is dynamic
    parity = export.check_parity(net, session, batches)
    assert parity.passed and parity.max_abs_diff <= 1e-4

    recipe = choose_recipe(model, "auto")
    assert recipe == ("static" if family in ("cnn", "gan") else "dynamic")
    int8 = quantize_onnx(path, tmp_path / "int8.onnx", recipe=recipe, calibration=batches)
    assert int8.stat().st_size < path.stat().st_size
    out = export.run_session(export.open_session(int8), batches[0])
    assert out.shape == export.run_session(session, batches[0]).shape and np.isfinite(out).all()
    assert export.read_metadata(int8)["quantization"] == recipe


@pytest.mark.parametrize("family", ["cnn", "transformer"])
def test_shipped_files_hold_no_exporter_debris(family, tmp_path, exports):
    """No stack traces (the exporting machine's paths) in node metadata, no shape annotations, no dead weights."""
    _, path, spec = exports(family)
    recipe = choose_recipe(onnx.load(str(path)), "auto")
    int8 = quantize_onnx(path, tmp_path / "int8.onnx", recipe=recipe, calibration=[random_inputs(spec, 8)])
    for file in (path, int8):
        model = onnx.load(str(file))
        assert not any(node.metadata_props or node.doc_string for node in model.graph.node)
        assert not model.graph.value_info and str(ROOT) not in file.read_bytes().decode("latin-1")
        read = {name for node in model.graph.node for name in node.input}
        assert all(t.name in read for t in model.graph.initializer)
        assert {o.domain for o in model.opset_import} <= {"", "ai.onnx", *(n.domain for n in model.graph.node)}
    sizes = export.size_breakdown(int8)
    assert sizes["file"] == int8.stat().st_size and 0 < sizes["graph"] < sizes["file"] and sizes["int8"] > 0


def test_metadata_round_trip(tmp_path, exports):
    _, path, spec = exports("transformer")
    meta = export.read_metadata(path)
    assert meta["family"] == "transformer" and meta["kind"] == "text" and meta["task"] == "classification"
    assert meta["class_names"] == ["neg", "pos"] and meta["vocab"] == list(VOCAB)
    assert meta["input_shape"] == [9] and meta["source_run_id"] == "abc123" and meta["dlforge_version"]
    assert meta == export.read_metadata(export.open_session(path))


def test_recurrent_export_has_dynamic_sequence_axis(tmp_path, exports):
    net, path, spec = exports("rnn")
    assert export.read_metadata(path)["dynamic_axes"] == ["batch", "sequence"]
    shorter = random_inputs(spec, 3)[:, :6]
    assert export.check_parity(net, export.open_session(path), [shorter]).passed


def test_static_and_dynamic_on_request_and_per_channel(tmp_path, exports):
    net, path, spec = exports("mlp")
    model = onnx.load(str(path))
    assert choose_recipe(model, "static") == "static" and choose_recipe(model, "none") == "none"
    calib = [random_inputs(spec, 8)]
    for recipe in ("static", "dynamic"):
        q = quantize_onnx(path, tmp_path / f"{recipe}.onnx", recipe=recipe, per_channel=True, calibration=calib)
        assert export.run_session(export.open_session(q), calib[0]).shape == (8, 3)


def test_parity_failure_is_reported(tmp_path, exports):
    net, path, spec = exports("mlp")
    net = copy.deepcopy(net)
    with torch.no_grad():
        net.head.bias.add_(0.1)  # the torch net now differs from the exported graph
    assert not export.check_parity(net, export.open_session(path), [random_inputs(spec, 4)]).passed


def _model_with_external(location: str) -> onnx.ModelProto:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value=location)
    weight.external_data.add(key="length", value="8")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin", "link.bin"])
def test_external_data_escaping_its_folder_is_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(np.array([5.0, 6.0], "f4").tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "link.bin").symlink_to(tmp_path / "secret.bin")  # a symlink out counts as escaping
    path = folder / "m.onnx"
    path.write_bytes(_model_with_external(location).SerializeToString())
    with pytest.raises(InputError, match="outside its folder"):
        export.refuse_escaping_external_data(path)
    with pytest.raises(InputError, match="outside its folder"):
        export.open_session(path)


def test_external_data_inside_its_folder_loads(tmp_path):
    (tmp_path / "w.bin").write_bytes(np.array([1.0, 2.0], "f4").tobytes())
    path = tmp_path / "m.onnx"
    path.write_bytes(_model_with_external("w.bin").SerializeToString())
    out = export.open_session(path).run(None, {"x": np.zeros(2, "f4")})[0]
    assert out.tolist() == [1.0, 2.0]


def test_corrupt_onnx_is_input_error(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(InputError, match="not a valid ONNX"):
        export.check_onnx(path)


# ---------------------------------------------------------------- predict


PREDICT_WITHOUT_TORCH = """
import sys
from pipelines.cli import main
code = main(sys.argv[1:])
assert "torch" not in sys.modules, "predict imported torch"
sys.exit(code)
"""


def _predict(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", PREDICT_WITHOUT_TORCH, "predict", *args], capture_output=True, text=True, env=env
    )


def test_predict_csv_matches_pytorch_without_importing_torch(tmp_path, exports):
    import pandas as pd

    net, path, spec = exports("mlp")
    x = random_inputs(spec, 20)
    pd.DataFrame(x, columns=[f"f{i}" for i in range(12)]).to_csv(tmp_path / "in.csv", index=False)
    done = _predict(str(path), str(tmp_path / "in.csv"), "--output", str(tmp_path / "p.csv"))
    assert done.returncode == 0, done.stderr
    preds = pd.read_csv(tmp_path / "p.csv")
    expected = np.array(spec.class_names)[export.run_torch(net, x).argmax(axis=1)]
    assert (preds["prediction"].to_numpy() == expected).all()
    assert np.allclose(preds[["prob_a", "prob_b", "prob_c"]].sum(axis=1), 1.0, atol=1e-5)


def test_predict_text_csv_uses_the_vocabulary(tmp_path, exports):
    import pandas as pd

    net, path, spec = exports("transformer")
    pd.DataFrame({"text": ["w1 w2 w3", "w4 unknownword", ""]}).to_csv(tmp_path / "t.csv", index=False)
    done = _predict(str(path), str(tmp_path / "t.csv"), "--output", str(tmp_path / "p.csv"))
    assert done.returncode == 0, done.stderr
    ids = np.zeros((3, 9), np.int64)
    ids[0, :3], ids[1, :2] = [3, 4, 5], [6, 1]
    expected = np.array(["neg", "pos"])[export.run_torch(net, ids).argmax(axis=1)]
    assert (pd.read_csv(tmp_path / "p.csv")["prediction"].to_numpy() == expected).all()


def test_predict_bad_input_is_one_line_exit_2(tmp_path, cli, exports):
    import pandas as pd

    _, path, _ = exports("mlp")
    pd.DataFrame(np.zeros((2, 5))).to_csv(tmp_path / "few.csv", index=False)
    code, _, err = cli("predict", str(path), str(tmp_path / "few.csv"))
    assert code == 2 and "12 feature columns" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "bad.onnx").write_bytes(b"nope")
    code, _, err = cli("predict", str(tmp_path / "bad.onnx"), str(tmp_path / "few.csv"))
    assert code == 2 and "not a valid ONNX" in err
