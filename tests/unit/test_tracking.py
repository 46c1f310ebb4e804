"""Tracking against a real sqlite store in a temp dir, read back with MlflowClient (no server, no data set)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from mlflow import MlflowClient
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dl_lightning.errors import InputError
from pipelines import tracking
from pipelines.config import Config, build_config
from pipelines.plots import classification_review, plot_learning_curves, plot_residuals
from pipelines.tracking import callback, store


@pytest.fixture
def cfg(store: str, tmp_path: Path) -> Config:
    return build_config({}, {"tracking.uri": store, "output_dir": str(tmp_path / "out"), "model.family": "mlp"})


@pytest.fixture
def client(store: str) -> MlflowClient:
    return MlflowClient(tracking_uri=store)


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)


def runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("dlforge")
    return client.search_runs([experiment.experiment_id]) if experiment else []


# ---------------------------------------------------------------- job_run


def test_job_run_logs_params_tags_and_config_artifact(cfg, client, tmp_path):
    with tracking.job_run(cfg, kind="train", tags={"ray.trial_id": "t1"}) as run_id:
        tracking.log_metrics(run_id, {"val/acc": 0.5, "val/loss": 1.0}, step=3)
    (run,) = runs(client)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == "0.001"
    assert run.data.params["model.mlp.hidden"] == "[256, 128]"
    assert run.data.params["tracking.enabled"] == "true"
    assert len(run.data.params) == len(cfg.flat())
    tags = run.data.tags
    assert tags["dlforge.kind"] == "train" and tags["dlforge.family"] == "mlp" and tags["ray.trial_id"] == "t1"
    assert tags["dlforge.dataset"] == "digits" and tags["dlforge.host"] and "dlforge.command" in tags
    assert tags["mlflow.runName"].startswith("mlp-digits lr=0.001")
    assert [m.step for m in client.get_metric_history(run_id, "val/acc")] == [3]
    artifacts = [a.path for a in client.list_artifacts(run_id)]
    assert "config.yaml" in artifacts
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(tmp_path)  # beside the sqlite file


def test_nested_run_links_to_its_parent(cfg, client):
    with (
        tracking.job_run(cfg, kind="pipeline") as parent,
        tracking.job_run(cfg, kind="trial", parent_run_id=parent) as child,
    ):
        pass
    assert client.get_run(child).data.tags["mlflow.parentRunId"] == parent
    assert client.get_run(child).info.run_name.startswith("trial ")
    assert {r.info.status for r in runs(client)} == {"FINISHED"}


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (RuntimeError("boom"), "FAILED"),
        (KeyboardInterrupt(), "KILLED"),
        (SystemExit(1), "KILLED"),  # how Lightning ends a fit after Ctrl-C
        (SIGTERMException(), "KILLED"),  # how Lightning ends a fit after SIGTERM (SLURM preemption)
    ],
)
def test_run_status_follows_how_the_job_ended(cfg, client, error, status):
    with pytest.raises(type(error)), tracking.job_run(cfg, kind="train"):
        raise error
    (run,) = runs(client)
    assert run.info.status == status
    assert run.data.tags["dlforge.error"].startswith(type(error).__name__)


def test_disabled_tracking_yields_none_and_never_imports_mlflow(tmp_path):
    code = (
        "import sys; from pipelines import tracking; from pipelines.config import build_config\n"
        "cfg = build_config({}, {'tracking.enabled': False})\n"
        "with tracking.job_run(cfg, kind='train') as run_id: assert run_id is None\n"
        "assert tracking.lightning_callbacks(cfg, None) == [] and tracking.summary_fields(cfg) is None\n"
        "assert 'mlflow' not in sys.modules, 'mlflow was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(
    "env", [{"LOCAL_RANK": "1"}, {"RANK": "3"}, {"NODE_RANK": "1"}, {"SLURM_NTASKS": "2", "SLURM_PROCID": "1"}]
)
def test_only_global_rank_zero_creates_a_run(cfg, client, monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with tracking.job_run(cfg, kind="train") as run_id:
        assert run_id is None
    assert runs(client) == []


def test_rank_zero_of_a_torchrun_job(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert tracking.global_rank(devices_per_node=2) == 0
    monkeypatch.setenv("RANK", "2")
    assert tracking.global_rank(devices_per_node=2) == 2


def test_resuming_a_run_keeps_params_and_records_changes_as_tags(cfg, client):
    with tracking.job_run(cfg, kind="train") as run_id:
        pass
    changed = cfg.with_overrides({"trainer.max_epochs": 20})
    with tracking.job_run(changed, kind="train", run_id=run_id) as again:
        assert again == run_id
    (run,) = runs(client)
    assert run.data.params["trainer.max_epochs"] == "10"
    assert run.data.tags["dlforge.changed.trainer.max_epochs"] == "10 -> 20"
    assert run.data.tags["dlforge.resumed"] == "true" and run.info.status == "FINISHED"


def test_unknown_run_id_starts_a_new_run(cfg, client):
    with tracking.job_run(cfg, kind="train", run_id="0" * 32) as run_id:
        assert run_id != "0" * 32
    assert client.get_run(run_id).data.tags["dlforge.resumed_from_run"] == "0" * 32


# ---------------------------------------------------------------- secrets


def test_secret_looking_params_are_masked_and_uri_credentials_redacted():
    masked = tracking.mask_params(
        {
            "db.password": "hunter2",
            "auth.apiKey": "abc",
            "s3.secret_access_key": "x",
            "hf_token": "t",
            "data.max_tokens": 5,
            "monkey": "ok",
            "tracking.uri": "http://alice:pw@host:5000",
            "empty_token": None,
        }
    )
    assert masked["db.password"] == masked["auth.apiKey"] == masked["s3.secret_access_key"] == "***"
    assert masked["hf_token"] == "***"
    assert masked["data.max_tokens"] == 5 and masked["monkey"] == "ok" and masked["empty_token"] is None
    assert masked["tracking.uri"] == "http://***@host:5000"


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("postgresql://user:pass@db:5432/mlflow", "postgresql://***@db:5432/mlflow"),
        ("https://token@mlflow.example.com", "https://***@mlflow.example.com"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:////tmp/a@b/mlflow.db", "sqlite:////tmp/a@b/mlflow.db"),
    ],
)
def test_redact_uri(uri, shown):
    assert tracking.redact_uri(uri) == shown


def test_secrets_never_reach_the_store(cfg, client, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["dlforge", "train", "tracking.uri=http://bob:s3cret@h:1", "api_key=zzz"])
    with tracking.job_run(cfg, kind="train") as run_id:
        pass
    command = client.get_run(run_id).data.tags["dlforge.command"]
    assert "s3cret" not in command and "zzz" not in command and "***@h:1" in command


def test_summary_redacts_the_uri(tmp_path):
    cfg = build_config({}, {"tracking.uri": "http://u:p@127.0.0.1:9"})
    assert tracking.summary_fields(cfg)["uri"] == "http://***@127.0.0.1:9"


def test_unreachable_server_is_an_error_unless_not_required(tmp_path, monkeypatch, client):
    down = build_config({}, {"tracking.uri": "http://127.0.0.1:9"})  # port 9 (discard): nothing listens
    with pytest.raises(tracking.TrackingError, match="does not answer"), tracking.job_run(down, kind="train"):
        pass
    monkeypatch.setattr(store, "PROJECT_ROOT", tmp_path)  # the local fallback store lands in tmp
    (tmp_path / "mlruns").mkdir()
    shutil.copyfile(Path(client.tracking_uri.removeprefix("sqlite:///")), tmp_path / "mlruns" / "mlflow.db")
    lenient = down.with_overrides({"tracking.required": False})
    with tracking.job_run(lenient, kind="train") as run_id:
        assert run_id is not None
    fallback = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert fallback.get_run(run_id).info.status == "FINISHED"
    assert tracking.summary_fields(lenient)["uri"].endswith("mlruns/mlflow.db")


# ---------------------------------------------------------------- Lightning: one run, per-epoch batches, resume


class TinyModule(L.LightningModule):
    """Logs train/loss and val/loss once per epoch, like the real families."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 2)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        loss = nn.functional.cross_entropy(self(batch[0]), batch[1])
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", nn.functional.cross_entropy(self(batch[0]), batch[1]), on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader() -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=gen), torch.randint(0, 2, (64,), generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=16)


def _fit(cfg: Config, run_id: str | None, epochs: int, ckpt_path: str | None = None, callbacks=()) -> ModelCheckpoint:
    checkpoint = ModelCheckpoint(dirpath=cfg.output_dir, save_last=True, enable_version_counter=False)
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[checkpoint, *tracking.lightning_callbacks(cfg, run_id), *callbacks],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(TinyModule(), _loader(), _loader(), ckpt_path=ckpt_path)
    return checkpoint


def test_metrics_are_logged_once_per_epoch_in_batches(cfg, client, monkeypatch):
    calls = []
    real = MlflowClient.log_batch
    monkeypatch.setattr(MlflowClient, "log_batch", lambda self, *a, **k: calls.append(k) or real(self, *a, **k))
    with tracking.job_run(cfg, kind="train") as run_id:
        calls.clear()
        _fit(cfg, run_id, epochs=3)
    metric_calls = [c for c in calls if c.get("metrics")]
    assert 1 <= len(metric_calls) <= 3  # at most one batch per epoch (epochs can share one), nothing per step
    for key in ("train/loss", "val/loss", "train/lr", "epoch"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [0, 1, 2]


def test_resume_continues_the_same_run_without_duplicate_or_missing_steps(cfg, client):
    with tracking.job_run(cfg, kind="train") as run_id:
        checkpoint = _fit(cfg, run_id, epochs=2)
    last = checkpoint.last_model_path
    assert tracking.run_id_from_checkpoint(last) == run_id
    with tracking.job_run(cfg, kind="train", run_id=tracking.run_id_from_checkpoint(last)) as again:
        _fit(cfg, again, epochs=4, ckpt_path=last)
    (run,) = runs(client)
    assert again == run_id and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [0, 1, 2, 3]


def test_an_epoch_the_run_already_has_is_not_logged_again(cfg, client):
    """A crash after an epoch's metrics were sent but before its checkpoint was written reruns that epoch."""
    with tracking.job_run(cfg, kind="train") as run_id:
        checkpoint = _fit(cfg, run_id, epochs=1)
        tracking.log_metrics(run_id, {"train/loss": 9.0, "epoch": 1.0}, step=1)  # epoch 1 "sent, then killed"
    with tracking.job_run(cfg, kind="train", run_id=run_id):
        _fit(cfg, run_id, epochs=3, ckpt_path=checkpoint.last_model_path)
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [0, 1, 2]


def test_metrics_survive_a_store_outage_in_the_checkpoint(cfg, client, monkeypatch):
    real = callback._log_batch

    def down(client_, run_id, *, metrics=None, **kw):
        if metrics:
            raise ConnectionError("store down")
        return real(client_, run_id, metrics=metrics, **kw)

    with tracking.job_run(cfg, kind="train") as run_id:
        monkeypatch.setattr(callback, "_log_batch", down)
        checkpoint = _fit(cfg, run_id, epochs=2)  # training goes on; both epochs ride in the checkpoint
        monkeypatch.setattr(callback, "_log_batch", real)
        assert client.get_metric_history(run_id, "train/loss") == []
        state = torch.load(checkpoint.last_model_path, weights_only=True)[tracking.CHECKPOINT_KEY]
        assert [step for step, _ in state["pending"]] == [0, 1]
        _fit(cfg, run_id, epochs=3, ckpt_path=checkpoint.last_model_path)
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [0, 1, 2]


# ---------------------------------------------------------------- models and the registry


def test_logged_model_round_trips_through_pyfunc_and_the_registry_alias(cfg, client):
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with tracking.job_run(cfg, kind="train") as run_id:
        uri = tracking.log_model(run_id, net, torch.zeros(2, 4))
        version = tracking.register_model(uri, name=tracking.registered_model_name(cfg), run_id=run_id)
    name = tracking.registered_model_name(cfg)
    assert name == "dlforge-mlp"
    assert str(client.get_model_version_by_alias(name, "candidate").version) == version
    assert client.get_model_version(name, version).tags["dlforge.source_run_id"] == run_id
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    expected = net(torch.from_numpy(x)).detach().numpy()
    import mlflow

    for model_uri in (uri, f"models:/{name}@candidate"):
        predicted = mlflow.pyfunc.load_model(model_uri).predict(x)
        np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-6)
    assert client.get_run(run_id).info.status == "FINISHED"


def test_set_alias_moves_it(cfg, client):
    net = nn.Linear(4, 1)
    with tracking.job_run(cfg, kind="train") as run_id:
        uri = tracking.log_model(run_id, net, torch.zeros(2, 4))
        first = tracking.register_model(uri, name="m", run_id=run_id)
        second = tracking.register_model(uri, name="m", run_id=run_id, alias=None)
    tracking.set_alias("m", "champion", first)
    assert str(client.get_model_version_by_alias("m", "candidate").version) == first
    tracking.set_alias("m", "candidate", second)
    assert str(client.get_model_version_by_alias("m", "candidate").version) == second
    assert str(client.get_model_version_by_alias("m", "champion").version) == first


# ---------------------------------------------------------------- plots


def test_review_plots_are_written(tmp_path):
    history = {"train/loss": [(0, 1.0), (1, 0.5)], "val/loss": [(0, 1.1), (1, 0.7)], "val/acc": [(0, 0.6), (1, 0.8)]}
    assert plot_learning_curves(history, tmp_path / "curves.png").stat().st_size > 1000
    y, pred = np.array([0, 1, 2, 2, 1]), np.array([0, 1, 1, 2, 1])
    files = classification_review(y, pred, ["a", "b", "c"], tmp_path)
    assert [f.name for f in files] == ["confusion_matrix.png", "classification_report.json", "classification_report.md"]
    assert "| c | 1.000 | 0.500 |" in (tmp_path / "classification_report.md").read_text()
    assert plot_residuals(np.arange(5.0), np.arange(5.0) + 0.1, tmp_path / "res.png").stat().st_size > 1000


@pytest.mark.parametrize("k", [2, 12, 25])
def test_confusion_matrix_fits_long_and_many_class_names(tmp_path, k):
    names = [f"a rather long class name {i}" for i in range(k)]
    y = np.arange(60) % k
    path = classification_review(y, np.roll(y, 1), names, tmp_path)[0]
    from PIL import Image

    width, height = Image.open(path).size
    assert width > height > 300  # the square matrix plus its colorbar: wider than high


def test_experiment_url_opens_the_runs_table():
    assert tracking.experiment_url("http://127.0.0.1:5000/", "7") == "http://127.0.0.1:5000/#/experiments/7/runs"


def test_resolve_checkpoint_from_a_run_id_or_a_registry_alias(cfg, tmp_path):
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"weights")
    with tracking.job_run(cfg, kind="train") as run_id:
        tracking.log_artifact(run_id, ckpt, "checkpoints")
        uri = tracking.log_model(run_id, nn.Linear(4, 2), torch.zeros(2, 4))
        tracking.register_model(uri, name="resolve", run_id=run_id)
    for ref in (run_id, "models:/resolve@candidate", "models:/resolve/1"):
        path, source = tracking.resolve_checkpoint(ref, cfg, dest=tmp_path / ref.replace("/", "_").replace(":", ""))
        assert Path(path).name == "best.ckpt" and Path(path).read_bytes() == b"weights" and source == run_id
    with pytest.raises(InputError, match="not a registered model"):
        tracking.resolve_checkpoint("models:/nope@candidate", cfg)


@pytest.mark.parametrize(
    ("experiment", "family", "name"),
    [("digits-cnn", "cnn", "digits-cnn"), ("dlforge", "mlp", "dlforge-mlp"), ("digits-gru", "rnn", "digits-gru-rnn")],
)
def test_registered_names_do_not_repeat_the_family(experiment, family, name):
    cfg = build_config({}, {"tracking.experiment": experiment, "model.family": family})
    assert tracking.registered_model_name(cfg) == name


def test_trial_run_names_fit_the_runs_table():
    from pipelines.sweep import trial_run_name

    assert trial_run_name("ba4f0_00003") == "trial 3" and trial_run_name("odd") == "trial odd"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_onnx_model_logs_as_one_file_and_round_trips(cfg, tmp_path):
    import mlflow

    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh()).eval()
    path = tmp_path / "net.onnx"
    torch.onnx.export(
        net, (torch.zeros(2, 4),), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "b"}}
    )
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    expected = net(torch.from_numpy(x)).detach().numpy()
    warned = _Records()
    logging.getLogger("mlflow.onnx").addHandler(warned)  # mlflow's loggers do not propagate to caplog's root
    with tracking.job_run(cfg, kind="export") as run_id:
        uri = tracking.log_onnx_model(run_id, path, name="onnx", input_example=x[:2], output_example=expected[:2])
        tracking.register_model(uri, name="onnx-net", run_id=run_id, alias="int8")
    local = tracking.download_onnx("models:/onnx-net@int8", cfg, dest=tmp_path / "dl")
    assert local.suffix == ".onnx" and [p.suffix for p in local.parent.iterdir() if p.is_file()].count(".onnx") == 1
    predicted = mlflow.pyfunc.load_model("models:/onnx-net@int8").predict(x)
    logging.getLogger("mlflow.onnx").removeHandler(warned)
    assert not [r.getMessage() for r in warned.records if r.levelno >= logging.WARNING]  # no "CUDA unavailable"
    predicted = next(iter(predicted.values())) if isinstance(predicted, dict) else predicted
    np.testing.assert_allclose(np.asarray(predicted), expected, rtol=1e-5, atol=1e-6)


def test_promote_best_moves_the_alias_to_the_best_version_that_passed(cfg, client):
    with tracking.job_run(cfg, kind="train") as run_id:
        uri = tracking.log_model(run_id, nn.Linear(4, 1), torch.zeros(2, 4))
        for acc, gates in ((0.90, "passed"), (0.99, "failed"), (0.95, "passed")):
            version = tracking.register_model(uri, name="promo", run_id=run_id, tags={"metric.test/acc": acc})
            tracking.tag_model_version("promo", version, {"dlforge.gates": gates})
    table = tracking.promote_best("promo", "champion", metric="test/acc", mode="max")
    assert str(client.get_model_version_by_alias("promo", "champion").version) == "3"
    assert str(table["champion"]) == "3"


def test_dataset_names_read_as_a_reviewer_would_name_them():
    from pipelines.tracking.runs import dataset_name

    assert dataset_name("builtin:digits") == "digits"
    assert dataset_name("/data/signals.npz") == "signals"
    assert dataset_name("examples/my_datamodule.py:MyDataModule") == "MyDataModule"
    assert dataset_name("mypkg.data:ShardedImages") == "ShardedImages"


def test_the_source_column_names_the_dlforge_command(store, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from pipelines import tracking
    from pipelines.config import load_config

    monkeypatch.setattr("sys.argv", ["/x/pipelines/__main__.py", "train", "configs/a.yaml", "seed=1"])
    cfg = load_config(None, [f"tracking.uri={store}", f"output_dir={tmp_path}"])
    with tracking.job_run(cfg, kind="train") as run_id:
        pass
    tags = MlflowClient(tracking_uri=store).get_run(run_id).data.tags
    assert tags["mlflow.source.name"] == "dlforge train" and tags["mlflow.source.type"] == "LOCAL"
