"""The pipeline report renders every stage's result, in markdown and as one self-contained HTML page."""

import dataclasses
import json
from pathlib import Path

import pytest

from pipelines.compression.results import CompressResult
from pipelines.config import Config
from pipelines.report import write_reports
from pipelines.stage_results import PromoteResult, StageResults
from pipelines.sweep import SweepResult
from pipelines.train_stage import TrainStageResult


def _compress(rows, gates, **fields) -> CompressResult:
    paths = {"output_dir": "c", "report_md": "c/report.md", "report_json": "c/report.json", "teacher_run_id": None}
    return CompressResult.from_dict({"metric": "test/acc", "rows": rows, "gates": gates, "files": {}} | paths | fields)


def _sweep(**fields) -> SweepResult:
    paths = {"output_dir": "s", "best_config": None, "results_csv": "s/r.csv", "plot": None, "experiment_path": "e"}
    defaults = {"best_overrides": {}, "best_metric": None, "best_trial": None, "metric": "val/acc", "mode": "max"}
    return SweepResult.from_dict(paths | defaults | {"trials": [], "run_id": None} | fields)


def _stages(tmp_path):
    png = tmp_path / "train" / "review" / "confusion_matrix.png"
    png.parent.mkdir(parents=True)
    png.write_bytes(b"\x89PNG\r\n\x1a\n")  # the report embeds bytes as they are; it never decodes them
    row = {
        "model": "teacher INT8 (static)",
        "runtime": "onnxruntime",
        "params": 10,
        "size_bytes": 2048,
        "metric": 0.98,
        "latency_ms": {"b1_p50": 0.1, "b1_p95": 0.2, "b64_p50": 1.0, "b64_p95": 2.0},
        "parity_max_abs_diff": None,
    }
    trial = {"trial_id": "t1", "status": "stopped", "epochs": 3, "best": 0.91, "params": {"optim.lr": 0.01}}
    return StageResults(
        sweep=_sweep(metric="val/acc", best_metric=0.91, best_overrides={"optim.lr": 0.01}, trials=[trial]),
        train=TrainStageResult.from_summary(
            {"metrics": {"test/acc": 0.97}, "config": {"output_dir": str(png.parent.parent)}}
        ),
        compress=_compress([row], [{"name": "teacher INT8 drop", "passed": True, "detail": "0.0 points"}]),
        promote=PromoteResult(
            "x-cnn",
            "2",
            [{"version": "2", "aliases": ["champion"], "gates": "passed", "metric": 0.97, "run_id": "r"}],
        ),
    )


def test_report_has_every_section_and_inlines_images(tmp_path):
    md, html = write_reports(Config(), _stages(tmp_path), tmp_path)
    text = md.read_text()
    for needle in ("## Sweep", "| t1 | stopped | 3 | 0.91 | 0.01 |", "test/acc", "teacher INT8 (static)", "PASS"):
        assert needle in text
    assert "Champion: x-cnn version 2." in text
    assert "](train/review/confusion_matrix.png)" in text
    page = html.read_text()
    assert "data:image/png;base64," in page and "<table>" in page


def test_report_without_tracking_says_nothing_was_registered(tmp_path):
    stages = dataclasses.replace(_stages(tmp_path), sweep=None, promote=None)
    md, _ = write_reports(Config(), stages, tmp_path)
    assert "Tracking is off: nothing was registered." in md.read_text()


# ---------------------------------------------------------------- dlforge run: sweeps by default; what it lists


def test_run_sweeps_by_default_and_train_never_does(cli, tiny, monkeypatch):
    from pipelines import sweep
    from pipelines.config import load_config
    from pipelines.run import quick_overrides

    assert load_config(None, []).tune.enabled is True
    assert load_config(None, [], quick_overrides()).tune.enabled is True  # --quick sweeps too (two short trials)
    assert load_config(None, ["tune.enabled=false"]).tune.enabled is False

    def no_sweep(*args, **kwargs):
        raise AssertionError("dlforge train swept")

    monkeypatch.setattr(sweep, "sweep", no_sweep)
    code, out, err = cli("train", *tiny, "model.family=mlp", "data.source=builtin:iris", "tune.num_samples=3")
    assert code == 0, err
    assert "dlforge: tune.num_samples unused: dlforge train never sweeps (dlforge tune or run does)" in out


def _capture_pipeline(monkeypatch):
    from pipelines import run

    seen = {}

    def fake(cfg, force=False):
        seen["cfg"] = cfg
        raise run.StageFailed("stopped by the test")

    monkeypatch.setattr(run, "run_pipeline", fake)
    return seen


def test_no_sweep_turns_the_sweep_off_and_names_unused_tune_keys(cli, tiny, monkeypatch):
    seen = _capture_pipeline(monkeypatch)
    assert cli("run", *tiny)[0] == 1
    assert seen["cfg"].tune.enabled is True
    code, out, _ = cli("run", *tiny, "--no-sweep", "tune.num_samples=3", "tune.scheduler=fifo")
    assert code == 1 and seen["cfg"].tune.enabled is False
    lines = [line for line in out.splitlines() if "unused" in line]
    assert lines == [
        "dlforge: tune.num_samples, tune.scheduler unused: the sweep is off (tune.enabled=false or --no-sweep)"
    ]
    _, out, _ = cli("run", *tiny, "tune.enabled=false")
    assert "unused" not in out  # nothing set, nothing to say


def test_exit_code_follows_the_champion_and_strict():
    from pipelines.run import exit_code

    failed = [{"name": "student drop", "passed": False}]
    assert exit_code(True, failed, strict=False) == 0  # a champion was promoted: every failed gate only printed
    assert exit_code(True, failed, strict=True) == 1
    assert exit_code(True, [], strict=True) == 0
    assert exit_code(False, failed, strict=False) == 1


# The files a user opens or hands on; the ledger and stage summaries are the command's own bookkeeping.
OPENED = {".yaml", ".yml", ".csv", ".png", ".md", ".html", ".onnx", ".ckpt", ".json"}
BOOKKEEPING = {"summary.json", "pipeline_state.json"}


def _listed(value) -> set[str]:
    if isinstance(value, dict):
        return set().union(*map(_listed, value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*map(_listed, value)) if value else set()
    return {str(Path(value).resolve())} if isinstance(value, str) else set()


def _opened_files(out: Path) -> set[str]:
    return {
        str(p.resolve()) for p in out.rglob("*") if p.is_file() and p.suffix in OPENED and p.name not in BOOKKEEPING
    }


@pytest.mark.timeout(300)
@pytest.mark.parametrize("tracked", [False, True], ids=["tracking-off", "tracking-on"])
def test_every_file_run_writes_is_listed_under_paths(cli, tiny, tmp_path, request, tracked):
    """dlforge run (no sweep: Ray stays out of unit tests) on a tiny table: all it wrote is in summary.json, and with
    tracking on every version it registered is under ``models`` with its aliases."""
    args = [*tiny, "model.family=mlp", "data.source=builtin:iris", "compress.latency_repeats=2", "--no-sweep"]
    args.append("compress.quantization=dynamic")  # a fixed recipe: every artifact is made, whatever the timings
    if tracked:
        args = [a for a in args if not a.startswith("tracking.")] + [f"tracking.uri={request.getfixturevalue('store')}"]
    code, _, err = cli("run", *args, "compress.max_student_drop=100", "compress.max_int8_drop=100")
    assert code == 0, err
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    missing = _opened_files(out) - _listed(summary["paths"])
    assert not missing, sorted(missing)
    for key in ("report_html", "onnx_teacher_int8", "onnx_student", "compress_report_md", "best_checkpoint"):
        assert Path(summary["paths"][key]).is_file(), key
    assert summary["champion"] == "teacher-int8"
    if not tracked:
        assert summary["models"] == []  # nothing registered
        return
    models = {m["artifact"]: m for m in summary["models"]}
    assert set(models) == {"pytorch", "teacher", "teacher-int8", "student", "student-int8"}
    assert models["teacher-int8"]["uri"].startswith("models:/dlforge-mlp-onnx/")
    assert {"candidate", "champion", "int8"} <= set(models["teacher-int8"]["aliases"])
    assert "review_reports" in summary["paths"] and "plots" in summary["paths"]  # review files, tracking on
    _check_front_page(request.getfixturevalue("store"), summary)


def _check_front_page(store: str, summary: dict) -> None:
    """The parent run holds the headline, its description, links to its children and the report's images."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    parent = client.get_run(summary["mlflow_run_id"])
    metrics, tags = parent.data.metrics, parent.data.tags
    assert {"teacher/acc", "int8/acc", "champion/acc", "champion/size_mb", "champion/latency_b1_ms"} <= set(metrics)
    assert tags["dlforge.champion"] == "teacher-int8" and tags["dlforge.champion_model"].startswith("models:/")
    assert "**Champion:** teacher-int8" in tags["mlflow.note.content"]
    children = {tags["dlforge.train_run_id"], tags["dlforge.compress_run_id"]}
    assert all(client.get_run(c).data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    report = [line for line in Path(summary["paths"]["report_md"]).read_text().splitlines() if line.startswith("![")]
    linked = {line.split("](")[1].rstrip(")") for line in report}
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "train/review")}
    assert linked and linked <= logged  # every image report.md links is in the same run


def test_sweep_paths_list_the_best_config():
    from pipelines.run import sweep_paths

    sweep = _sweep(best_config="b.yaml", results_csv="r.csv", plot=None, experiment_path="/e", trials=[])
    assert sweep_paths(sweep) == {"best_config": "b.yaml", "results_csv": "r.csv", "experiment_path": "/e"}


def test_report_says_which_artifact_is_champion_and_which_gates_held_what_back(tmp_path):
    stages = _stages(tmp_path)
    failed = {"name": "student drop", "passed": False, "detail": "drop +5.00 points", "guards": ["student"]}
    compress = stages.compress.to_dict() | {
        "gates": [*stages.compress.to_dict()["gates"], failed],
        "files": {"teacher-int8": "t8.onnx", "student": "s.onnx"},
        "champion": "teacher-int8",
        "student": {"family": "cnn", "params_ratio": 0.24, "epochs": 25, "gain_over_scratch": 0.74},
    }
    row = {"version": "3", "aliases": ["champion", "int8"], "gates": "passed", "model": "teacher-int8"}
    trained = PromoteResult("x-cnn", "2", stages.promote.versions)
    promote = PromoteResult("x-cnn-onnx", "3", [row | {"metric": 0.97, "run_id": "r"}], "teacher-int8", trained=trained)
    stages = dataclasses.replace(stages, compress=CompressResult.from_dict(compress), promote=promote)
    text = write_reports(Config(), stages, tmp_path)[0].read_text()
    assert "Champion: x-cnn-onnx version 3 (teacher-int8)." in text
    assert "champion: teacher-int8; shipped: teacher-int8; failed: student drop — not shipped: student." in text
    assert "| FAIL | student drop | drop +5.00 points | student |" in text
    assert (
        "Student: cnn at 24% of the teacher's parameters, 25 epochs; distilled − same student from scratch: +0.74"
        in text
    )
    assert "Trained PyTorch model x-cnn: champion version 2." in text
