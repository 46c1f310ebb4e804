"""Keep DESIGN.md's walls standing: imports run pipelines → tune → dl_lightning, and only one module imports mlflow."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = {"mlflow", "ray", "onnx", "onnxruntime"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", modules("dl_lightning"), ids=lambda p: str(p.relative_to(ROOT)))
def test_dl_lightning_is_pure_modelling(path):
    assert not imports_of(path) & (HEAVY | {"pipelines", "tune"})


@pytest.mark.parametrize("path", modules("tune"), ids=lambda p: str(p.relative_to(ROOT)))
def test_tune_does_not_import_pipelines_or_mlflow(path):
    assert not imports_of(path) & {"pipelines", "mlflow"}


def test_only_tracking_imports_mlflow():
    importers = [p.relative_to(ROOT).as_posix() for p in modules("pipelines") if "mlflow" in imports_of(p)]
    assert importers in ([], ["pipelines/tracking.py"])


def test_only_export_and_compress_import_onnx():
    allowed = {"pipelines/export.py", "pipelines/compress.py", "pipelines/predict.py"}
    importers = {
        p.relative_to(ROOT).as_posix() for p in modules("pipelines") if imports_of(p) & {"onnx", "onnxruntime"}
    }
    assert importers <= allowed
