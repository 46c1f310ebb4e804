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
