import pytest

from pipelines.ledger import StageLedger, stage_key


def test_key_is_order_independent_and_input_sensitive():
    assert stage_key({"a": 1, "b": 2}) == stage_key({"b": 2, "a": 1})
    assert stage_key({"a": 1}) != stage_key({"a": 2})


def test_finished_stage_is_recalled_not_rerun(tmp_path):
    calls = []
    ledger = StageLedger(tmp_path / "state.json")
    assert ledger.once("train", "k1", lambda: calls.append(1) or {"acc": 0.9}) == {"acc": 0.9}
    again = StageLedger(tmp_path / "state.json")
    assert again.once("train", "k1", lambda: calls.append(2) or {"acc": 0.1}) == {"acc": 0.9}
    assert calls == [1] and again.skipped == ["train"]


def test_changed_key_or_force_reruns(tmp_path):
    calls = []
    StageLedger(tmp_path / "s.json").once("train", "k1", lambda: calls.append(1) or {})
    StageLedger(tmp_path / "s.json").once("train", "k2", lambda: calls.append(2) or {})
    StageLedger(tmp_path / "s.json", force=True).once("train", "k2", lambda: calls.append(3) or {})
    assert calls == [1, 2, 3]


def test_interrupted_stage_is_known_as_started(tmp_path):
    ledger = StageLedger(tmp_path / "s.json")

    def crash():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ledger.once("train", "k1", crash)
    reopened = StageLedger(tmp_path / "s.json")
    assert reopened.started_with("train", "k1")
    assert not reopened.started_with("train", "other")


def test_a_failed_stage_is_one_line_and_exit_1(cli, tiny, monkeypatch):
    from pipelines import run

    def fail(*args, **kwargs):
        raise run.StageFailed("training failed; its output is above")

    monkeypatch.setattr(run, "train_stage", fail)
    code, _, err = cli("run", *tiny, "tune.enabled=false")
    assert code == 1
    assert err.strip().splitlines() == ["dlforge: error: training failed; its output is above"]
