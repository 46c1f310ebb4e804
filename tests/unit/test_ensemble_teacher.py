"""compress.teacher=ensemble: the best sweep trials' checkpoints as one teacher for the student, and as one shipped
ONNX graph (``ensemble``) that competes for champion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dl_lightning.data.spec import DataSpec
from dl_lightning.distill import EnsembleTeacher
from dl_lightning.errors import InputError
from dl_lightning.registry import build_model
from pipelines import export, predict
from pipelines.compression.ensemble import EnsembleNet, ship_ensemble
from pipelines.compression.gates import choose_champion, preference
from pipelines.compression.measure import Probe
from pipelines.compression.publish import registered_key
from pipelines.compression.results import Gate
from pipelines.compression.teacher import Teacher, ensemble_members, load_ensemble
from pipelines.config import load_config
from pipelines.run import check_pipeline

SPEC = DataSpec("tabular", "classification", (6,), 3, mean=(0.0,) * 6, std=(1.0,) * 6, class_names=("a", "b", "c"))


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


def _members(k: int = 2) -> list:
    torch.manual_seed(0)
    return [build_model("mlp", SPEC, {"hidden": [8 + 4 * i], "dropout": 0.0}, {}).eval() for i in range(k)]


def test_the_exported_ensemble_is_the_mean_probability_of_its_members(tmp_path):
    """ONNX Runtime on the exported graph == torch: softmax of its output is the members' mean probability."""
    nets = [m.export_net()[0] for m in _members(3)]
    net = EnsembleNet(nets, "classification").eval()
    x = torch.randn(32, 6) * 3
    with torch.no_grad():
        mean = torch.stack([n(x).softmax(-1) for n in nets]).mean(0)
        assert torch.allclose(net(x).softmax(-1), mean, atol=1e-6)
        assert torch.allclose(net(x).exp(), mean, atol=1e-6)  # already log-probabilities: softmax is a no-op
    meta = export.model_metadata(SPEC.to_dict(), family="mlp", role="ensemble", source_run_id=None)
    path = export.export_onnx(net, x[:2], tmp_path / "ensemble.onnx", metadata=meta, output_name="logits")
    parity = export.check_parity(net, export.open_session(path), [x.numpy(), x[:1].numpy()], atol=1e-5)
    assert parity.passed, parity
    probs = predict.Predictor(path).predict(predict.example_frame(x.numpy(), meta))  # what dlforge predict serves
    assert np.allclose(probs[["prob_a", "prob_b", "prob_c"]].to_numpy(), mean.numpy(), atol=1e-5)
    assert list(probs["prediction"]) == [SPEC.class_names[i] for i in mean.argmax(-1)]


def test_the_ensemble_ships_through_parity_quantization_and_gates(tmp_path):
    members = _members(2)
    teacher = Teacher(
        members[0], "t.ckpt", "mlp", SPEC, {}, None, ensemble=EnsembleTeacher(members, "classification", 2.0)
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    probe = Probe(x, rng.integers(0, 3, 64), [x[:16], x[:1]], [x[:16]], "classification")
    cfg = load_config(overrides=["compress.quantization=dynamic", "compress.latency_repeats=2"])
    rows, files, gates, _ = ship_ensemble(cfg, teacher, probe, tmp_path)
    assert set(files) == {"ensemble", "ensemble-int8"} and all(Path(p).is_file() for p in files.values())
    assert rows[0].model == "ensemble of 2 sweep trials fp32 (PyTorch)" and rows[1].key == "ensemble_fp32_onnx"
    assert rows[0].params == sum(sum(p.numel() for p in m.net.parameters()) for m in members)
    assert gates[0].name == "ensemble parity" and gates[0].passed and gates[0].guards == ("ensemble", "ensemble-int8")
    assert rows[1].metric == rows[0].metric  # the ONNX graph scores as the PyTorch ensemble


def test_the_ensemble_is_preferred_after_the_teacher_unless_registered_first():
    cfg = load_config(overrides=["compress.teacher=ensemble"])
    teacher = Teacher(None, "t", "mlp", SPEC, {}, None, members=("a.ckpt", "b.ckpt"))
    order = ["teacher-int8", "teacher", "ensemble-int8", "ensemble", "student-int8", "student"]
    assert preference(cfg, teacher) == order
    first = preference(cfg.with_overrides({"compress.register": "ensemble"}), teacher)
    assert first == ["ensemble", "ensemble-int8", "teacher", "teacher-int8", "student", "student-int8"]
    files = {key: f"{key}.onnx" for key in order}
    failed = [Gate("teacher parity", False, "d", ("teacher", "teacher-int8"))]
    assert choose_champion(order, files, failed) == "ensemble-int8"  # a teacher that fails: the ensemble wins
    single = load_config(overrides=["compress.register=ensemble"])
    with pytest.raises(InputError, match="needs compress.teacher=ensemble"):
        registered_key(single, teacher)
    with pytest.raises(InputError, match="needs compress.teacher=ensemble"):
        check_pipeline(single)


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
    ensemble = rows["ensemble_fp32_pytorch"]  # the ensemble's own accuracy, and its graph shipped like the teacher's
    assert ensemble["params"] == 2 * rows["teacher_fp32_pytorch"]["params"] and ensemble["metric"] is not None
    assert rows["ensemble_fp32_onnx"]["metric"] == ensemble["metric"] and "ensemble" in report["files"]
    assert len(report["student"]["ensemble_members"]) == 2 and {"teacher", "ensemble"} <= set(report["autotune"])
    alone = rows["student_single_teacher_pytorch"]  # the same student taught by the teacher alone, beside it
    assert alone["metric"] is not None and alone["params"] == rows["student_fp32_pytorch"]["params"]
    gain = report["student"]["gain_over_single_teacher"]
    assert gain == pytest.approx((rows["student_fp32_pytorch"]["metric"] - alone["metric"]) * 100)


def test_the_ensemble_benchmark_reads_its_runs_into_rows():
    """The benchmark's table: the ensemble's room over its best member in whole test rows (no float dust at the
    target), and the student's gain per seed."""
    from pipelines.benchmarks.ensemble import interpretation, result_rows

    members = [{"label": "a", "test": 0.60, "val": 0.61}, {"label": "b", "test": 0.59, "val": 0.58}]
    runs = [{"seed": 0, "single": 0.58, "ensemble": 0.59}, {"seed": 1, "single": 0.58, "ensemble": 0.585}]
    job = {"members": members, "ensemble": 0.61, "disagreement": 0.2, "runs": runs, "test_size": 300}
    rows = {r.measure: r for r in result_rows(job | {"student_params": 100})}
    assert rows["ensemble − best teacher"].value == 1.0 and rows["ensemble − best teacher"].met
    gain = rows["student: ensemble − single"]
    assert gain.value == pytest.approx(0.75) and gain.met and gain.spread == pytest.approx([0.5, 1.0])
    assert rows["student taught by: single, mean"].value == pytest.approx(58.0)
    text = interpretation(list(rows.values()), job | {"student_params": 100})
    assert "by +1.00 points" in text and "gains ≥ 0.5 points" in text and "+2.00 points below" in text
    knobs = {"ensemble, T=4": 0.6, "single, alpha 0.5": 0.57, "ensemble, alpha 0.5": 0.58}
    job["runs"] = [run | knobs for run in runs]
    rows = result_rows(job | {"student_params": 100})
    text = interpretation(rows, job | {"student_params": 100})
    assert "the ensemble-taught student moves +1.25 points" in text and "ensemble − single at alpha 0.5: +1.00" in text
