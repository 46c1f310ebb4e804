"""The pipeline's parent run is the front page: headline metrics, description, links and report images, read back
from a real sqlite store."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines import front_page, tracking
from pipelines.compression.results import CompressResult
from pipelines.config import Config, build_config
from pipelines.stage_results import PromoteResult, StageResults
from pipelines.train_stage import TrainStageResult


def _row(key: str, metric: float, size: int, latency: float) -> dict:
    lat = {"b1_p50": latency, "b1_p95": latency * 2, "b64_p50": 1.0, "b64_p95": 2.0}
    row = {"model": key, "key": key, "runtime": "onnxruntime", "params": 10, "size_bytes": size, "metric": metric}
    row["latency_ms"] = lat
    return row | {"parity_max_abs_diff": None}


def _stages(tmp_path: Path) -> StageResults:
    png = tmp_path / "train" / "review" / "confusion_matrix.png"
    png.parent.mkdir(parents=True)
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    rows = [
        _row("teacher_fp32_pytorch", 0.97, 400_000, 0.5),
        _row("teacher_fp32_onnx", 0.97, 380_000, 0.3),
        _row("teacher_int8_onnx", 0.965, 100_000, 0.2),
        _row("student_fp32_onnx", 0.95, 90_000, 0.1),
    ]
    gates = [
        {"name": "teacher INT8 drop", "passed": True, "detail": "0.5 points", "guards": ["teacher-int8"]},
        {"name": "student drop", "passed": False, "detail": "2 points", "guards": ["student"]},
    ]
    summary = {"metrics": {"test/acc": 0.97}, "config": {"output_dir": str(tmp_path / "train")}, "mlflow_run_id": "t1"}
    reports = {"output_dir": "c", "report_md": "c/report.md", "report_json": "c/report.json", "teacher_run_id": None}
    compress = {"metric": "test/acc", "rows": rows, "gates": gates, "champion": "teacher-int8", "run_id": "c1"}
    return StageResults(
        train=TrainStageResult.from_summary(summary),
        compress=CompressResult.from_dict(compress | reports | {"files": {}}),
        promote=PromoteResult("digits-cnn-onnx", "3", [], "teacher-int8"),
    )


@pytest.fixture
def cfg(store: str, tmp_path: Path) -> Config:
    return build_config({}, {"tracking.uri": store, "output_dir": str(tmp_path / "out"), "model.family": "cnn"})


def test_headline_metrics_have_stable_names(tmp_path):
    metrics = front_page.headline_metrics(_stages(tmp_path))
    assert metrics["teacher/acc"] == 0.97 and metrics["int8/acc"] == 0.965 and metrics["student/acc"] == 0.95
    assert metrics["champion/acc"] == 0.965  # the champion is the INT8 file
    assert metrics["champion/size_mb"] == pytest.approx(0.1) and metrics["champion/latency_b1_ms"] == 0.2
    assert metrics["gates/passed"] == 1 and metrics["gates/failed"] == 1


def test_parent_run_carries_the_headline(cfg, store, tmp_path):
    out = tmp_path / "run"
    stages = _stages(out)
    with tracking.job_run(cfg, kind="pipeline", name="pipeline cnn digits") as parent:
        front_page.publish(cfg, parent, stages, out)
    run = MlflowClient(tracking_uri=store).get_run(parent)
    assert run.data.metrics["champion/acc"] == 0.965 and run.data.metrics["gates/failed"] == 1
    tags = run.data.tags
    assert tags["dlforge.champion"] == "teacher-int8"
    assert tags["dlforge.champion_model"] == "models:/digits-cnn-onnx/3"
    assert tags["dlforge.gates_failed"] == "student drop"
    assert tags["dlforge.train_run_id"] == "t1" and tags["dlforge.compress_run_id"] == "c1"
    note = tags["mlflow.note.content"]
    assert "**Champion:** teacher-int8 (`models:/digits-cnn-onnx/3`)" in note
    assert "1/2 passed" in note and "✗ student drop" in note and "| int8 | 0.965 |" in note
    listed = MlflowClient(tracking_uri=store).list_artifacts(parent, "train/review")
    assert [a.path for a in listed] == ["train/review/confusion_matrix.png"]  # where report.md links it


def test_the_runs_table_link_opens_a_view_with_the_headline_columns(cfg, store, tmp_path):
    import json

    with tracking.job_run(cfg, kind="pipeline", name="pipeline cnn digits") as parent:
        plain = tracking.runs_table_url(cfg, parent)  # before the view exists: MLflow's own columns
        front_page.publish(cfg, parent, _stages(tmp_path / "run"), tmp_path / "run")
    client = MlflowClient(tracking_uri=store)
    experiment_id = client.get_run(parent).info.experiment_id
    assert plain == f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs"
    view = json.loads(client.get_experiment(experiment_id).tags["mlflow.sharedViewState.dlforge"])
    columns = view["selectedColumns"]
    assert columns[:2] == ["attributes.`Dataset`", "attributes.`Models`"]
    assert columns[2:5] == ["metrics.`champion/acc`", "metrics.`champion/size_mb`", "metrics.`champion/latency_b1_ms`"]
    assert "metrics.`gates/failed`" in columns and "tags.`dlforge.champion`" in columns
    assert "metrics.`int8/acc`" in columns and "metrics.`int8/size_mb`" not in columns  # few enough to fit
    assert tracking.has_runs_view(experiment_id)
    url = tracking.experiment_url("http://127.0.0.1:5000", experiment_id, view=True)
    assert url == f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?viewStateShareKey=dlforge"
    assert tracking.runs_table_url(cfg, parent) == url  # what dlforge run / train / tune print as runs_table


def test_nothing_is_published_with_tracking_off(tmp_path):
    front_page.publish(Config(), None, _stages(tmp_path), tmp_path)  # no run, no store: no error


def test_no_champion_says_so(tmp_path):
    stages = _stages(tmp_path)
    compress = dataclasses.replace(stages.compress, champion=None)
    stages = dataclasses.replace(stages, compress=compress, promote=PromoteResult("x", None, []))
    assert front_page.headline_tags(stages)["dlforge.champion"] == "none"
    assert "**Champion:** none" in front_page.description(Config(), stages)
    assert not any(k.startswith("champion/") for k in front_page.headline_metrics(stages))
