"""Tiny train → compress end to end: digits CNN (static QDQ) from a checkpoint file, and breast-cancer MLP (dynamic
INT8) from the registry, then predict through the ONNX version it registered. Both check the same compress outputs
(``assert_compressed``); the registry one is the dynamic case, so no second MLP is trained only to be compressed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SHORT = ["compress.epochs=1", "compress.latency_repeats=3", "compress.calibration_batches=2"]
DYNAMIC = "compress.quantization=dynamic"  # a fixed recipe makes every artifact, whatever the autotuner would time
LENIENT = ["compress.max_student_drop=100", "compress.max_int8_drop=100"]  # 1-epoch students: gates tested in unit


def assert_compressed(out: Path, stdout: str, recipe: str) -> dict:
    """What a compress job with ``recipe`` leaves in ``out`` and prints: the report's seven rows, teacher parity,
    a smaller student, the gates, and the four ONNX files; returns its summary."""
    assert "teacher INT8" in stdout
    report = json.loads((out / "compress_report.json").read_text())
    names = [r["model"] for r in report["rows"]]
    assert names == [
        "teacher fp32 (PyTorch)",
        "teacher fp32 (ONNX)",
        f"teacher INT8 ({recipe})",
        "student fp32 (PyTorch)",
        "student fp32 (ONNX)",
        f"student INT8 ({recipe})",
        "student from scratch (PyTorch)",
    ]
    rows = {r["model"]: r for r in report["rows"]}
    assert rows["teacher fp32 (ONNX)"]["parity_max_abs_diff"] <= 1e-4
    assert rows["teacher fp32 (ONNX)"]["metric"] == pytest.approx(rows["teacher fp32 (PyTorch)"]["metric"], abs=0.01)
    assert rows["student fp32 (PyTorch)"]["params"] < rows["teacher fp32 (PyTorch)"]["params"]
    assert "## Gates" in (out / "compress_report.md").read_text()

    summary = json.loads((out / "summary.json").read_text())
    assert summary["command"] == "compress" and summary["passed"] is True
    assert {g["name"] for g in summary["gates"]} >= {"teacher parity", "teacher INT8 drop", "student drop"}
    for key in ("teacher", "teacher-int8", "student", "student-int8"):
        assert Path(summary["paths"][f"onnx_{key.replace('-', '_')}"]).is_file()
    return summary


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_train_then_compress_a_checkpoint_file_with_static_int8(cli, tiny, tmp_path, digits_cnn_checkpoint):
    data = ["data.source=builtin:digits", "model.family=cnn"]
    teacher, out = digits_cnn_checkpoint, tmp_path / "compressed"
    static = "compress.quantization=static"  # a fixed recipe (the autotuner has its own test)
    code, stdout, err = cli(
        "compress", *tiny, *data, *SHORT, *LENIENT, static, f"output_dir={out}", "--teacher", str(teacher)
    )
    assert code == 0, err
    assert_compressed(out, stdout, "static")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_registry_round_trip_train_compress_with_dynamic_int8_predict(cli, tiny, tmp_path, store):
    """train (registered) → compress --teacher models:/…@candidate (dynamic INT8) → ONNX version registered →
    predict through it."""
    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient

    from pipelines import export
    from tests.conftest import run_dlforge

    tracked = [o for o in tiny if not o.startswith("tracking.")] + [f"tracking.uri={store}"]
    data = ["data.source=builtin:breast_cancer", "model.family=mlp"]
    code, _, err = cli("train", *tracked, *data, "tracking.register=true")
    assert code == 0, err
    out = tmp_path / "compressed"
    teacher = "models:/dlforge-mlp@candidate"
    code, stdout, err = cli(
        "compress", *tracked, *data, *SHORT, *LENIENT, DYNAMIC, f"output_dir={out}", "--teacher", teacher
    )
    assert code == 0, err
    assert "models:/dlforge-mlp-onnx@candidate" in stdout
    summary = assert_compressed(out, stdout, "dynamic")

    client = MlflowClient(tracking_uri=store)
    teacher_run = client.get_model_version_by_alias("dlforge-mlp", "candidate").run_id
    assert summary["teacher_run_id"] == teacher_run and summary["registered"]["model"] == "teacher-int8"
    version = client.get_model_version_by_alias("dlforge-mlp-onnx", "candidate")
    assert version.tags["dlforge.teacher_run_id"] == teacher_run
    assert version.tags["dlforge.compress_run_id"] == summary["mlflow_run_id"] == version.run_id
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.metrics["compress/passed"] == 1.0 and "compress/student_int8_onnx/acc" in run.data.metrics
    logged = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    assert sorted(m.name for m in logged) == ["student", "student-int8", "teacher", "teacher-int8"]

    from sklearn.datasets import load_breast_cancer

    x = load_breast_cancer().data[:20].astype(np.float32)
    pd.DataFrame(x).to_csv(tmp_path / "in.csv", index=False)
    done = run_dlforge(
        "predict",
        "models:/dlforge-mlp-onnx@candidate",
        str(tmp_path / "in.csv"),
        f"tracking.uri={store}",
        "--output",
        str(tmp_path / "p.csv"),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    int8 = summary["paths"]["onnx_teacher_int8"]
    names = np.array(export.read_metadata(int8)["class_names"])
    expected = names[export.run_session(export.open_session(int8), x).argmax(1)]
    assert (pd.read_csv(tmp_path / "p.csv")["prediction"].astype(str).to_numpy() == expected.astype(str)).all()
