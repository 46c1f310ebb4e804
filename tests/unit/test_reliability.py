"""Reliability and security, fast: NaN/Inf loss, SIGTERM, hostile checkpoints, bad input to every command.

The slow, real-process versions (kill -9, SIGTERM from outside, 8 concurrent writers, a hung sweep trial) are in
tests/integration/test_faults.py.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from mlflow import MlflowClient
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pipelines import guards, tracking
from pipelines.guards import NonFiniteLossError, NonFiniteLossGuard

BATCHES = 4  # per epoch in the tiny Lightning fits below


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)


def only_run(store: str):
    client = MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("dlforge").experiment_id])
    return client, run


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("dlforge:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------- NaN / Inf loss


class Diverging(L.LightningModule):
    """A linear model whose loss turns ``value`` (nan or inf) at global step ``bad_step``."""

    def __init__(self, bad_step: int, value: float = float("nan")) -> None:
        super().__init__()
        self.net, self.bad_step, self.value = nn.Linear(4, 1), bad_step, value

    def training_step(self, batch, batch_idx):
        loss = nn.functional.mse_loss(self.net(batch[0]), batch[1])
        return loss * self.value if self.global_step == self.bad_step else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit_tiny(module: L.LightningModule, tmp_path: Path, callbacks: list, epochs: int = 3) -> ModelCheckpoint:
    data = TensorDataset(torch.randn(8 * BATCHES, 4), torch.randn(8 * BATCHES, 1))
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="latest", save_last=True)
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[checkpoint, *callbacks],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, DataLoader(data, batch_size=8))
    return checkpoint


@pytest.mark.parametrize("every", [None, 50], ids=["cpu-every-step", "device-buffered"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_loss_names_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path, every, value):
    bad_step = BATCHES + 2  # the third batch of epoch 2
    with pytest.raises(NonFiniteLossError, match=rf"loss became {value} at epoch 2, step {bad_step + 1};"):
        fit_tiny(Diverging(bad_step, value), tmp_path, [NonFiniteLossGuard(check_every_n_steps=every)])
    kept = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert (kept["epoch"], kept["global_step"]) == (0, BATCHES)  # written after epoch 1, never overwritten
    assert all(torch.isfinite(t).all() for t in kept["state_dict"].values())


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    class Poisoned(Callback):  # weights go NaN with a finite loss: only the save-time check can see it
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                with torch.no_grad():
                    pl_module.net.weight.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match="weights became non-finite by epoch 2"):
        fit_tiny(Diverging(bad_step=-1), tmp_path, [NonFiniteLossGuard(), Poisoned()])
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["epoch"] == 0


def test_nan_loss_from_the_cli_is_one_line_exit_1_and_the_run_failed(cli, tmp_path, store):
    out = tmp_path / "out"
    code, _, err = cli(
        "train",
        "model.family=mlp",
        "data.source=builtin:wine",
        "optim.lr=1e30",  # valid input (lr > 0) that diverges: exit 1, not 2
        "trainer.max_epochs=3",
        f"output_dir={out}",
        f"tracking.uri={store}",
    )
    assert code == 1
    assert one_error_line(err).startswith("dlforge: error: loss became nan at epoch 1, step ")
    assert "optim.lr" in err
    _, run = only_run(store)
    assert run.info.status == "FAILED" and run.data.tags["dlforge.error"].startswith("NonFiniteLossError")
    for path in (out / "checkpoints").glob("*.ckpt"):  # whatever was written is a finite, good state
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values())
    assert not (out / "summary.json").exists()


# ---------------------------------------------------------------- SIGTERM


class SigtermAt(Callback):
    """Sends this process SIGTERM after global step ``step`` — what SLURM does to a preempted job."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_saves_last_ckpt_at_the_signal_exits_143_and_marks_the_run_killed(cli, tmp_path, store, monkeypatch):
    original = tracking.lightning_callbacks
    monkeypatch.setattr(tracking, "lightning_callbacks", lambda cfg, run_id: [SigtermAt(5), *original(cfg, run_id)])
    out = tmp_path / "out"
    args = ["model.family=mlp", "data.source=builtin:iris", "data.batch_size=16", f"output_dir={out}"]
    code, _, err = cli("train", *args, "trainer.max_epochs=4", f"tracking.uri={store}")
    assert code == 143
    assert "stopped by SIGTERM" in one_error_line(err)
    saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 5  # the state at the signal: mid-epoch 2 (4 batches per epoch), not epoch 1's
    client, run = only_run(store)
    assert run.info.status == "KILLED"
    assert saved[tracking.CHECKPOINT_KEY]["run_id"] == run.info.run_id

    monkeypatch.setattr(tracking, "lightning_callbacks", original)
    code, _, err = cli("train", *args, "trainer.max_epochs=4", f"tracking.uri={store}", "--resume", "auto")
    assert code == 0, err
    _, run = only_run(store)  # still one run: the requeued job continued it
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")]
    assert sorted(steps) == [0, 1, 2, 3]


def test_sigterm_outside_lightning_raises_sigterm_exception():
    with pytest.raises(SIGTERMException), guards.sigterm_exits():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):  # the handler runs between bytecodes of the main thread
            sum(range(1000))
    assert signal.getsignal(signal.SIGTERM) is not None


def test_an_exit_after_sigterm_is_the_signals_whatever_raised_it():
    from pipelines.cli import _preempted

    with pytest.raises(SIGTERMException), guards.sigterm_exits():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):
            sum(range(1000))
    assert _preempted(SystemExit(1))  # Ray's exit for a signal that came while it waited in C++
    with guards.sigterm_exits():  # the next command starts clean
        assert not _preempted(SystemExit(1))


def test_resume_auto_takes_the_newest_of_last_and_a_slurm_requeue_save(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    last, hpc = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "hpc_ckpt_1.ckpt"
    assert guards.newest_checkpoint(tmp_path / "checkpoints", tmp_path) is None
    torch.save({"epoch": 1}, last)
    torch.save({"epoch": 2}, hpc)
    os.utime(last, (1, 1))
    assert guards.newest_checkpoint(tmp_path / "checkpoints", tmp_path) == hpc
    os.utime(hpc, (0, 0))
    assert guards.newest_checkpoint(tmp_path / "checkpoints", tmp_path) == last


# ---------------------------------------------------------------- hostile checkpoints


class Payload:
    """Unpickling this runs ``touch <marker>``: what a hostile checkpoint does to ``torch.load(weights_only=False)``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Path, Path]:
    marker = Path(f"/tmp/pwned-{uuid.uuid4().hex}")
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "dlforge_family": "mlp", "hyper_parameters": Payload(marker)}, path)
    yield path, marker
    assert not marker.exists(), "the hostile checkpoint ran code"
    marker.unlink(missing_ok=True)


def test_train_resume_refuses_a_hostile_checkpoint(cli, tiny, hostile):
    path, marker = hostile
    code, _, err = cli("train", *tiny, "model.family=mlp", "data.source=builtin:iris", "--resume", str(path))
    assert code == 2
    line = one_error_line(err)
    assert "refusing checkpoint" in line and "it would load posix.system" in line
    assert not marker.exists()


def test_train_resume_auto_refuses_a_hostile_last_ckpt(cli, tiny, tmp_path, hostile):
    path, marker = hostile
    (tmp_path / "out" / "checkpoints").mkdir(parents=True)
    path.rename(tmp_path / "out" / "checkpoints" / "last.ckpt")
    code, _, err = cli("train", *tiny, "model.family=mlp", "data.source=builtin:iris", "--resume", "auto")
    assert code == 2 and "refusing checkpoint" in one_error_line(err)
    assert not marker.exists()


def test_load_model_and_lightning_resume_refuse_a_hostile_checkpoint(hostile, tmp_path):
    import pickle

    from dl_lightning.registry import load_model

    path, marker = hostile
    with pytest.raises(pickle.UnpicklingError):
        load_model(str(path))
    with pytest.raises(pickle.UnpicklingError):  # what train's fit_module does: Trainer.fit(weights_only=True)
        fit_tiny_resume(path, tmp_path)
    assert not marker.exists()


def fit_tiny_resume(path: Path, tmp_path: Path) -> None:
    data = DataLoader(TensorDataset(torch.randn(8, 4), torch.randn(8, 1)), batch_size=8)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(Diverging(bad_step=-1), data, ckpt_path=path, weights_only=True)


def test_compress_teacher_refuses_a_hostile_checkpoint(cli, tiny, hostile):
    path, marker = hostile
    code, _, err = cli("compress", *tiny, "data.source=builtin:iris", "--teacher", str(path))
    assert code == 2 and "checkpoint" in one_error_line(err)
    assert not marker.exists()


# ---------------------------------------------------------------- bad input, every command


def _cases(tmp_path: Path) -> dict[str, list[str]]:
    malformed = tmp_path / "bad.yaml"
    malformed.write_text("model: {family: cnn\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    return {
        "malformed yaml": [str(malformed)],
        "wrong type": ["trainer.max_epochs=ten"],
        "negative epochs": ["trainer.max_epochs=-3"],
        "lr zero": ["optim.lr=0"],
        "lr negative": ["optim.lr=-1e-3"],
        "too many devices": [f"trainer.devices={(os.cpu_count() or 1) + 1}", "trainer.strategy=ddp"],
        "unwritable output_dir": [f"output_dir={blocker / 'out'}"],
    }


NEEDLES = {
    "malformed yaml": "not valid YAML",
    "wrong type": "trainer.max_epochs",
    "negative epochs": "trainer.max_epochs",
    "lr zero": "optim.lr",
    "lr negative": "optim.lr",
    "too many devices": "trainer.devices",
    "unwritable output_dir": "output_dir",
}
# what each command needs besides the bad input; show and ui write nothing and start no training
COMMANDS = {
    "train": [],
    "tune": ["tune.num_samples=1"],
    "compress": ["--teacher", "missing.ckpt"],
    "run": [],
    "show": [],
    "ui": ["--port", "1"],
}
NOT_APPLICABLE = {
    ("show", "too many devices"): "show only prints the config",
    ("show", "unwritable output_dir"): "show writes nothing",
    ("ui", "too many devices"): "ui trains nothing",
    ("ui", "unwritable output_dir"): "ui writes nothing",
    ("compress", "too many devices"): "compress trains its student on one process whatever trainer.devices says",
}


@pytest.fixture
def no_processes(monkeypatch):
    """Starting Ray, a subprocess or a server would be a failure: bad input must stop before any of them."""
    import subprocess

    def refuse(*args, **kwargs):
        raise AssertionError(f"started something on bad input: {args[:1]}")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    if "ray" in sys.modules:
        monkeypatch.setattr(sys.modules["ray"], "init", refuse)


@pytest.mark.parametrize("case", list(NEEDLES))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_input_to_every_command_is_one_line_exit_2_nothing_written(
    cli, tmp_path, monkeypatch, no_processes, command, case
):
    if (command, case) in NOT_APPLICABLE:
        pytest.skip(NOT_APPLICABLE[command, case])
    monkeypatch.chdir(tmp_path)
    args = _cases(tmp_path)[case]
    before = sorted(tmp_path.rglob("*"))
    out = [] if any(a.startswith("output_dir=") for a in args) else [f"output_dir={tmp_path / 'out'}"]
    code, _, err = cli(command, *args, *out, "tracking.enabled=false", *COMMANDS[command])
    assert code == 2
    assert NEEDLES[case] in one_error_line(err)
    assert sorted(tmp_path.rglob("*")) == before  # nothing created, not even an empty output_dir


@pytest.mark.parametrize(
    ("case", "needle"),
    [("missing model", "missing.onnx"), ("corrupt model", "corrupt.onnx"), ("unwritable output", "output")],
)
def test_bad_input_to_predict_is_one_line_exit_2_nothing_written(cli, tmp_path, case, needle):
    (tmp_path / "corrupt.onnx").write_bytes(b"not a protobuf")
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    (tmp_path / "a-file").write_text("x")
    model = {"missing model": "missing.onnx", "corrupt model": "corrupt.onnx"}.get(case, "corrupt.onnx")
    output = tmp_path / ("a-file/preds.csv" if case == "unwritable output" else "preds.csv")
    code, _, err = cli("predict", str(tmp_path / model), str(tmp_path / "x.csv"), "--output", str(output))
    assert code == 2
    assert needle in one_error_line(err)
    assert not (tmp_path / "preds.csv").exists()


# ---------------------------------------------------------------- atomic writes


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    from pipelines import outputs

    path = outputs.write_json_atomic(tmp_path / "summary.json", {"v": 1})
    monkeypatch.setattr(outputs.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        outputs.write_json_atomic(path, {"v": 2})
    assert path.read_text() == '{\n  "v": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


# ---------------------------------------------------------------- checkpoint and history integrity


class Worsening(L.LightningModule):
    """Logs ``val/loss`` = the epoch number: the monitor is best after the first epoch and never improves again."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return nn.functional.mse_loss(self.net(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", float(self.current_epoch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def tiny_datamodule() -> L.LightningDataModule:
    data = TensorDataset(torch.randn(8 * BATCHES, 4), torch.randn(8 * BATCHES, 1))
    return L.LightningDataModule.from_datasets(train_dataset=data, val_dataset=data, batch_size=8)


def test_last_ckpt_is_the_last_completed_epoch_when_the_monitor_stopped_improving(tmp_path):
    from pipelines.config import build_config
    from pipelines.train import fit_module

    overrides = {"output_dir": str(tmp_path), "trainer.max_epochs": 4, "trainer.monitor": "val/loss"}
    cfg = build_config({}, {**overrides, "trainer.accelerator": "cpu", "tracking.enabled": False})
    fit_module(cfg, Worsening(), tiny_datamodule(), "regression", test=False)
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert best["epoch"] == 0  # the monitor never improved after the first epoch
    assert (last["epoch"], last["global_step"]) == (3, 4 * BATCHES)  # yet last.ckpt is the fourth, last epoch
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))

    more = build_config({}, {**overrides, "trainer.max_epochs": 5, "trainer.accelerator": "cpu"})
    trainer, _, _ = fit_module(
        more,
        Worsening(),
        tiny_datamodule(),
        "regression",
        resume=str(tmp_path / "checkpoints" / "last.ckpt"),
        test=False,
    )
    assert trainer.global_step == 5 * BATCHES  # continued from the last epoch: one epoch more, none repeated


def test_resume_auto_skips_a_last_ckpt_cut_short_and_takes_best(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save({"epoch": 1}, folder / "best.ckpt")
    assert guards.newest_checkpoint(folder, tmp_path) is None  # no last.ckpt yet: a new fit, not a resume from best
    torch.save({"epoch": 3, "pad": torch.zeros(4096)}, folder / "last.ckpt")
    whole = (folder / "last.ckpt").read_bytes()
    (folder / "last.ckpt").write_bytes(whole[: len(whole) // 2])  # what a full disk left when writing in place
    assert guards.newest_checkpoint(folder, tmp_path) == folder / "best.ckpt"


def half_then_enospc(real_save, epoch: int):
    """``torch.save`` that writes half of epoch ``epoch``'s checkpoint bytes, then fails as a full disk does."""

    def save(obj, f, *args, **kwargs):
        if not (isinstance(obj, dict) and obj.get("epoch") == epoch):
            return real_save(obj, f, *args, **kwargs)
        import io

        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        raise OSError(28, "No space left on device")

    return save


def test_a_full_disk_mid_checkpoint_keeps_the_previous_last_ckpt_exits_1_and_fails_the_run(
    cli, tmp_path, store, monkeypatch
):
    monkeypatch.setattr(torch, "save", half_then_enospc(torch.save, epoch=1))
    out = tmp_path / "out"
    args = ["model.family=mlp", "data.source=builtin:iris", "data.batch_size=16", f"output_dir={out}"]
    code, _, err = cli("train", *args, "trainer.max_epochs=3", f"tracking.uri={store}")
    assert code == 1
    line = one_error_line(err)
    assert line.startswith("dlforge: error: could not write checkpoint ") and "(the disk is full)" in line
    assert line.endswith("the previous one is intact — free space, then rerun with --resume auto")
    kept = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert kept["epoch"] == 0  # the epoch before the failed write, whole
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]  # no temp left
    _, run = only_run(store)
    assert run.info.status == "FAILED"

    monkeypatch.undo()  # space freed: the job continues from the intact file, in the same run
    code, _, err = cli("train", *args, "trainer.max_epochs=3", f"tracking.uri={store}", "--resume", "auto")
    assert code == 0, err
    client, run = only_run(store)
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/acc")) == [0, 1, 2]


def test_a_diverging_run_keeps_no_checkpoint_with_a_nan_loss_or_exploded_weights(cli, tmp_path, store):
    out = tmp_path / "out"
    code, _, err = cli(
        "train",
        "model.family=mlp",
        "data.source=builtin:wine",
        "optim.name=sgd",
        "optim.lr=1e6",  # weights reach ~1e15 after one epoch; val/loss overflows to NaN while val/acc stays finite
        "trainer.max_epochs=6",
        f"output_dir={out}",
        f"tracking.uri={store}",
    )
    assert code == 1
    assert "val/loss became nan by epoch 1" in one_error_line(err)
    for path in (out / "checkpoints").glob("*.ckpt"):
        state = torch.load(path, weights_only=True)["state_dict"]
        assert max(float(t.abs().max()) for t in state.values() if t.is_floating_point()) < 1e6, path
    _, run = only_run(store)
    assert run.info.status == "FAILED"


def test_resuming_a_finished_run_registers_no_second_version_and_logs_test_once(cli, tmp_path, store):
    args = ["model.family=mlp", "data.source=builtin:wine", "trainer.max_epochs=3", "seed=1", "tracking.register=true"]
    args += [f"tracking.uri={store}", f"output_dir={tmp_path / 'o'}"]
    assert cli("train", *args)[0] == 0
    code, out, err = cli("train", *args, "--resume", "auto")
    assert code == 0, err
    assert "version 1" in out
    client, run = only_run(store)
    assert [str(v.version) for v in client.search_model_versions(f"run_id='{run.info.run_id}'")] == ["1"]
    for key in [k for k in run.data.metrics if k.startswith(("test/", "train/", "val/"))]:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), (key, steps)  # no step logged twice
