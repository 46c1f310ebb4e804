"""The main job end to end on tiny data: sweep (2 trials) → 2-process DDP training → distill → ONNX → INT8 → gates →
registry → report; killed after training, then resumed, skipping what was done."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _args(tmp_path):
    return [
        "run",
        "model.family=mlp",
        "data.source=builtin:breast_cancer",
        f"output_dir={tmp_path / 'out'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "tracking.experiment=pipe",
        "tune.enabled=true",
        "tune.num_samples=2",
        "tune.scheduler=fifo",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "compress.epochs=1",
        "compress.latency_repeats=3",
        "compress.max_student_drop=100",  # one epoch trains nothing worth gating; the gate mechanics are unit-tested
        "compress.max_int8_drop=100",
        "compress.quantization=dynamic",  # a fixed recipe: teacher-int8.onnx is made whatever the timings
    ]


def _wait_for_stage(state_file, stage, proc, limit=600):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        if state_file.is_file():
            stages = json.loads(state_file.read_text()).get("stages", {})
            if stages.get(stage, {}).get("finished"):
                return
        time.sleep(0.5)
    raise AssertionError(f"stage {stage} did not finish (exit {proc.poll()})")


def test_pipeline_killed_after_training_resumes_and_finishes(tmp_path):
    command = [sys.executable, "-m", "pipelines", *_args(tmp_path)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    first = subprocess.Popen(command, env=env, start_new_session=True, **quiet)
    try:
        _wait_for_stage(tmp_path / "out" / "pipeline_state.json", "train", first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()

    second = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "stage sweep: skipped" in second.stdout and "stage train: skipped" in second.stdout
    assert "stage compress: done" in second.stdout

    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["command"] == "run" and summary["passed"] is True
    assert summary["skipped_stages"] == ["sweep", "train"]
    assert 0 <= summary["metrics"]["test/acc"] <= 1
    for name in ("report.md", "report.html", "compress/onnx/teacher.onnx", "compress/onnx/teacher-int8.onnx"):
        assert (out / name).is_file(), name
    assert "data:image/png;base64," in (out / "report.html").read_text()

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("pipe")
    runs = client.search_runs([experiment.experiment_id])
    by_kind = {}
    for run in runs:
        by_kind.setdefault(run.data.tags.get("dlforge.kind"), []).append(run)
    (parent,) = by_kind["pipeline"]  # the resumed job continued the same parent run
    assert len(by_kind["train"]) == 1 and len(by_kind["sweep"]) == 1 and len(by_kind["trial"]) == 2
    for kind in ("train", "sweep", "compress"):
        for run in by_kind[kind]:
            assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    model = client.get_registered_model("pipe-mlp")
    assert set(model.aliases) >= {"candidate", "champion"}

    # dlforge promote on the finished folder reads its results back (ledger, train/config.yaml for the store) and
    # calls the same promote stage: the same champions again
    from pipelines.cli import main

    promoted = summary["registry"]
    assert main(["promote", str(out)]) == 0
    assert str(client.get_registered_model(promoted["name"]).aliases["champion"]) == str(promoted["champion"])
    assert str(client.get_registered_model("pipe-mlp").aliases["champion"]) == str(model.aliases["champion"])


def _wait_for_second_trial(sweep_dir, proc, limit=600):
    """Block until a second trial has reported an epoch (so the first has finished: one trial at a time)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        reported = [p for p in sweep_dir.glob("*/tune/sweep-*/*/result.json") if p.stat().st_size > 0]
        if len(reported) >= 2:
            return
        time.sleep(0.5)
    raise AssertionError(f"no second trial reported (exit {proc.poll()})")


def test_pipeline_killed_during_the_sweep_keeps_its_finished_trial(tmp_path):
    args = [
        "run",
        "model.family=mlp",
        "data.source=builtin:breast_cancer",
        f"output_dir={tmp_path / 'out'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "tracking.experiment=pipe",
        "tune.num_samples=2",
        "tune.max_concurrent=1",
        "tune.scheduler=fifo",
        "trainer.max_epochs=6",
        "trainer.accelerator=cpu",
        "compress.epochs=0",
        "compress.latency_repeats=3",
    ]
    command = [sys.executable, "-m", "pipelines", *args]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    first = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for_second_trial(tmp_path / "out", first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()

    second = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "continuing the interrupted sweep" in second.stdout

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("pipe")
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if r.data.tags.get("dlforge.kind") == "trial"]
    sweeps = [r for r in runs if r.data.tags.get("dlforge.kind") == "sweep"]
    assert len(sweeps) == 1 and len(trials) == 2  # the finished trial was kept, not trained again
    for trial in trials:  # each trial's history holds each epoch once
        steps = [m.step for m in client.get_metric_history(trial.info.run_id, "val/loss")]
        assert sorted(steps) == sorted(set(steps)), steps
    assert all(r.info.status != "RUNNING" for r in runs)
