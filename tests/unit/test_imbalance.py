"""data.class_weights=balanced, data.sampler=balanced (one process and per DDP rank), the imbalance note."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from dl_lightning.data.balance import BalancedSampler, balanced_class_weights, imbalance_note
from pipelines import finetune
from pipelines.config import load_config
from pipelines.train import load_data, optim_settings, train

LABELS = np.array([0] * 80 + [1] * 15 + [2] * 5)


def test_balanced_weights_are_inverse_frequency():
    weights = balanced_class_weights(LABELS, 4)  # class 3 is absent
    assert weights.tolist() == pytest.approx([100 / (3 * 80), 100 / (3 * 15), 100 / (3 * 5), 0.0])
    counts = np.bincount(LABELS)
    assert (weights[:3].numpy() * counts) == pytest.approx(np.full(3, 100 / 3))  # each class weighs the same


def draws(sampler: BalancedSampler, epoch: int = 0) -> np.ndarray:
    sampler.set_epoch(epoch)
    return np.asarray(list(sampler))


def test_balanced_sampler_draws_classes_equally():
    data = TensorDataset(torch.zeros(len(LABELS), 1))
    shares = np.bincount(LABELS[np.concatenate([draws(BalancedSampler(data, LABELS, 3), e) for e in range(60)])])
    assert shares / shares.sum() == pytest.approx(np.full(3, 1 / 3), abs=0.02)


def test_balanced_sampler_per_rank_is_one_draw_split():
    data = TensorDataset(torch.zeros(len(LABELS), 1))
    one = draws(BalancedSampler(data, LABELS, 3, seed=7, num_replicas=1, rank=0), epoch=3)
    ranks = [draws(BalancedSampler(data, LABELS, 3, seed=7, num_replicas=2, rank=r), epoch=3) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 50
    assert sorted(np.concatenate(ranks).tolist()) == sorted(one.tolist())  # together: the single-process draw
    assert not np.array_equal(draws(BalancedSampler(data, LABELS, 3, seed=7), 4), one)  # a new draw each epoch


def test_imbalance_note_over_ten_to_one():
    assert imbalance_note(LABELS, 3) and "data.class_weights=balanced" in imbalance_note(LABELS, 3)
    assert imbalance_note(np.array([0] * 50 + [1] * 6), 2) is None


def imbalanced(tmp_path: Path) -> str:
    rng = np.random.default_rng(0)
    y = np.array([0] * 110 + [1] * 10)
    x = rng.normal(size=(len(y), 4)).astype(np.float32) + y[:, None]
    np.savez(tmp_path / "imb.npz", x=x, y=y)
    return str(tmp_path / "imb.npz")


def test_class_weights_reach_the_loss_and_both_options_train(tmp_path, capsys):
    common = [
        f"data.source={imbalanced(tmp_path)}",
        "model.family=mlp",
        "model.mlp.hidden=[8]",
        "tracking.enabled=false",
        "trainer.max_epochs=1",
        "data.batch_size=16",
    ]
    cfg = load_config(None, [*common, "data.class_weights=balanced", f"output_dir={tmp_path / 'w'}"])
    splits = load_data(cfg)
    from dl_lightning.registry import build_model

    model = build_model("mlp", splits.spec, cfg.model.arch(), optim_settings(cfg))
    finetune.prepare(cfg, model, splits)
    assert model.class_weight[1] > 5 * model.class_weight[0]
    assert "class_weight" not in model.state_dict()  # derived from the data, recomputed on resume
    result = train(load_config(None, [*common, "data.sampler=balanced", f"output_dir={tmp_path / 's'}"]))
    assert "test/balanced_acc" in result.metrics
    train(load_config(None, [*common, f"output_dir={tmp_path / 'n'}"]), test=False)
    assert "classes are imbalanced" in capsys.readouterr().out


def test_balancing_a_regression_is_refused(tmp_path, cli):
    np.savez(tmp_path / "r.npz", x=np.random.default_rng(0).normal(size=(40, 3)), y=np.linspace(0, 1, 40) + 0.01)
    code, _, err = cli(
        "train",
        f"data.source={tmp_path / 'r.npz'}",
        "model.family=mlp",
        "data.task=regression",
        "data.sampler=balanced",
        "tracking.enabled=false",
        f"output_dir={tmp_path / 'o'}",
    )
    assert code == 2 and "classifier" in err


def test_distillation_weighs_the_hard_labels_as_the_students_own_fit(tmp_path):
    """data.class_weights=balanced reaches both students built for compress, and their hard-label terms."""
    import torch.nn.functional as F

    from dl_lightning.distill import DistillModule
    from pipelines.compression import students
    from pipelines.compression.teacher import Teacher

    cfg = load_config(
        None,
        [
            f"data.source={imbalanced(tmp_path)}",
            "model.family=mlp",
            "model.mlp.hidden=[8]",
            "data.class_weights=balanced",
            "tracking.enabled=false",
            f"output_dir={tmp_path}",
        ],
    )
    splits = load_data(cfg)
    teacher = Teacher(None, "t", "mlp", splits.spec, {"hidden": [8]}, None, epochs=1)
    student = students._build_student(cfg, teacher, splits, "mlp", {"hidden": [4], "batch_norm": False})
    assert student.class_weight[1] > 5 * student.class_weight[0]

    x, y = torch.as_tensor(splits.train[0]), torch.as_tensor(splits.train[1])  # both classes
    twin = DistillModule(student.eval(), None, "classification", alpha=0.5, temperature=2.0, mixup=0.0)
    out = student(x)
    expected = F.cross_entropy(out, y.long(), weight=student.class_weight)
    assert torch.allclose(twin._twin_loss(out, y, None, None), expected)
    assert not torch.allclose(expected, F.cross_entropy(out, y.long()))  # the weights change the loss
