"""Distillation loss and module, student shrinking, gates, teacher resolution and the compress CLI's exits."""

from __future__ import annotations

import copy
import pickle

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from dl_lightning.data.spec import DataSpec
from dl_lightning.distill import DistillModule, distillation_loss
from dl_lightning.errors import InputError
from dl_lightning.registry import build_model
from pipelines import compress as comp

SPEC = DataSpec("tabular", "classification", (6,), 3, mean=(0.0,) * 6, std=(1.0,) * 6)


def test_alpha_one_is_the_task_loss():
    s, t, y = torch.randn(8, 3), torch.randn(8, 3), torch.randint(0, 3, (8,))
    loss = distillation_loss(s, t, y, task="classification", alpha=1.0, temperature=4.0)
    assert torch.allclose(loss, F.cross_entropy(s, y))


def test_soft_term_is_t_squared_kl_of_teacher_to_student():
    s, t, y = torch.randn(8, 3), torch.randn(8, 3), torch.randint(0, 3, (8,))
    temp = 3.0
    p_t, p_s = (t / temp).softmax(1), (s / temp).softmax(1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    loss = distillation_loss(s, t, y, task="classification", alpha=0.0, temperature=temp)
    assert torch.allclose(loss, temp**2 * kl, atol=1e-6)
    mixed = distillation_loss(s, t, y, task="classification", alpha=0.3, temperature=temp)
    assert torch.allclose(mixed, 0.3 * F.cross_entropy(s, y) + 0.7 * temp**2 * kl, atol=1e-6)
    assert distillation_loss(t, t, y, task="classification", alpha=0.0, temperature=temp).abs() < 1e-6


def test_regression_distills_with_mse_to_teacher():
    s, t, y = torch.randn(8, 1), torch.randn(8, 1), torch.randn(8)
    loss = distillation_loss(s, t, y, task="regression", alpha=0.25, temperature=9.0)
    expected = 0.25 * F.mse_loss(s.squeeze(1), y) + 0.75 * F.mse_loss(s.squeeze(1), t.squeeze(1))
    assert torch.allclose(loss, expected)


def test_distill_fit_trains_student_and_leaves_teacher_untouched(tmp_path):
    torch.manual_seed(0)
    teacher = build_model("mlp", SPEC, {"hidden": [16], "dropout": 0.1}, {})
    before = copy.deepcopy(teacher.state_dict())
    student = build_model("mlp", SPEC, {"hidden": [4], "dropout": 0.0}, {"lr": 1e-2})
    start = copy.deepcopy(student.state_dict())
    module = DistillModule(student, teacher, "classification", alpha=0.5, temperature=2.0)
    data = TensorDataset(torch.randn(64, 6), torch.randint(0, 3, (64,)))
    trainer = L.Trainer(
        max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(module, DataLoader(data, batch_size=16), DataLoader(data, batch_size=32))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert "val/acc" in trainer.callback_metrics  # validation is the student's own, same metric names
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(start[k], v) for k, v in student.state_dict().items())
    assert not any(k.startswith("teacher") for k in module.state_dict())  # checkpoints hold the student only


def test_shrink_scales_widths_and_cuts_depth():
    mlp = comp.shrink({"hidden": [256, 128, 64], "dropout": 0.1, "batch_norm": True}, 0.5, 2)
    assert mlp == {"hidden": [128, 64], "dropout": 0.1, "batch_norm": True}
    tr = comp.shrink({"d_model": 64, "nhead": 4, "num_layers": 4, "dim_feedforward": 128}, 0.3, 1)
    assert tr["d_model"] % 4 == 0 and tr["d_model"] == 20 and tr["num_layers"] == 1 and tr["dim_feedforward"] == 38
    rnn = comp.shrink({"cell": "lstm", "hidden_size": 8, "num_layers": 2, "bidirectional": False}, 0.01, 0)
    assert rnn["hidden_size"] == 1 and rnn["num_layers"] == 2 and rnn["bidirectional"] is False


def test_student_arch_same_family_starts_from_the_teacher(tmp_path):
    from pipelines.config import load_config

    teacher = comp.Teacher(None, "t.ckpt", "cnn", SPEC, {"channels": [32, 64], "hidden": 128, "dropout": 0.1}, None)
    same = load_config(None, ["compress.student.width=0.5"])
    assert comp.student_arch(same, teacher) == ("cnn", {"channels": [16, 32], "hidden": 64, "dropout": 0.1})
    other = load_config(None, ["compress.student.family=mlp", "model.mlp.hidden=[40]", "compress.student.width=1"])
    family, arch = comp.student_arch(other, teacher)
    assert family == "mlp" and arch["hidden"] == [40]


@pytest.mark.parametrize(
    ("task", "ref", "value", "limit", "passed"),
    [
        ("classification", 0.95, 0.945, 1.0, True),  # 0.5 point
        ("classification", 0.95, 0.935, 1.0, False),  # 1.5 points
        ("classification", 0.90, 0.95, 0.0, True),  # better is never a drop
        ("regression", 100.0, 101.0, 1.0, True),  # +1 % mse
        ("regression", 100.0, 103.0, 2.0, False),
    ],
)
def test_metric_gate(task, ref, value, limit, passed):
    assert comp.metric_gate("g", ref, value, task, limit).passed is passed


def test_gate_without_metric_is_skipped():
    gate = comp.metric_gate("gan", None, None, None, 1.0)
    assert gate.passed and "skipped" in gate.detail


def test_teacher_references_that_cannot_resolve(tmp_path):
    with pytest.raises(InputError, match="not a checkpoint file"):
        comp.resolve_teacher(str(tmp_path / "missing.ckpt"))
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps(type("X", (), {"__reduce__": lambda self: (print, ("pwned",))})()))
    with pytest.raises(InputError):
        comp.load_teacher(str(evil))


def test_data_must_match_the_teacher():
    other = DataSpec("tabular", "classification", (7,), 3)
    with pytest.raises(InputError, match="input_shape"):
        comp.check_compatible(SPEC, other)


def test_compress_needs_a_teacher(cli, tiny):
    code, _, err = cli("compress", *tiny)
    assert code == 2 and "--teacher" in err


def test_failed_gate_exits_1_and_says_why(cli, tiny, monkeypatch, tmp_path):
    row = comp.Row(
        "teacher fp32 (PyTorch)", "pytorch", 10, 40, 0.9, dict.fromkeys(("b1_p50", "b1_p95", "b64_p50", "b64_p95"), 1.0)
    )
    gates = [comp.Gate("teacher INT8 drop", False, "drop +3.00 points (limit 1)")]
    result = comp.CompressResult(str(tmp_path), "test/acc", [row], gates, {}, "r.md", "r.json", None)
    monkeypatch.setattr(comp, "compress", lambda cfg, teacher: result)
    code, _, err = cli("compress", *tiny, "--teacher", "x.ckpt")
    assert code == 1 and "teacher INT8 drop" in err and "nothing registered" in err
    import json

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["passed"] is False and summary["gates"][0]["name"] == "teacher INT8 drop"
