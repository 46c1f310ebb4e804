"""Tiny train → compress end to end: digits CNN (static QDQ) and breast-cancer MLP (dynamic INT8)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SHORT = ["compress.epochs=1", "compress.latency_repeats=3", "compress.calibration_batches=2"]
LENIENT = ["compress.max_student_drop=100", "compress.max_int8_drop=100"]  # 1-epoch students: gates tested in unit


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("source", "family", "recipe"),
    [("builtin:digits", "cnn", "static"), ("builtin:breast_cancer", "mlp", "dynamic")],
)
def test_train_then_compress(cli, tiny, tmp_path, source, family, recipe):
    data = [f"data.source={source}", f"model.family={family}"]
    code, _, err = cli("train", *tiny, *data)
    assert code == 0, err
    teacher = tmp_path / "out" / "checkpoints" / "best.ckpt"
    out = tmp_path / "compressed"
    code, stdout, err = cli("compress", *tiny, *data, *SHORT, *LENIENT, f"output_dir={out}", "--teacher", str(teacher))
    assert code == 0, err
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
        assert Path(summary["paths"][key]).is_file()
