"""Distillation loss and module, student shrinking, gates, teacher resolution and the compress CLI's exits."""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from dl_lightning.distill import DistillModule, distillation_loss
from dl_lightning.errors import InputError
from dl_lightning.registry import build_model
from pipelines.compression import measure, publish, stage, students, tables
from pipelines.compression.gates import choose_champion, metric_gate, preference
from pipelines.compression.quantization import quantize_onnx
from pipelines.compression.results import CompressResult, Gate, Row, shippable
from pipelines.compression.teacher import Teacher, check_compatible, load_teacher, resolve_teacher
from tests.fixtures import tiny_spec

ROOT = Path(__file__).resolve().parents[2]
SPEC = tiny_spec("tabular", input_shape=(6,), standardized=True)


def test_alpha_one_is_the_task_loss():
    s, t, y = torch.randn(8, 3), torch.randn(8, 3), torch.randint(0, 3, (8,))
    loss = distillation_loss(s, t, y, task="classification", alpha=1.0, temperature=4.0)
    assert torch.allclose(loss, F.cross_entropy(s, y))


def test_soft_term_is_t_squared_kl_of_teacher_to_student():
    s, t, y = torch.randn(8, 3), torch.randn(8, 3), torch.randint(0, 3, (8,))
    temp = 3.0
    p_t, p_s = (t / temp).softmax(1), (s / temp).softmax(1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    loss = distillation_loss(s, t, y, task="classification", alpha=0.0, temperature=temp)
    assert torch.allclose(loss, temp**2 * kl, atol=1e-6)
    mixed = distillation_loss(s, t, y, task="classification", alpha=0.3, temperature=temp)
    assert torch.allclose(mixed, 0.3 * F.cross_entropy(s, y) + 0.7 * temp**2 * kl, atol=1e-6)
    assert distillation_loss(t, t, y, task="classification", alpha=0.0, temperature=temp).abs() < 1e-6


def test_regression_distills_with_mse_to_teacher():
    s, t, y = torch.randn(8, 1), torch.randn(8, 1), torch.randn(8)
    loss = distillation_loss(s, t, y, task="regression", alpha=0.25, temperature=9.0)
    expected = 0.25 * F.mse_loss(s.squeeze(1), y) + 0.75 * F.mse_loss(s.squeeze(1), t.squeeze(1))
    assert torch.allclose(loss, expected)


def test_distill_fit_trains_student_and_leaves_teacher_untouched(tmp_path):
    torch.manual_seed(0)
    teacher = build_model("mlp", SPEC, {"hidden": [16], "dropout": 0.1}, {})
    before = copy.deepcopy(teacher.state_dict())
    student = build_model("mlp", SPEC, {"hidden": [4], "dropout": 0.0}, {"lr": 1e-2})
    start = copy.deepcopy(student.state_dict())
    module = DistillModule(student, teacher, "classification", alpha=0.5, temperature=2.0)
    data = TensorDataset(torch.randn(64, 6), torch.randint(0, 3, (64,)))
    trainer = L.Trainer(
        max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(module, DataLoader(data, batch_size=16), DataLoader(data, batch_size=32))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert "val/acc" in trainer.callback_metrics  # validation is the student's own, same metric names
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(start[k], v) for k, v in student.state_dict().items())
    assert not any(k.startswith("teacher") for k in module.state_dict())  # checkpoints hold the student only


class _ValLoss(L.Callback):
    def __init__(self) -> None:
        self.seen: list[float] = []

    def on_validation_end(self, trainer, pl_module) -> None:  # where the checkpoint callback reads it
        self.seen.append(float(trainer.callback_metrics["val/loss"]))


def test_distilled_students_validation_is_fresh_every_epoch(tmp_path):
    """The student hands its metric objects to Lightning once per epoch, in hooks only we receive: forwarded, or
    val/acc froze at epoch 1 and the checkpoint callback kept the first epoch's weights as the best."""
    torch.manual_seed(0)
    teacher = build_model("mlp", SPEC, {"hidden": [16]}, {})
    student = build_model("mlp", SPEC, {"hidden": [8], "dropout": 0.0}, {"lr": 5e-2})
    module = DistillModule(student, teacher, "classification", alpha=0.5, temperature=2.0)
    data = TensorDataset(torch.randn(64, 6), torch.randint(0, 3, (64,)))
    seen = _ValLoss()
    trainer = L.Trainer(
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        callbacks=[seen],
        num_sanity_val_steps=0,
    )
    trainer.fit(module, DataLoader(data, batch_size=16), DataLoader(data, batch_size=64))
    assert len(seen.seen) == len(set(seen.seen)) == 3, seen.seen  # the student learns: its val loss moves


def test_shrink_scales_widths_and_cuts_depth():
    from dl_lightning.registry import record_for

    mlp = students.shrink({"hidden": [256, 128, 64], "dropout": 0.1, "batch_norm": True}, 0.5, 2, record_for("mlp"))
    assert mlp == {"hidden": [128, 64], "dropout": 0.1, "batch_norm": True}
    tr = students.shrink(
        {"d_model": 64, "nhead": 4, "num_layers": 4, "dim_feedforward": 128}, 0.3, 1, record_for("transformer")
    )
    assert tr["d_model"] % 4 == 0 and tr["d_model"] == 20 and tr["num_layers"] == 1 and tr["dim_feedforward"] == 38
    rnn = students.shrink(
        {"cell": "lstm", "hidden_size": 8, "num_layers": 2, "bidirectional": False}, 0.01, 0, record_for("rnn")
    )
    assert rnn["hidden_size"] == 1 and rnn["num_layers"] == 2 and rnn["bidirectional"] is False


def test_a_transformer_student_keeps_one_layer_unless_told_and_other_families_their_depth():
    from pipelines.config import load_config

    arch = {"d_model": 64, "nhead": 4, "num_layers": 2, "dim_feedforward": 128}
    teacher = Teacher(None, "t.ckpt", "transformer", SPEC, arch, None)
    assert students.student_arch(load_config(None, []), teacher)[1]["num_layers"] == 1
    two = load_config(None, ["compress.student.depth=2"])
    assert students.student_arch(two, teacher)[1]["num_layers"] == 2
    cnn = Teacher(None, "t.ckpt", "cnn", SPEC, {"channels": [32, 64], "hidden": 128}, None)
    assert students.student_arch(load_config(None, []), cnn)[1]["channels"] == [16, 32]


def test_student_arch_same_family_starts_from_the_teacher(tmp_path):
    from pipelines.config import load_config

    teacher = Teacher(None, "t.ckpt", "cnn", SPEC, {"channels": [32, 64], "hidden": 128, "dropout": 0.1}, None)
    same = load_config(None, ["compress.student.width=0.5"])
    assert students.student_arch(same, teacher) == ("cnn", {"channels": [16, 32], "hidden": 64, "dropout": 0.1})
    other = load_config(None, ["compress.student.family=mlp", "model.mlp.hidden=[40]", "compress.student.width=1"])
    family, arch = students.student_arch(other, teacher)
    assert family == "mlp" and arch["hidden"] == [40]


@pytest.mark.parametrize(
    ("task", "ref", "value", "limit", "passed"),
    [
        ("classification", 0.95, 0.945, 1.0, True),  # 0.5 point
        ("classification", 0.95, 0.935, 1.0, False),  # 1.5 points
        ("classification", 0.90, 0.95, 0.0, True),  # better is never a drop
        ("regression", 100.0, 101.0, 1.0, True),  # +1 % mse
        ("regression", 100.0, 103.0, 2.0, False),
    ],
)
def test_metric_gate(task, ref, value, limit, passed):
    assert metric_gate("g", ref, value, task, limit).passed is passed


def test_gate_without_metric_is_skipped():
    gate = metric_gate("gan", None, None, None, 1.0)
    assert gate.passed and "skipped" in gate.detail


def test_teacher_references_that_cannot_resolve(tmp_path):
    with pytest.raises(InputError, match="not a checkpoint file"):
        resolve_teacher(str(tmp_path / "missing.ckpt"))
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps(type("X", (), {"__reduce__": lambda self: (print, ("pwned",))})()))
    with pytest.raises(InputError):
        load_teacher(str(evil))


def test_data_must_match_the_teacher():
    other = tiny_spec("tabular", input_shape=(7,))
    with pytest.raises(InputError, match="input_shape"):
        check_compatible(SPEC, other)


def test_compress_needs_a_teacher(cli, tiny):
    code, _, err = cli("compress", *tiny)
    assert code == 2 and "--teacher" in err


def test_failed_gate_exits_1_and_says_why(cli, tiny, monkeypatch, tmp_path):
    row = Row(
        "teacher fp32 (PyTorch)", "pytorch", 10, 40, 0.9, dict.fromkeys(("b1_p50", "b1_p95", "b64_p50", "b64_p95"), 1.0)
    )
    gates = [Gate("teacher INT8 drop", False, "drop +3.00 points (limit 1)")]
    result = CompressResult(str(tmp_path), "test/acc", [row], gates, {}, "r.md", "r.json", None)
    monkeypatch.setattr(stage, "compress", lambda cfg, teacher, **_: result)
    code, _, err = cli("compress", *tiny, "--teacher", "x.ckpt")
    assert code == 1 and "teacher INT8 drop" in err and "nothing registered" in err
    import json

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["passed"] is False and summary["gates"][0]["name"] == "teacher INT8 drop"


# ---------------------------------------------------------------- tracking: teacher refs, logging, registry

LATENCY = dict.fromkeys(("b1_p50", "b1_p95", "b64_p50", "b64_p95"), 1.0)
NAMED = tiny_spec("tabular", input_shape=(6,), standardized=True, class_names=("a", "b", "c"))
PREDICT_WITHOUT_TORCH = """
import sys
from pipelines.cli import main
code = main(sys.argv[1:])
assert "torch" not in sys.modules, "predict imported torch"
sys.exit(code)
"""


def _tracked_cfg(store, tmp_path, *overrides):
    from pipelines.config import load_config

    return load_config(None, [f"tracking.uri={store}", f"output_dir={tmp_path / 'out'}", *overrides])


def _tiny_onnx(path, seed=0):
    """A two-node ONNX classifier with dlforge metadata: logging and registering need no real export."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from pipelines import export

    rng = np.random.default_rng(seed)
    weights = [numpy_helper.from_array(rng.standard_normal(s).astype("f4"), n) for n, s in (("w", (6, 3)), ("b", (3,)))]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    export.set_metadata(model, export.model_metadata(NAMED.to_dict(), family="mlp", role="teacher", source_run_id=None))
    onnx.save(model, str(path))
    return path


def _result(tmp_path, *, passed: bool):
    """A compress result over real (tiny) fp32 and INT8 files, its report written, and the probe it was measured on."""
    from pipelines import export

    folder = tmp_path / "onnx"
    folder.mkdir()
    fp32 = _tiny_onnx(folder / "teacher.onnx")
    int8 = quantize_onnx(fp32, folder / "teacher-int8.onnx", recipe="dynamic")
    x = np.random.default_rng(1).standard_normal((16, 6)).astype("f4")
    y = export.run_session(export.open_session(fp32), x).argmax(1)
    probe = measure.Probe(x, y, [x], [x], "classification")
    rows = [
        Row("teacher fp32 (PyTorch)", "pytorch", 21, 84, 1.0, LATENCY, key="teacher_fp32_pytorch"),
        Row("teacher fp32 (ONNX)", "onnxruntime", 21, 90, 1.0, LATENCY, 0.0, str(fp32), "teacher_fp32_onnx"),
        Row("teacher INT8 (dynamic)", "onnxruntime", 21, 80, 0.99, LATENCY, None, str(int8), "teacher_int8_onnx"),
    ]
    gates = [
        Gate("teacher parity", True, "ok", ("teacher", "teacher-int8")),
        Gate("teacher INT8 drop", passed, "drop +1.00 points", ("teacher-int8",)),
        Gate("teacher fp32 sanity", passed, "made up for the test: fails with the INT8 drop", ("teacher",)),
    ]
    md, js = tables.write_report(
        tmp_path, {"metric": "test/acc", "teacher": {"checkpoint": "t.ckpt", "family": "mlp"}}, rows, gates
    )
    files = {"teacher": str(fp32), "teacher-int8": str(int8)}
    champion = "teacher-int8" if passed else None
    result = CompressResult(
        str(tmp_path), "test/acc", rows, gates, files, str(md), str(js), "f" * 32, champion=champion
    )
    teacher = Teacher(None, "t.ckpt", "mlp", NAMED, {}, "f" * 32)
    return result, teacher, probe


def test_passing_models_are_logged_and_the_shipped_one_registered(store, tmp_path):
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    from pipelines import export, tracking

    cfg = _tracked_cfg(store, tmp_path, "model.family=cnn")  # the teacher's family names the model, not the config's
    result, teacher, probe = _result(tmp_path, passed=True)
    with tracking.job_run(cfg, kind="pipeline") as parent, publish.tracked(cfg, teacher, parent) as run_id:
        result = publish.log_result(cfg, run_id, teacher, probe, result)
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["dlforge.teacher_run_id"] == "f" * 32
    assert run.data.tags["dlforge.family"] == "mlp" and run.data.tags["dlforge.gates"] == "passed"
    metrics = run.data.metrics
    assert metrics["compress/teacher_int8_onnx/acc"] == 0.99 and metrics["compress/teacher_fp32_pytorch/params"] == 21
    assert metrics["compress/gate/teacher_int8_drop"] == 1.0 and metrics["compress/passed"] == 1.0
    assert {a.path for a in client.list_artifacts(run_id, "compress")} == {
        "compress/compress_report.md",
        "compress/compress_report.json",
    }

    versions = result.registered.pop("versions")
    assert result.registered.pop("models") == {k: f"models:/dlforge-mlp-onnx/{v}" for k, v in versions.items()}
    assert result.registered == {
        "name": "dlforge-mlp-onnx",
        "version": versions["teacher-int8"],
        "alias": "candidate",
        "uri": "models:/dlforge-mlp-onnx@candidate",
        "model": "teacher-int8",
    }
    aliases = client.get_registered_model("dlforge-mlp-onnx").aliases  # every shipped file, under its own alias
    assert {alias: str(aliases[alias]) for alias in ("fp32", "int8")} == {
        "fp32": versions["teacher"],
        "int8": versions["teacher-int8"],
    }
    assert aliases["candidate"] == aliases["int8"]
    version = client.get_model_version_by_alias("dlforge-mlp-onnx", "candidate")
    assert version.tags["dlforge.teacher_run_id"] == "f" * 32 and version.tags["dlforge.compress_run_id"] == run_id
    assert version.tags["dlforge.model"] == "teacher-int8" and version.tags["dlforge.quantization"] == "dynamic"
    assert version.tags["metric.test/acc"] == "0.99" and version.tags["dlforge.gates"] == "passed"

    assert {a.path for a in client.list_artifacts(run_id, "onnx")} == {"onnx/teacher.onnx", "onnx/teacher-int8.onnx"}
    assert "the teacher quantized to INT8" in version.description and "dynamic" in version.description
    assert f"#/models/dlforge-mlp-onnx/versions/{versions['teacher-int8']}" in run.data.tags["mlflow.note.content"]

    # the round trip: the registry alias serves the INT8 file's labels and probabilities, and a plain .onnx
    x = probe.test_x[:5]
    expected = export.run_session(export.open_session(result.files["teacher-int8"]), x)
    served = mlflow.pyfunc.load_model("models:/dlforge-mlp-onnx@candidate").predict(pd.DataFrame(x))
    assert list(served["prediction"]) == list(np.array(["a", "b", "c"])[expected.argmax(1)])
    probs = np.exp(expected) / np.exp(expected).sum(1, keepdims=True)
    np.testing.assert_allclose(served[["prob_a", "prob_b", "prob_c"]].to_numpy(), probs, rtol=1e-5, atol=1e-6)
    local = tracking.download_onnx("models:/dlforge-mlp-onnx@candidate", cfg, dest=tmp_path / "dl")
    assert export.read_metadata(local)["quantization"] == "dynamic"
    np.testing.assert_allclose(export.run_session(export.open_session(local), x), expected, rtol=1e-6, atol=1e-6)

    # dlforge predict on the registry URI: downloads through tracking, never imports torch
    pd.DataFrame(x, columns=[f"f{i}" for i in range(6)]).to_csv(tmp_path / "in.csv", index=False)
    done = subprocess.run(
        [sys.executable, "-c", PREDICT_WITHOUT_TORCH, "predict", "models:/dlforge-mlp-onnx@candidate"]
        + [str(tmp_path / "in.csv"), f"tracking.uri={store}", "--output", str(tmp_path / "p.csv")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Downloading artifacts" not in done.stderr + done.stdout  # MLflow's download bar stays off
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "p.csv", dtype={"id": str}), served, check_dtype=False)


def test_a_failed_gate_registers_nothing(store, tmp_path):
    from mlflow import MlflowClient

    from pipelines import tracking

    cfg = _tracked_cfg(store, tmp_path)
    result, teacher, probe = _result(tmp_path, passed=False)
    with tracking.job_run(cfg, kind="compress") as run_id:
        result = publish.log_result(cfg, run_id, teacher, probe, result)
    client = MlflowClient(tracking_uri=store)
    assert result.registered is None and client.search_registered_models() == []
    assert not client.search_logged_models([client.get_run(run_id).info.experiment_id])  # no ONNX flavor either
    assert {a.path for a in client.list_artifacts(run_id, "onnx")} == {"onnx/teacher.onnx", "onnx/teacher-int8.onnx"}
    run = client.get_run(run_id)
    assert run.data.tags["dlforge.gates"] == "failed" and run.data.metrics["compress/passed"] == 0.0


def test_registered_key_follows_the_config_and_the_family(tmp_path):
    from pipelines.config import load_config

    teacher, gan = (Teacher(None, "t.ckpt", f, SPEC, {}, None) for f in ("mlp", "gan"))
    cfg = lambda *o: load_config(None, list(o))  # noqa: E731
    assert publish.registered_key(cfg(), teacher) == "teacher-int8"
    assert publish.registered_key(cfg(), gan) == "generator-int8"
    assert publish.registered_key(cfg("compress.register=student-int8"), teacher) == "student-int8"
    assert publish.registered_key(cfg("compress.quantization=none"), teacher) == "teacher"
    assert publish.registered_key(cfg("compress.register=none"), teacher) is None
    assert publish.registered_key(cfg("tracking.enabled=false"), teacher) is None
    with pytest.raises(InputError, match="compress.epochs=0"):
        publish.registered_key(cfg("compress.register=student", "compress.epochs=0"), teacher)
    with pytest.raises(InputError, match="GAN"):
        publish.registered_key(cfg("compress.register=student-int8"), gan)


def test_metric_names_do_not_depend_on_the_recipe():
    def metrics(recipe):
        row = Row(f"teacher INT8 ({recipe})", "onnxruntime", 1, 2, 0.5, LATENCY, key="teacher_int8_onnx")
        return publish.report_metrics(CompressResult("o", "test/acc", [row], [], {}, "m", "j", None))

    assert metrics("static").keys() == metrics("dynamic").keys()
    assert "compress/teacher_int8_onnx/acc" in metrics("static")
    assert "compress/teacher_int8_onnx/latency_b1_p50_ms" in metrics("static")


def test_teacher_run_ids_and_registry_refs_resolve_in_the_configured_store(store, tmp_path, cli, tiny, capsys):
    from pipelines import tracking

    cfg = _tracked_cfg(store, tmp_path)
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"weights")
    with tracking.job_run(cfg, kind="train") as run_id:
        tracking.log_artifact(run_id, ckpt, "checkpoints")
    path, source = resolve_teacher(run_id, cfg)
    assert source == run_id and Path(path).read_bytes() == b"weights"
    assert Path(path).is_relative_to(tmp_path / "out" / "teacher")  # kept with the outputs, not in /tmp
    with pytest.raises(InputError, match="^teacher models:/nope@candidate is not a registered model"):
        resolve_teacher("models:/nope@candidate", cfg)
    capsys.readouterr()  # MLflow's download progress bar above
    for bad in ("models:/nope@candidate", "0" * 32):
        code, _, err = cli("compress", *tiny, f"tracking.uri={store}", "--teacher", bad)
        assert code == 2 and len(err.strip().splitlines()) == 1 and bad in err, err


# ---------------------------------------------------------------- gates guard what they gate; the champion

FILES = {k: f"{k}.onnx" for k in ("teacher", "teacher-int8", "student", "student-int8")}


def _gates(**failed: bool) -> list[Gate]:
    """The gates a compress run makes, each guarding its own artifacts; ``failed`` names those that fail."""
    guards = {
        "teacher_parity": ("teacher", "teacher-int8"),
        "teacher_int8_drop": ("teacher-int8",),
        "student_parity": ("student", "student-int8"),
        "student_int8_drop": ("student-int8",),
        "student_drop": ("student", "student-int8"),
    }
    return [Gate(name, not failed.get(name, False), "d", g) for name, g in guards.items()]


def _order(*overrides, family="mlp"):
    from pipelines.config import load_config

    return preference(load_config(None, list(overrides)), Teacher(None, "t", family, SPEC, {}, None))


def test_preference_starts_at_compress_register_then_its_other_precision_then_the_other_model():
    assert _order() == ["teacher-int8", "teacher", "student-int8", "student"]
    assert _order("compress.register=student-int8") == ["student-int8", "student", "teacher-int8", "teacher"]
    assert _order("compress.register=student") == ["student", "student-int8", "teacher", "teacher-int8"]
    assert _order("compress.register=none") == _order()  # none registers no candidate; the champion is still chosen
    assert _order(family="gan")[:2] == ["generator-int8", "generator"]


@pytest.mark.parametrize(
    ("register", "failed", "champion", "shipped"),
    [
        ("teacher-int8", {}, "teacher-int8", list(FILES)),
        # a failing student does not block a passing teacher INT8
        ("teacher-int8", {"student_drop": True}, "teacher-int8", ["teacher", "teacher-int8"]),
        ("teacher-int8", {"teacher_int8_drop": True}, "teacher", ["teacher", "student", "student-int8"]),
        ("student-int8", {"student_drop": True}, "teacher-int8", ["teacher", "teacher-int8"]),
        ("student-int8", {"student_int8_drop": True}, "student", ["teacher", "teacher-int8", "student"]),
        ("teacher-int8", {"teacher_parity": True}, "student-int8", ["student", "student-int8"]),
        ("teacher-int8", {"teacher_parity": True, "student_parity": True}, None, []),  # all failing
    ],
)
def test_champion_is_the_preferred_artifact_whose_own_gates_passed(register, failed, champion, shipped):
    gates = _gates(**failed)
    assert shippable(FILES, gates) == shipped
    assert choose_champion(_order(f"compress.register={register}"), FILES, gates) == champion


def test_a_gate_without_guards_holds_back_every_artifact():
    gates = [Gate("global", False, "d")]
    assert shippable(FILES, gates) == [] and choose_champion(_order(), FILES, gates) is None


def _fake_compress(tmp_path, monkeypatch, gates, champion):
    row = Row("teacher fp32 (PyTorch)", "pytorch", 10, 40, 0.9, LATENCY)
    files = {k: str(tmp_path / v) for k, v in FILES.items()}
    result = CompressResult(str(tmp_path), "test/acc", [row], gates, files, "r.md", "r.json", None, champion=champion)
    monkeypatch.setattr(stage, "compress", lambda cfg, teacher, **_: result)


def test_compress_exits_0_with_a_champion_and_prints_every_failed_gate(cli, tiny, monkeypatch, tmp_path):
    import json

    _fake_compress(tmp_path, monkeypatch, _gates(student_drop=True, student_int8_drop=True), "teacher-int8")
    code, out, err = cli("compress", *tiny, "--teacher", "x.ckpt")
    assert code == 0, err
    assert "gate failed: student_drop" in err and "gate failed: student_int8_drop" in err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["champion"] == "teacher-int8" and summary["passed"] is False
    assert summary["paths"]["onnx_teacher_int8"].endswith("teacher-int8.onnx")
    code, _, err = cli("compress", *tiny, "--teacher", "x.ckpt", "--strict")
    assert code == 1 and "student_drop" in err  # --strict: any failed gate fails the command


def test_compress_exits_1_when_no_artifact_passed(cli, tiny, monkeypatch, tmp_path):
    _fake_compress(tmp_path, monkeypatch, _gates(teacher_parity=True, student_parity=True), None)
    code, _, err = cli("compress", *tiny, "--teacher", "x.ckpt")
    assert code == 1 and "teacher_parity" in err and "nothing registered" in err


def test_the_report_names_the_champion_and_what_was_held_back(tmp_path):
    gates = _gates(student_drop=True)
    report = {"metric": "test/acc", "teacher": {"checkpoint": "t", "family": "mlp"}, "files": FILES}
    report |= {"champion": "teacher-int8", "shipped": shippable(FILES, gates)}
    md, js = tables.write_report(tmp_path, report, [], gates)
    text = md.read_text()
    assert "champion: teacher-int8; shipped: teacher, teacher-int8; failed: student_drop" in text
    assert "not shipped: student, student-int8" in text and "(guards student, student-int8)" in text


def test_a_failing_student_is_not_registered_while_the_teacher_is(store, tmp_path):
    """Real MLflow: the passing teacher files become versions (INT8 the candidate); the student stays an artifact."""
    from mlflow import MlflowClient

    from pipelines import tracking

    cfg = _tracked_cfg(store, tmp_path)
    result, teacher, probe = _result(tmp_path, passed=True)
    student = _tiny_onnx(tmp_path / "onnx" / "student.onnx", seed=3)
    gates = [*result.gates, Gate("student drop", False, "drop +5.00 points", ("student", "student-int8"))]
    rows = [*result.rows, Row("student fp32 (ONNX)", "onnxruntime", 21, 90, 0.9, LATENCY, 0.0, str(student))]
    files = result.files | {"student": str(student)}
    champion = choose_champion(preference(cfg, teacher), files, gates)
    result = dataclasses.replace(result, gates=gates, rows=rows, files=files, champion=champion)
    with tracking.job_run(cfg, kind="compress") as run_id:
        result = publish.log_result(cfg, run_id, teacher, probe, result)
    client = MlflowClient(tracking_uri=store)
    assert result.champion == "teacher-int8" and result.registered["model"] == "teacher-int8"
    assert set(result.registered["versions"]) == {"teacher", "teacher-int8"}
    # every file the stage made is in its run, shipped or not: the failing student too, for the reviewer to open
    logged = {a.path for a in client.list_artifacts(run_id, "onnx")}
    assert logged == {f"onnx/{Path(path).name}" for path in files.values()} and "onnx/student.onnx" in logged
    assert client.get_run(run_id).data.tags["dlforge.gates"] == "partial"


# ---------------------------------------------------------------- distillation that pays: budget, schedule, mixup


def test_student_budget_is_the_teachers_epochs_under_auto():
    from pipelines.config import load_config

    teacher = Teacher(None, "t", "mlp", SPEC, {"hidden": [8]}, None, epochs=25)
    assert students.student_epochs(load_config(None, []), teacher) == 25  # compress.epochs: auto is the default
    assert students.student_epochs(load_config(None, ["compress.epochs=3"]), teacher) == 3
    fit = students.student_fit_config(load_config(None, ["optim.scheduler=step"]), teacher, "mlp")
    assert fit.trainer.max_epochs == 25 and fit.optim.scheduler == "step" and fit.trainer.devices == 1
    cosine = students.student_fit_config(
        load_config(None, ["compress.schedule=cosine", "optim.scheduler=step"]), teacher, "mlp"
    )
    assert cosine.optim.scheduler == "cosine"


def test_the_default_student_has_at_most_a_quarter_of_the_parameters():
    from pipelines.config import load_config

    cfg = load_config(None, [])
    image, wide = tiny_spec("image", num_outputs=10), tiny_spec("tabular", input_shape=(300,))
    for family, spec in (("mlp", SPEC), ("mlp", wide), ("cnn", image)):
        arch = dataclasses.replace(cfg.model, family=family).arch()
        teacher = Teacher(build_model(family, spec, arch, {}), "t", family, spec, arch, None)
        _, small = students.sized_student_arch(cfg, teacher)
        ratio = measure.count_params(build_model(family, spec, small, {})) / measure.count_params(teacher.module)
        assert 0.15 < ratio <= 0.25, (family, spec.input_shape, ratio)  # narrowed only as far as needed


def test_mixed_inputs_are_convex_blends_of_the_batch():
    from dl_lightning.distill import mix_inputs

    x = torch.stack([torch.zeros(3, 4), torch.ones(3, 4)])  # (2, 3, 4)
    mixed = mix_inputs(x, 0.4)
    assert mixed.shape == x.shape and ((mixed >= 0) & (mixed <= 1)).all()
    assert torch.allclose(mixed, mixed[:, :1, :1].expand_as(mixed))  # one weight per example


def test_distill_with_mixup_trains_and_keeps_the_hard_term_on_real_examples(tmp_path):
    torch.manual_seed(0)
    teacher = build_model("mlp", SPEC, {"hidden": [16]}, {})
    student = build_model("mlp", SPEC, {"hidden": [4], "dropout": 0.0}, {"lr": 1e-2})
    module = DistillModule(student, teacher, "classification", alpha=0.1, temperature=2.0, mixup=0.2)
    data = TensorDataset(torch.randn(64, 6), torch.randint(0, 3, (64,)))
    trainer = L.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(module, DataLoader(data, batch_size=16), DataLoader(data, batch_size=32))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    with pytest.raises(ValueError, match="mixup"):
        DistillModule(student, teacher, "classification", alpha=0.1, temperature=2.0, mixup=-1.0)


def test_twin_without_teacher_trains_on_labels_and_mixed_labels(tmp_path):
    """DistillModule(teacher=None) is the from-scratch twin: same batches and mixed copies, labels for targets."""
    from dl_lightning.distill import mixed_label_loss

    out, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    whole = mixed_label_loss(out, y, torch.ones(4), torch.tensor([1, 2, 3, 0]), "classification")
    assert torch.allclose(whole, torch.nn.functional.cross_entropy(out, y))  # λ = 1: the example's own label
    torch.manual_seed(0)
    student = build_model("mlp", SPEC, {"hidden": [4], "dropout": 0.0}, {"lr": 1e-2})
    start = copy.deepcopy(student.state_dict())
    module = DistillModule(student, None, "classification", alpha=0.5, temperature=2.0, mixup=1.0)
    data = TensorDataset(torch.randn(64, 6), torch.randint(0, 3, (64,)))
    trainer = L.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(module, DataLoader(data, batch_size=16), DataLoader(data, batch_size=32))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert any(not torch.equal(start[k], v) for k, v in student.state_dict().items())


def test_ensemble_teacher_softmax_is_the_members_mean_softened_distribution():
    from dl_lightning.distill import EnsembleTeacher

    torch.manual_seed(0)
    a, b, x = torch.nn.Linear(3, 4), torch.nn.Linear(3, 4), torch.randn(5, 3)
    ensemble = EnsembleTeacher([a, b], "classification", temperature=3.0)
    mean = (torch.softmax(a(x) / 3.0, 1) + torch.softmax(b(x) / 3.0, 1)) / 2  # (5, 4)
    assert torch.allclose(torch.softmax(ensemble(x) / 3.0, 1), mean, atol=1e-6)
    assert not list(ensemble.parameters())  # members are frozen outside: never trained, never saved


def test_compress_reads_the_data_as_the_teachers_family_does(cli, tiny, tmp_path):
    # an mlp teacher of a table; compress is then called without model.family (default cnn, which would read the
    # same table as signals) and must still find the data compatible with its teacher
    table = ["data.source=builtin:wine", "model.family=mlp"]
    code, _, err = cli("train", *table, *tiny)
    assert code == 0, err
    teacher = tmp_path / "out" / "checkpoints" / "last.ckpt"
    out = f"output_dir={tmp_path / 'compressed'}"
    code, printed, err = cli(
        "compress", "data.source=builtin:wine", *tiny, out, "compress.epochs=0", "--teacher", str(teacher)
    )
    assert "the teacher was trained on data" not in err
    assert "signals" not in printed + err  # the early data check reads the table as the mlp teacher does
    assert (tmp_path / "compressed" / "onnx").is_dir(), err


def test_an_interrupted_or_finished_student_fit_is_continued_not_trained_again(cli, tiny, tmp_path, capsys):
    from pipelines.config import load_config
    from pipelines.train import load_data

    table = ["data.source=builtin:wine", "model.family=mlp"]
    assert cli("train", *table, *tiny)[0] == 0
    teacher = load_teacher(str(tmp_path / "out" / "checkpoints" / "last.ckpt"))
    cfg = load_config(
        None, [*table, *tiny, f"output_dir={tmp_path / 'c'}", "compress.epochs=2", "compress.scratch=false"]
    )
    splits = load_data(cfg)
    family, arch = students.sized_student_arch(cfg, teacher)

    first, _ = students.train_students(cfg, teacher, splits, family, arch)
    last = tmp_path / "c" / "student" / "checkpoints" / "last.ckpt"
    written = last.stat().st_mtime_ns
    capsys.readouterr()
    again, _ = students.train_students(cfg, teacher, splits, family, arch)  # same inputs: reloaded, not retrained
    assert "continuing the interrupted student fit" in capsys.readouterr().out
    assert last.stat().st_mtime_ns == written
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    other = cfg.with_overrides({"compress.temperature": 3.0})  # other inputs: the old fit is cleared, not continued
    students.train_students(other, teacher, splits, family, arch)
    assert "continuing" not in capsys.readouterr().out
    assert last.stat().st_mtime_ns != written
