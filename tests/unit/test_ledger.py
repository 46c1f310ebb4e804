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
    from pipelines import run, train_stage

    def fail(*args, **kwargs):
        raise run.StageFailed("training failed; its output is above")

    monkeypatch.setattr(train_stage, "train_in_child", fail)
    code, _, err = cli("run", *tiny, "tune.enabled=false")
    assert code == 1
    assert err.strip().splitlines() == ["dlforge: error: training failed; its output is above"]


def test_a_typed_result_is_recalled_typed_and_equal(tmp_path):
    from pipelines.compression.results import CompressResult, Gate, Row
    from pipelines.stage_results import PromoteResult

    row = Row("teacher INT8", "onnxruntime", 10, 2048, 0.98, {"b1_p50": 0.1}, None, "t8.onnx", "teacher_int8_onnx")
    gate = Gate("student drop", False, "drop +5.00 points", ("student",))
    done = CompressResult("c", "test/acc", [row], [gate], {"teacher-int8": "t8.onnx"}, "r.md", "r.json", None)
    trained = PromoteResult("x-cnn", "2", [{"version": "2", "aliases": ["champion"]}])
    promoted = PromoteResult("x-cnn-onnx", "3", [], "teacher-int8", "models:/x-cnn-onnx@champion", trained)
    ledger = StageLedger(tmp_path / "s.json")
    ledger.once("compress", "k1", lambda: done, CompressResult)
    ledger.once("promote", "k2", lambda: promoted, PromoteResult)
    ledger.once("nothing", "k3", lambda: None, PromoteResult)  # tracking off: no promotion
    again = StageLedger(tmp_path / "s.json")
    assert again.once("compress", "k1", lambda: 1 / 0, CompressResult) == done
    assert again.once("promote", "k2", lambda: 1 / 0, PromoteResult) == promoted
    assert again.once("nothing", "k3", lambda: 1 / 0, PromoteResult) is None
    assert stage_key(done) == stage_key(done.to_dict())  # a result and its dict are the same input


def test_the_train_stage_is_read_from_its_summary_once(tmp_path):
    from pipelines.train_stage import TrainStageResult

    summary = {
        "metrics": {"test/acc": 0.9},
        "paths": {"best_checkpoint": "b.ckpt", "last_checkpoint": "l.ckpt", "plots": ["p.png"]},
        "mlflow_run_id": "r1",
        "tracking": {"uri": "sqlite:///x", "model_uri": "models:/m/1", "model_version": "1"},
        "config": {"output_dir": "/o/train", "seed": 1},
        "init_from": None,
    }
    trained = TrainStageResult.from_summary(summary)
    assert trained.result.best_checkpoint == "b.ckpt" and trained.logged.model_version == "1"
    assert trained.result.output_dir == "/o/train" and trained.result.run_id == "r1"
    assert TrainStageResult.from_dict(trained.to_dict()) == trained
    ledger = StageLedger(tmp_path / "s.json")
    ledger.once("train", "k", lambda: trained, TrainStageResult)
    assert StageLedger(tmp_path / "s.json").once("train", "k", lambda: 1 / 0, TrainStageResult) == trained
