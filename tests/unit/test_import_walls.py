"""Keep DESIGN.md's walls standing: imports run pipelines → tune → dl_lightning, only the tracking package imports
mlflow, tracking imports no stage, and evaluation after a fit (``pipelines/review.py``) imports no mlflow."""

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
    assert [p for p in importers if not p.startswith("pipelines/tracking/")] == []


# What tracking may import from pipelines: the config, process bookkeeping and the version; never a stage.
TRACKING_MAY_IMPORT = {"pipelines.config", "pipelines.processes", "pipelines.version"}


def pipelines_imports_of(path: Path) -> set[str]:
    """Full names of the ``pipelines`` modules ``path`` imports (``from pipelines import x`` → ``pipelines.x``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module == "pipelines" and node.level == 0:
            names.update(f"pipelines.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n for n in names if n.startswith("pipelines.")}


@pytest.mark.parametrize("path", modules("pipelines/tracking"), ids=lambda p: str(p.relative_to(ROOT)))
def test_tracking_imports_no_stage(path):
    stages = {n for n in pipelines_imports_of(path) if not n.startswith("pipelines.tracking")} - TRACKING_MAY_IMPORT
    assert stages == set()


def test_review_imports_no_mlflow_nor_tracking():
    path = ROOT / "pipelines" / "review.py"
    assert "mlflow" not in imports_of(path)
    assert not any(n.startswith("pipelines.tracking") for n in pipelines_imports_of(path))


def test_only_export_and_compression_import_onnx():
    allowed = {"pipelines/export.py", "pipelines/predict.py"}
    importers = {
        p.relative_to(ROOT).as_posix() for p in modules("pipelines") if imports_of(p) & {"onnx", "onnxruntime"}
    }
    assert {p for p in importers if not p.startswith("pipelines/compression/")} <= allowed


@pytest.mark.parametrize("name", ["__init__", "results", "tables"])
def test_compression_tables_load_without_torch_or_onnx(name):
    """The pipeline report reads its tables from here: they must not pull in torch, Lightning or ONNX."""
    path = ROOT / "pipelines" / "compression" / f"{name}.py"
    assert not imports_of(path) & (HEAVY | {"torch", "lightning"})
    local = {n for n in _local_imports(path) if n.startswith("pipelines.compression.")}
    assert local <= {"pipelines.compression.results"}


def _local_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
