"""Model cards: the bootstrap interval, the sections, and the card on a registered version and in its run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipelines.config import load_config
from pipelines.model_card import bootstrap_ci, data_facts, metric_facts, per_example, render, training_facts


def test_per_example_hits_and_squared_errors():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0]])
    assert per_example(logits, np.array([0, 1, 1]), "classification").tolist() == [1.0, 1.0, 0.0]
    assert per_example(np.array([[1.0], [3.0]]), np.array([2.0, 3.0]), "regression").tolist() == [1.0, 0.0]


def test_bootstrap_interval_holds_the_mean_and_narrows_with_more_examples():
    rng = np.random.default_rng(0)
    small = (rng.random(100) < 0.9).astype(float)
    large = (rng.random(10_000) < 0.9).astype(float)
    mean, low, high = bootstrap_ci(small)
    assert low < mean < high and mean == pytest.approx(small.mean())
    _, low_l, high_l = bootstrap_ci(large)
    assert high_l - low_l < (high - low) / 5  # √100 = 10× the examples, ~10× narrower
    assert low_l < 0.9 < high_l  # the true rate is inside
    assert bootstrap_ci(small) == (mean, low, high)  # seeded: the same card twice


def test_card_has_every_section_and_the_users_intended_use():
    cfg = load_config(overrides=["model_card.intended_use=Digit demos only; not for handwriting forensics."])
    y = np.array([0, 0, 1, 2, 2, 2])
    splits = SimpleNamespace(train=(np.zeros((6, 2)), y), val=(np.zeros((2, 2)), y[:2]), test=(np.zeros((3, 2)), y[:3]))
    spec = {"fingerprint": "abc123", "kind": "tabular", "task": "classification", "class_names": ["a", "b", "c"]}
    facts = {
        "data": data_facts(spec, "builtin:digits", splits),
        "training": training_facts(cfg, 7, 12.5),
        "test": metric_facts("test/acc", np.array([1.0, 0.0, 1.0, 1.0])),
        "gates": [{"name": "teacher parity", "passed": True, "detail": "max |Δ| 1e-6"}],
        "lineage": {"training run": "r1", "init_from": None},
    }
    card = render("mlp (PyTorch fp32)", facts, cfg.model_card.intended_use)
    for heading in ("Data", "Training", "Test metrics", "Gates", "Lineage", "Intended use and limits"):
        assert f"## {heading}" in card
    assert "**balance**: a=2, b=1, c=3" in card and "**sizes**: train=6, val=2, test=3" in card
    assert "**digest**: abc123" in card and "**epochs**: 7" in card and "**seed**: 42" in card
    assert "test/acc**: 0.7500, 95% CI [" in card and "PASS — teacher parity" in card
    assert "init_from" not in card  # a missing fact is left out, not printed as None
    assert card.rstrip().endswith("Digit demos only; not for handwriting forensics.")
    assert "model_card.intended_use" in render("x", {}, "")  # unset: the card says how to set it


@pytest.mark.timeout(300)
def test_a_registered_version_carries_its_card(cli, tiny, store, tmp_path):
    from mlflow import MlflowClient

    args = [o for o in tiny if not o.startswith("tracking.")] + [f"tracking.uri={store}", "tracking.register=true"]
    use = "model_card.intended_use=Iris demos."
    code, _, err = cli("train", *args, "model.family=mlp", "data.source=builtin:iris", use)
    assert code == 0, err
    client = MlflowClient(tracking_uri=store)
    version = client.get_model_version_by_alias("dlforge-mlp", "candidate")
    assert "# Model card — mlp (PyTorch fp32)" in version.description and "Iris demos." in version.description
    assert "95% CI" in version.description and "**sizes**: train=" in version.description
    local = client.download_artifacts(version.run_id, "model_card.md", str(tmp_path / "dl"))
    assert Path(local).read_text() in version.description
