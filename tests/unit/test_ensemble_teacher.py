"""compress.teacher=ensemble: the best sweep trials' checkpoints as one teacher for the student."""

from __future__ import annotations

import json

import pytest

from dl_lightning.errors import InputError
from pipelines.compression.teacher import ensemble_members, load_ensemble
from pipelines.config import load_config
from pipelines.run import check_pipeline


def _sweep(tmp_path, mode: str) -> dict:
    trials = [("t0", 0.5), ("t1", 0.9), ("t2", None), ("t3", 0.7), ("t4", 0.95)]
    for trial_id, _ in trials:
        if trial_id != "t4":  # t4: the best score, but its checkpoint is gone
            ckpt = tmp_path / "trials" / trial_id / "train" / "checkpoints" / "best.ckpt"
            ckpt.parent.mkdir(parents=True)
            ckpt.write_bytes(b"x")
    rows = [{"trial_id": t, "best": best} for t, best in trials]
    return {"output_dir": str(tmp_path), "mode": mode, "trials": rows}


def test_members_are_the_best_finished_trials_with_a_checkpoint(tmp_path):
    names = [p.split("/trials/")[1].split("/")[0] for p in ensemble_members(_sweep(tmp_path, "max"), 2)]
    assert names == ["t1", "t3"]
    low = [p.split("/trials/")[1].split("/")[0] for p in ensemble_members(_sweep(tmp_path / "min", "min"), 3)]
    assert low == ["t0", "t3", "t1"]


def test_an_ensemble_needs_two_members_and_a_sweep():
    cfg = load_config(overrides=["compress.teacher=ensemble"])
    with pytest.raises(InputError, match="at least 2 finished sweep trials"):
        load_ensemble(["one.ckpt"], None, cfg)  # refused before any file is read
    with pytest.raises(InputError, match="the sweep is off"):
        check_pipeline(cfg.with_overrides({"tune.enabled": False}))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_run_distils_the_student_from_the_sweeps_ensemble(cli, tiny, tmp_path):
    """dlforge run: a 3-trial sweep, the final fit, then a student distilled from the best 2 trials (autotuned)."""
    args = [*tiny, "model.family=mlp", "data.source=builtin:iris", "tune.num_samples=3", "tune.scheduler=fifo"]
    extra = ["compress.teacher=ensemble", "compress.ensemble_k=2", "compress.latency_repeats=3"]
    code, _, err = cli("run", *args, *extra, "compress.max_student_drop=100")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "compress" / "compress_report.json").read_text())
    rows = {r["key"]: r for r in report["rows"]}
    ensemble = rows["ensemble_teacher_pytorch"]
    assert ensemble["params"] == 2 * rows["teacher_fp32_pytorch"]["params"] and ensemble["metric"] is not None
    assert len(report["student"]["ensemble_members"]) == 2 and "teacher" in report["autotune"]
