"""Shared fixtures: one shrunk config reused by every test, and a CLI runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli import main

os.environ.setdefault("PYTHONWARNINGS", "ignore")


@pytest.fixture
def tiny(tmp_path: Path) -> list[str]:
    """Overrides that shrink any job to seconds: one epoch, small batches limited, tracking off, output in tmp."""
    return shrunk(tmp_path)


def shrunk(folder: Path) -> list[str]:
    """``tiny``'s overrides, writing under ``folder / 'out'``."""
    return [
        f"output_dir={folder / 'out'}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=2",
        "data.batch_size=32",
        "tracking.enabled=false",
    ]


@pytest.fixture(scope="session")
def digits_cnn_checkpoint(tmp_path_factory) -> Path:
    """A CNN trained briefly (``tiny``) on digits, once per session: the teacher the compress tests start from."""
    folder = tmp_path_factory.mktemp("digits_cnn")
    assert main(["train", *shrunk(folder), "data.source=builtin:digits", "model.family=cnn"]) == 0
    return folder / "out" / "checkpoints" / "best.ckpt"


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared two-core machine small nets train several times faster than with two."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cli(capsys):
    """Run ``dlforge`` in-process; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def run_dlforge(*args: str, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``dlforge`` in a child process (needed for DDP, which re-launches the command per rank)."""
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory) -> Path:
    """An empty MLflow store with its tables made once: the migrations take seconds, a file copy takes none."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("store") / "template.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(tmp_path: Path, migrated_db: Path) -> str:
    """A fresh sqlite tracking store in ``tmp_path`` (pass it as ``tracking.uri``)."""
    shutil.copyfile(migrated_db, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"
