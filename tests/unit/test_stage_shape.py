"""One shape for a stage: ``stage(cfg, upstream) -> <Stage>Result``; ``dlforge promote``; predict's typed result."""

from __future__ import annotations

import dataclasses
import inspect
import json

import pandas as pd
import pytest
import torch
from torch import nn

from dl_lightning.errors import InputError
from dl_lightning.registry import build_model
from pipelines import export, tracking
from pipelines.compression.results import CompressResult, Gate, Row
from pipelines.config import build_config
from pipelines.ledger import StageLedger
from pipelines.stage_results import PredictResult, PromoteResult, Upstream
from pipelines.train_stage import TrainStageResult
from tests.fixtures import SPECS, random_inputs


def _stages():
    from pipelines.compression.stage import compress_stage
    from pipelines.predict import predict_stage
    from pipelines.promote import promote_stage
    from pipelines.sweep import sweep
    from pipelines.train_stage import train_stage

    return {"sweep": sweep, "train": train_stage, "compress": compress_stage, "promote": promote_stage,
            "predict": predict_stage}  # fmt: skip


@pytest.mark.parametrize("name", ["sweep", "train", "compress", "promote", "predict"])
def test_every_stage_is_cfg_upstream_to_its_typed_result(name):
    signature = inspect.signature(_stages()[name])
    first, second = list(signature.parameters.values())[:2]
    assert (first.name, second.name) == ("cfg", "upstream")
    assert second.annotation == "Upstream"  # the one type a stage is handed besides its config
    rest = list(signature.parameters.values())[2:]
    assert all(p.kind is p.KEYWORD_ONLY for p in rest)  # a stage's own options are named, never positional
    assert "Result" in str(signature.return_annotation)


def test_the_cli_and_the_pipeline_call_the_same_stage_functions():
    """Each command's handler calls its stage function, and ``dlforge run`` calls the same ones (train through the
    ``dlforge train`` child, which DDP re-launches)."""
    from pipelines import cli, run, train_stage

    calls = {
        cli.cmd_train: "train_stage(",
        cli.cmd_tune: "sweep(",
        cli.cmd_compress: "compress_stage(",
        cli.cmd_promote: "promote_stage(",
        cli.cmd_predict: "predict_stage(",
    }
    for handler, call in calls.items():
        assert call in inspect.getsource(handler), handler.__name__
    pipeline = inspect.getsource(run._run_stages) + inspect.getsource(run.sweep_stage)
    for call in ("sweep(cfg, upstream", "train_in_child(", "compress_stage(", "promote_stage("):
        assert call in pipeline, call
    assert '"pipelines", "train"' in inspect.getsource(train_stage.train_in_child)


def test_upstream_grows_by_value():
    first = Upstream(parent_run_id="p")
    promoted = PromoteResult("m", "1")
    later = first.then(promote=promoted)
    assert first.promote is None and later.promote is promoted and later.parent_run_id == "p"


# ---------------------------------------------------------------- predict


def test_predict_stage_returns_what_it_wrote(tmp_path):
    spec = SPECS["tabular"]
    torch.manual_seed(0)
    net, example = build_model("mlp", spec, {"hidden": [8], "dropout": 0.0}, {}).eval().export_net()
    meta = export.model_metadata(spec.to_dict(), family="mlp", role="teacher", source_run_id=None)
    model = export.export_onnx(net, example, tmp_path / "m.onnx", metadata=meta)
    pd.DataFrame(random_inputs(spec, 7)).to_csv(tmp_path / "in.csv", index=False)
    from pipelines.predict import predict_stage

    cfg = build_config({}, {"tracking.enabled": False})
    done = predict_stage(cfg, Upstream(model=str(model)), source=str(tmp_path / "in.csv"), output=str(tmp_path / "p"))
    assert done == PredictResult(str(model), str(tmp_path / "in.csv"), str(tmp_path / "p"), 7)
    assert len(pd.read_csv(done.output)) == 7 and PredictResult.from_dict(done.to_dict()) == done
    with pytest.raises(InputError, match="needs a model"):
        predict_stage(cfg, Upstream(), source="in.csv", output="p")


# ---------------------------------------------------------------- promote


def _register(cfg, name: str, versions: list[dict[str, str]]) -> list[str]:
    """Versions of ``name`` in a real store, each with its tags (gates, metric, artifact)."""
    with tracking.job_run(cfg, kind="train") as run_id:
        uri = tracking.log_model(run_id, nn.Linear(4, 1), torch.zeros(2, 4))
        return [tracking.register_model(uri, name=name, run_id=run_id, tags=tags) for tags in versions]


@pytest.fixture
def tracked(store, tmp_path):
    return build_config({}, {"tracking.uri": store, "output_dir": str(tmp_path / "out")})


def test_promote_a_named_version_unless_its_gates_failed(cli, store, tracked):
    from mlflow import MlflowClient

    _register(
        tracked,
        "promo",
        [
            {"metric.test/acc": "0.90", "dlforge.gates": "passed"},
            {"metric.test/acc": "0.99", "dlforge.gates": "failed"},
            {"metric.test/acc": "0.80"},  # registered by dlforge train alone: no gates ran, a person may choose it
        ],
    )
    client = MlflowClient(tracking_uri=store)
    code, out, err = cli("promote", "models:/promo/3", f"tracking.uri={store}")
    assert code == 0, err
    assert "promo version 3 (pytorch)" in out and "models:/promo@champion" in out
    assert client.get_model_version_by_alias("promo", "champion").version in (3, "3")
    code, _, err = cli("promote", "models:/promo/2", f"tracking.uri={store}")
    assert code == 1 and err.strip() == "dlforge: error: promo version 2 failed its own gates; champion was not moved"
    assert client.get_model_version_by_alias("promo", "champion").version in (3, "3")
    code, _, err = cli("promote", "models:/promo/9", f"tracking.uri={store}")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not a registered model version" in err
    assert cli("promote", "models:/promo/1", "tracking.enabled=false")[0] == 2
    assert cli("promote", f"tracking.uri={store}")[0] == 2  # nothing named


def test_promote_a_compress_folder_picks_its_chosen_artifacts_best_version(cli, store, tracked, tmp_path, monkeypatch):
    """``dlforge compress`` chose teacher-int8: champion goes to its best passing version, not the student's."""
    from mlflow import MlflowClient

    from pipelines.compression import stage

    tags = [
        {"dlforge.model": "teacher-int8", "dlforge.gates": "passed", "metric.test/acc": "0.91"},
        {"dlforge.model": "student", "dlforge.gates": "passed", "metric.test/acc": "0.97"},
        {"dlforge.model": "teacher-int8", "dlforge.gates": "passed", "metric.test/acc": "0.93"},
        {"dlforge.model": "teacher-int8", "dlforge.gates": "failed", "metric.test/acc": "0.99"},
    ]
    versions = _register(tracked, "x-onnx", tags)
    registered = {"name": "x-onnx", "versions": {"teacher-int8": versions[2], "student": versions[1]}}
    row = Row("teacher INT8", "onnxruntime", 10, 40, 0.93, dict.fromkeys(("b1_p50", "b1_p95", "b64_p50", "b64_p95"), 1))
    done = CompressResult(str(tmp_path), "test/acc", [row], [Gate("student drop", False, "drop", ("student",))],
                          {}, "r.md", "r.json", None, registered=registered, champion="teacher-int8")  # fmt: skip
    monkeypatch.setattr(stage, "compress", lambda cfg, teacher, **_: done)
    out_dir = tmp_path / "compressed"
    code, _, err = cli("compress", f"output_dir={out_dir}", "tracking.enabled=false", "--teacher", "x.ckpt")
    assert code == 0, err  # summary.json written by the command itself
    code, out, err = cli("promote", str(out_dir), f"tracking.uri={store}")
    assert code == 0, err
    assert "x-onnx version 3 (teacher-int8)" in out
    assert MlflowClient(tracking_uri=store).get_model_version_by_alias("x-onnx", "champion").version in (3, "3")
    code, _, err = cli("promote", str(tmp_path / "nothing"), f"tracking.uri={store}")
    assert code == 2 and "holds no finished compress stage" in err


def test_a_run_folder_gives_its_stages_back_typed(tmp_path):
    from pipelines.promote import upstream_of

    trained = TrainStageResult.from_summary(
        {"metrics": {"test/acc": 0.9}, "config": {"output_dir": str(tmp_path / "train")}, "mlflow_run_id": "r1"}
    )
    compressed = CompressResult(str(tmp_path / "compress"), "test/acc", [], [], {}, "r.md", "r.json", None)
    ledger = StageLedger(tmp_path / "pipeline_state.json")
    ledger.once("train", "k1", lambda: trained, TrainStageResult)
    ledger.once("compress", "k2", lambda: compressed, CompressResult)
    again = upstream_of(tmp_path)
    assert again.train == trained and again.compress == compressed and again.model is None
    (tmp_path / "pipeline_state.json").write_text(json.dumps({"stages": {"compress": {"finished": False}}}))
    with pytest.raises(InputError, match="no finished compress stage"):
        upstream_of(tmp_path)


def test_promote_without_a_champion_keeps_the_trained_listing():
    """The pipeline's rule, unchanged: no shipped ONNX artifact → the trained model's promotion, champion None."""
    from pipelines.promote import _promote_shipped

    trained = PromoteResult("m", "2", [{"version": "2", "aliases": ["champion"]}])
    compressed = CompressResult("c", "test/acc", [], [], {}, "r.md", "r.json", None, champion=None)
    kept = _promote_shipped(compressed, trained)
    assert kept == dataclasses.replace(trained, champion=None, trained=trained)
    assert _promote_shipped(compressed, None) is None
