"""The train stage opens its run on a thread while the fit starts: nothing is lost, failures still fail the job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines import tracking
from pipelines.config import Config, build_config
from pipelines.train import load_data, train
from pipelines.train_stage import HISTORY_PREFIXES, HISTORY_SKIP, train_stage


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)


def _cfg(uri: str, tmp_path: Path, epochs: int = 3) -> Config:
    overrides = {
        "tracking.uri": uri,
        "output_dir": str(tmp_path / "out"),
        "model.family": "mlp",
        "data.source": "builtin:iris",
        "trainer.max_epochs": epochs,
        "trainer.threads": 1,
    }
    return build_config({}, overrides)


@pytest.mark.timeout(180)
def test_a_run_opened_in_the_background_gets_every_epoch_and_the_same_curves_as_the_store(store, tmp_path):
    cfg = _cfg(store, tmp_path)
    with tracking.job_run(cfg, kind="train", background=True) as opening:
        assert isinstance(opening, tracking.PendingRun)
        callbacks = tracking.lightning_callbacks(cfg, opening)
        train(cfg, callbacks=callbacks)
        run_id = opening.run_id()
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["trainer.max_epochs"] == "3"
    assert run.data.tags["dlforge.data_kind"] == "tabular"  # the callback's tags, sent once the run was open
    for key in ("train/loss", "val/loss", "epoch"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [0, 1, 2]
    in_memory = tracking.fit_history(callbacks, HISTORY_PREFIXES, HISTORY_SKIP)
    assert in_memory and in_memory == tracking.metric_history(run_id, HISTORY_PREFIXES, skip=HISTORY_SKIP)


@pytest.mark.timeout(180)
def test_the_review_evaluates_the_splits_the_fit_used(store, tmp_path):
    done = train_stage(_cfg(store, tmp_path, epochs=2))
    report = json.loads((tmp_path / "out" / "review" / "classification_report.json").read_text())
    assert report["accuracy"] == pytest.approx(done.result.metrics["test/acc"], abs=1e-6)
    assert (tmp_path / "out" / "review" / "learning_curves.png").stat().st_size > 0


@pytest.mark.timeout(180)
def test_a_store_that_cannot_be_opened_fails_the_job(tmp_path):
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"not a sqlite database" * 100)
    with pytest.raises(tracking.TrackingError, match="cannot use tracking store"):
        train_stage(_cfg(f"sqlite:///{broken}", tmp_path))


def test_a_server_that_does_not_answer_is_refused_before_the_fit_starts(tmp_path):
    cfg = _cfg("http://127.0.0.1:9", tmp_path)  # port 9 (discard): nothing listens
    with pytest.raises(tracking.TrackingError, match="does not answer"):
        train_stage(cfg)
    assert not list((tmp_path / "out").rglob("*.ckpt"))


def test_a_job_that_fails_while_its_run_opens_ends_the_run_failed(store, tmp_path):
    with (
        pytest.raises(RuntimeError, match="boom"),
        tracking.job_run(_cfg(store, tmp_path), kind="train", background=True) as opening,
    ):
        raise RuntimeError("boom")
    run = MlflowClient(tracking_uri=store).get_run(opening.run_id())
    assert run.info.status == "FAILED" and "boom" in run.data.tags["dlforge.error"]


@pytest.mark.timeout(180)
def test_a_short_job_resumed_continues_its_run(store, tmp_path):
    """Every checkpoint names its run, even when the fit is faster than the store's opening."""
    first = train_stage(_cfg(store, tmp_path, epochs=1))
    last = first.result.last_checkpoint
    assert tracking.run_id_from_checkpoint(last) == first.result.run_id
    longer = _cfg(store, tmp_path, epochs=2)
    again = train_stage(longer, resume=last, splits=load_data(longer))
    assert again.result.run_id == first.result.run_id
    steps = [m.step for m in MlflowClient(tracking_uri=store).get_metric_history(first.result.run_id, "train/loss")]
    assert steps == [0, 1]
