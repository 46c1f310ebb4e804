"""Ray Tune sweeps end to end on tiny digits: ASHA, PBT, resume after a kill, Ray Train workers, retries.

One local Ray (2 CPUs, ~6 s to start) serves the whole module; sweeps join it and leave it running.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow]

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_address():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def sweep_args(tmp_path: Path) -> list[str]:
    """A tiny CNN sweep on digits: 4 train and 2 val batches per epoch, MLflow in a temp sqlite file."""
    return [
        f"output_dir={tmp_path / 'out'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "tracking.experiment=sweep-test",
        "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=2",
        "model.cnn.channels=[8,16]",
        "model.cnn.hidden=32",
        "data.batch_size=32",
    ]


def mlflow_runs(tmp_path: Path):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sweep-test")
    return client.search_runs([experiment.experiment_id], max_results=1000)


def check_nested(tmp_path: Path, trials: int) -> None:
    """One sweep parent, one child per trial (never two for the same trial), all ended."""
    runs = mlflow_runs(tmp_path)
    parents = [r for r in runs if r.data.tags.get("dlforge.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("dlforge.kind") == "trial"]
    assert len(parents) == 1
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    trial_ids = [r.data.tags["ray.trial_id"] for r in children]
    assert len(trial_ids) == len(set(trial_ids)) == trials
    assert {r.info.status for r in runs} == {"FINISHED"}


@pytest.mark.timeout(240)
def test_asha_sweep_stops_a_bad_trial_and_its_best_config_trains(ray_address, sweep_args, tmp_path, cli):
    # sequential (max_concurrent=1), so the bad lr meets ASHA's first rung after the good one has set it
    code, out, err = cli(
        "tune",
        *sweep_args,
        "trainer.max_epochs=3",
        "tune.space={optim.lr: {grid: [0.01, 0.000001]}}",
        "tune.search=grid",
        "tune.scheduler=asha",
        "tune.reduction_factor=2",  # 2 trials: keep the better half at each rung (epochs 1 and 2)
        "tune.max_concurrent=1",
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["num_trials"] == 2 and summary["errored"] == []
    assert summary["best_overrides"] == {"optim.lr": 0.01}
    assert len(summary["stopped_early"]) == 1
    stopped = next(t for t in summary["trials"] if t["trial_id"] == summary["stopped_early"][0])
    assert stopped["params"]["optim.lr"] == 1e-6 and stopped["epochs"] < 3
    assert summary["best"]["metric"] == "val/acc" and summary["best"]["value"] > stopped["best"]
    assert summary["timing"]["tune_wall_s"] > 0 and "val/acc" in out  # the terminal table
    for name in ("sweep_results.csv", "sweep_trials.png", "best_config.yaml"):
        assert (tmp_path / "out" / name).is_file()
    check_nested(tmp_path, trials=2)
    parent = next(r for r in mlflow_runs(tmp_path) if r.data.tags.get("dlforge.kind") == "sweep")
    assert parent.data.params["tune.scheduler"] == "asha" and "best/val/acc" in parent.data.metrics

    best = tmp_path / "out" / "best_config.yaml"
    assert yaml.safe_load(best.read_text())["optim"]["lr"] == 0.01
    code, out, err = cli("train", str(best))  # the file as written, nothing added
    assert code == 0, err
    assert (tmp_path / "out" / "final" / "summary.json").is_file()


@pytest.mark.timeout(240)
def test_pbt_restored_trial_trains_with_its_mutated_lr(ray_address, sweep_args, tmp_path):
    from pipelines.config import load_config
    from pipelines.sweep import sweep

    cfg = load_config(
        None,
        [
            *sweep_args,
            "tracking.enabled=false",
            "trainer.max_epochs=4",
            "optim.scheduler=none",
            "tune.space={optim.lr: {loguniform: [0.0001, 0.01]}}",
            "tune.scheduler=pbt",
            "tune.perturbation_interval=1",
            "tune.num_samples=2",
        ],
    )
    result = sweep(cfg)
    rows = [
        json.loads(line)
        for path in Path(result.experiment_path).glob("trial_*/result.json")
        for line in path.read_text().splitlines()
    ]
    assert rows
    # the lr the optimizer actually used each epoch is the trial's lr at that time, also after every restore
    for row in rows:
        assert row["train/lr"] == pytest.approx(row["config"]["optim.lr"], rel=1e-9)
    lrs_per_trial: dict[str, set] = {}
    for row in rows:
        lrs_per_trial.setdefault(row["trial_id"], set()).add(row["config"]["optim.lr"])
    assert any(len(lrs) > 1 for lrs in lrs_per_trial.values()), "PBT never mutated a trial"


@pytest.mark.timeout(300)
def test_resume_after_the_driver_is_killed(ray_address, sweep_args, tmp_path, cli):
    args = [*sweep_args, "trainer.max_epochs=3", "tune.num_samples=3", "tune.scheduler=fifo", "tune.max_concurrent=1"]
    driver = subprocess.Popen(
        [sys.executable, "-m", "pipelines", "tune", *args, f"tune.ray_address={ray_address}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    trials = tmp_path / "out" / "trials"
    deadline = time.monotonic() + 150
    while not (trials.is_dir() and len(list(trials.glob("*/trial_state.json"))) >= 2):
        assert driver.poll() is None, "the sweep ended before it could be interrupted"
        assert time.monotonic() < deadline, "no second trial started"
        time.sleep(0.5)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver's own process group: the driver, nothing else
    driver.wait(timeout=30)
    experiment = next((tmp_path / "out" / "tune").glob("sweep-*"))

    code, out, err = cli("tune", "--resume", str(experiment))
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["num_trials"] == 3
    assert [t["status"] for t in summary["trials"]] == ["finished"] * 3
    check_nested(tmp_path, trials=3)


@pytest.mark.timeout(300)
def test_two_ray_train_workers_per_trial(ray_address, sweep_args, tmp_path, cli):
    code, out, err = cli(
        "tune",
        *sweep_args,
        "trainer.max_epochs=2",
        "tune.num_samples=1",
        "tune.scheduler=fifo",
        "tune.workers_per_trial=2",
        "tune.resources_per_trial.cpu=1",  # 2 workers × 0.5 CPU: 2 × 1 would never be placed on 2 cores
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    (trial,) = summary["trials"]
    assert trial["status"] == "finished" and trial["epochs"] == 2 and trial["best"] is not None
    check_nested(tmp_path, trials=1)
    child = next(r for r in mlflow_runs(tmp_path) if r.data.tags.get("dlforge.kind") == "trial")
    assert child.data.metrics["val/acc"] == pytest.approx(trial["last"])  # rank 0 logged it, once per epoch


def crash_once(params: dict, ctx) -> None:
    """A trial function that dies on its first start and reports on the second."""
    from ray import tune as ray_tune

    attempts = ctx.load_state().get("attempts", 0) + 1
    ctx.save_state(attempts=attempts)
    if attempts == 1:
        raise RuntimeError("injected crash")
    ray_tune.report({"val/acc": params["x"]})


@pytest.mark.timeout(120)
def test_a_crashing_trial_is_retried(ray_address, tmp_path):
    from tune.settings import SweepJob, TrialResourcesConfig, TuneConfig
    from tune.space import parse_space
    from tune.sweep import run_sweep

    space = parse_space({"x": {"choice": [0.5]}}, ["x"])
    settings = TuneConfig(
        num_samples=1, scheduler="fifo", max_failures=1, resources_per_trial=TrialResourcesConfig(cpu=0.5)
    )
    job = SweepJob(
        settings,
        metric="val/acc",
        mode="max",
        storage_path=str(tmp_path / "tune"),
        trials_dir=str(tmp_path / "trials"),
        max_epochs=1,
        verbose=False,
    )
    outcome = run_sweep(crash_once, space, job)
    (trial,) = outcome.trials
    assert (trial.status, trial.best, trial.state["attempts"]) == ("finished", 0.5, 2)

    no_retry = dataclasses.replace(
        job, tune=dataclasses.replace(settings, max_failures=0), trials_dir=str(tmp_path / "t2")
    )
    (failed,) = run_sweep(crash_once, space, no_retry).trials
    assert failed.status == "error" and "injected crash" in failed.error


def report_process(params: dict, ctx) -> None:
    """A trial function that reports when its process started."""
    import psutil
    from ray import tune as ray_tune

    ray_tune.report({"val/acc": params["x"], "process_started": psutil.Process().create_time()})


PRESTARTED_PROBE = """
import json, sys, time
from tests.integration.test_sweep import report_process
from tune.settings import SweepJob, TrialResourcesConfig, TuneConfig
from tune.space import parse_space
from tune.sweep import run_sweep

settings = TuneConfig(num_samples=2, scheduler="fifo", resources_per_trial=TrialResourcesConfig(cpu=1))
job = SweepJob(settings, "val/acc", "max", sys.argv[1] + "/tune", sys.argv[1] + "/trials", 1, verbose=False)
called = time.time()
outcome = run_sweep(report_process, parse_space({"x": {"choice": [0.5]}}, ["x"]), job)
print(json.dumps({"ray_ready": called + outcome.ray_start_s, "trials": [t.last_result for t in outcome.trials]}))
"""


@pytest.mark.timeout(180)
def test_a_local_sweeps_trials_run_in_the_processes_ray_prestarted(tmp_path):
    # its own process: the sweep must start its own Ray, and this module's fixture keeps one running in this one
    done = subprocess.run(
        [sys.executable, "-c", PRESTARTED_PROBE, str(tmp_path)], capture_output=True, text=True, timeout=170
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(seen["trials"]) == 2
    for trial in seen["trials"]:  # started while ray.init ran, not for the trial after the Tuner asked
        assert trial["process_started"] < seen["ray_ready"], seen
