"""The distillation benchmark's table: the inherited arm, and the split of the gain into weights and outputs."""

from __future__ import annotations

from pipelines.benchmarks.distill import case_rows, interpretation
from pipelines.config import load_config


def test_the_gain_is_split_into_the_teachers_weights_and_its_outputs():
    runs = [
        {"seed": s, "distilled": 0.97, "scratch": 0.95, "plain": 0.94, "inherited": 0.965 + 0.01 * (s - 1)}
        for s in range(3)
    ]
    job = {"teacher": 0.96, "runs": runs, "params": {"teacher": 100, "student": 20}, "test_size": 500}
    rows = case_rows("rnn", job)
    by_name = {r.measure: r for r in rows}
    assert by_name["rnn: inherited student (labels only), mean"].value == 96.5
    gain = by_name["rnn: distilled − scratch"]
    assert round(gain.value, 6) == 2.0 and gain.met  # against the stronger scratch student: the twin, 95
    text = interpretation(rows, ["rnn"], load_config(None, []).compress, 3)
    assert "rnn +1.50 + +0.50" in text  # weights: 96.5 − 95; outputs: 97 − 96.5
    assert "starts from its teacher's weights (compress.inherit)" in text


def test_the_sequence_case_reads_each_signal_as_steps_of_folded_samples(tmp_path):
    import numpy as np

    from pipelines.benchmarks.distill import FOLD, SIGNALS, folded_signals

    overrides = folded_signals(tmp_path, quick=True)
    source = overrides[0].removeprefix("data.source=")
    with np.load(source) as arrays:
        x, x_test, y = arrays["x"], arrays["x_test"], arrays["y"]
    assert x.shape == (SIGNALS // 10, 96 // FOLD, FOLD) and x_test.shape[1:] == x.shape[1:]
    assert set(np.unique(y)) == {0, 1, 2, 3}
    assert "data.kind=sequence" in overrides
    assert load_config(None, [*overrides, "model.family=rnn"]).data.kind == "sequence"


def test_the_table_case_has_four_classes_of_many_clusters(tmp_path):
    import pandas as pd

    from pipelines.benchmarks.distill import TABLE_ROWS, clustered_table

    overrides = clustered_table(tmp_path, quick=True)
    frame = pd.read_csv(overrides[0].removeprefix("data.source="))
    assert len(frame) == TABLE_ROWS // 10 and sorted(frame["label"].unique()) == [0, 1, 2, 3]
    assert overrides[1] == "data.target=label"
