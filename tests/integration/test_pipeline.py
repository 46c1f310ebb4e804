"""The main job end to end on tiny data: sweep (2 trials) → 2-process DDP training → distill → ONNX → INT8 → gates →
registry → report; killed during the sweep, resumed and killed again after training, then resumed to the end,
each resume skipping or continuing what was done.

One job takes both kills: each resume is checked where it happens, and the last one sees the whole history (a
second job would train, compress and register the same model again only to be killed at another place)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _args(tmp_path, store):
    return [
        "run",
        "model.family=mlp",
        "data.source=builtin:breast_cancer",
        f"output_dir={tmp_path / 'out'}",
        f"tracking.uri={store}",  # made before: the jobs spend no time on the store's migrations
        "tracking.experiment=pipe",
        "tune.enabled=true",
        "tune.num_samples=2",
        "tune.max_concurrent=1",  # one trial at a time: the first has finished when the second reports
        "tune.scheduler=fifo",
        "trainer.max_epochs=6",  # a trial is still training when the first kill comes
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "compress.epochs=1",
        "compress.latency_repeats=3",
        "compress.max_student_drop=100",  # one epoch trains nothing worth gating; the gate mechanics are unit-tested
        "compress.max_int8_drop=100",
        "compress.quantization=dynamic",  # a fixed recipe: teacher-int8.onnx is made whatever the timings
    ]


def _start(command, env, log):
    """The job in its own session (killed by process group), its output in ``log``."""
    with log.open("w") as out:
        return subprocess.Popen(command, env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)


def _kill(proc):
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _wait_for_stage(state_file, stage, proc, limit=600):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        if state_file.is_file():
            stages = json.loads(state_file.read_text()).get("stages", {})
            if stages.get(stage, {}).get("finished"):
                return
        time.sleep(0.5)
    raise AssertionError(f"stage {stage} did not finish (exit {proc.poll()})")


def _wait_for_second_trial(sweep_dir, proc, limit=600):
    """Block until a second trial has reported an epoch (so the first has finished: one trial at a time)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        reported = [p for p in sweep_dir.glob("*/tune/sweep-*/*/result.json") if p.stat().st_size > 0]
        if len(reported) >= 2:
            return
        time.sleep(0.5)
    raise AssertionError(f"no second trial reported (exit {proc.poll()})")


def test_pipeline_killed_in_the_sweep_and_after_training_resumes_each_time_and_finishes(tmp_path, store):
    command = [sys.executable, "-m", "pipelines", *_args(tmp_path, store)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = tmp_path / "out"

    # killed during the sweep, its first trial finished
    first = _start(command, env, tmp_path / "first.log")
    try:
        _wait_for_second_trial(out, first)
    finally:
        _kill(first)

    # resumed: the sweep continues (the finished trial kept); killed once training has finished
    second = _start(command, env, tmp_path / "second.log")
    try:
        _wait_for_stage(out / "pipeline_state.json", "train", second)
    finally:
        _kill(second)
    assert "continuing the interrupted sweep" in (tmp_path / "second.log").read_text()

    # resumed again: sweep and training skipped, the rest done
    third = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "stage sweep: skipped" in third.stdout and "stage train: skipped" in third.stdout
    assert "stage compress: done" in third.stdout

    summary = json.loads((out / "summary.json").read_text())
    assert summary["command"] == "run" and summary["passed"] is True
    assert summary["skipped_stages"] == ["sweep", "train"]
    assert 0 <= summary["metrics"]["test/acc"] <= 1
    for name in ("report.md", "report.html", "compress/onnx/teacher.onnx", "compress/onnx/teacher-int8.onnx"):
        assert (out / name).is_file(), name
    assert "data:image/png;base64," in (out / "report.html").read_text()

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("pipe")
    runs = client.search_runs([experiment.experiment_id])
    by_kind = {}
    for run in runs:
        by_kind.setdefault(run.data.tags.get("dlforge.kind"), []).append(run)
    (parent,) = by_kind["pipeline"]  # each resumed job continued the same parent run
    # the finished trial was kept, not trained again; training ran once
    assert len(by_kind["train"]) == 1 and len(by_kind["sweep"]) == 1 and len(by_kind["trial"]) == 2
    for trial in by_kind["trial"]:  # each trial's history holds each epoch once
        steps = [m.step for m in client.get_metric_history(trial.info.run_id, "val/loss")]
        assert sorted(steps) == sorted(set(steps)), steps
    assert all(r.info.status != "RUNNING" for r in runs)
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
