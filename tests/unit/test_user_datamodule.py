"""A user's LightningDataModule as ``data.source``: imported by class path, arguments checked before anything runs,
the spec read from one batch, and streamed data trained on without ever being gathered."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as L
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from dl_lightning.data.class_path import anchored, check_arguments, import_class_path, is_class_spec
from dl_lightning.errors import InputError
from pipelines.config import load_config
from pipelines.train import load_data, train

ROOT = Path(__file__).resolve().parents[2]
HERE = "tests.unit.test_user_datamodule"
EXAMPLE = "examples/my_datamodule.py:MyDataModule"
STREAMED = {"train": 0, "val": 0, "test": 0}  # examples each stream has made, across the test session


class _Stream(IterableDataset):
    """``total`` examples made on the fly, two classes split by a line. No ``__len__``: ``len()`` on it raises."""

    def __init__(self, split: str, total: int, seed: int) -> None:
        self.split, self.total, self.seed = split, total, seed

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(self.total):
            x = torch.randn(8, generator=generator)
            STREAMED[self.split] += 1
            yield x, int(x[0] + x[1] > 0)


class StreamingNoTest(L.LightningDataModule):
    """Train data far too large to hold (10¹² examples), streamed; a finite val stream; no test loader."""

    num_classes = 2

    def __init__(self, batch_size: int = 32, train_examples: int = 10**12) -> None:
        super().__init__()
        self.batch_size, self.train_examples = batch_size, train_examples

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Stream("train", self.train_examples, 0), batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Stream("val", 256, 1), batch_size=self.batch_size)


class Streaming(StreamingNoTest):
    def test_dataloader(self) -> DataLoader:
        return DataLoader(_Stream("test", 320, 2), batch_size=self.batch_size)


class Tensors(L.LightningDataModule):
    """In-memory batches of any shape and target type, for reading specs."""

    def __init__(self, shape: tuple = (4,), targets: str = "int", classes: int = 3, size: int = 24) -> None:
        super().__init__()
        x = torch.randn(size, *shape)
        y = torch.arange(size) % classes if targets == "int" else torch.randn(size)
        self.data = TensorDataset(x, y)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=8)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=8)


class DictBatches(Tensors):
    def train_dataloader(self) -> DataLoader:
        return DataLoader([{"x": torch.zeros(3)}] * 4, batch_size=2)


class NeedsRoot(Tensors):
    def __init__(self, root: str, batch_size: int = 8) -> None:
        super().__init__()


@pytest.fixture(autouse=True)
def _in_the_project(monkeypatch):
    monkeypatch.chdir(ROOT)  # the example is named as a user in the project folder names it


def _cfg(source: str, *overrides: str, tmp_path=None):
    out = [f"output_dir={tmp_path / 'out'}"] if tmp_path else []
    return load_config(None, [f"data.source={source}", "model.family=mlp", "tracking.enabled=false", *out, *overrides])


# ---------------------------------------------------------------- class paths


def test_class_specs_are_told_from_other_sources():
    assert is_class_spec("pkg.mod:Class") and is_class_spec("a/b/file.py:Class")
    assert not is_class_spec("builtin:digits") and not is_class_spec("data.csv") and not is_class_spec("x.py:1a")


def test_a_file_is_imported_once_and_a_relative_one_is_anchored(tmp_path, monkeypatch):
    (tmp_path / "mine.py").write_text("class Mine:\n    pass\n")
    monkeypatch.chdir(tmp_path)
    first = import_class_path("mine.py:Mine")
    assert first is import_class_path(f"{tmp_path}/mine.py:Mine")  # one module per file: the same class
    assert anchored("mine.py:Mine") == f"{tmp_path}/mine.py:Mine"
    assert anchored("pkg.mod:Mine") == "pkg.mod:Mine" and anchored("builtin:digits") == "builtin:digits"


def test_a_package_in_the_working_folder_imports(tmp_path, monkeypatch):
    (tmp_path / "userpkg_h2").mkdir()
    (tmp_path / "userpkg_h2" / "__init__.py").write_text("")
    (tmp_path / "userpkg_h2" / "dm.py").write_text("class Data:\n    pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    monkeypatch.setenv("PYTHONPATH", "")
    assert import_class_path("userpkg_h2.dm:Data").__name__ == "Data"


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("examples/my_datamodule.py:MyDataModul", "did you mean examples/my_datamodule.py:MyDataModule"),
        ("examples/missing.py:X", "file 'examples/missing.py' not found"),
        ("no_such_pkg_h2.mod:X", "no module named 'no_such_pkg_h2'"),
        ("examples/my_datamodule.py:1", "is not a class path"),
    ],
)
def test_a_bad_class_path_is_one_line(spec, says):
    with pytest.raises(InputError, match=says.replace(".", r"\.")):
        import_class_path(spec, "data.source")


def test_a_module_that_fails_to_import_shows_its_error(tmp_path):
    (tmp_path / "broken.py").write_text("raise RuntimeError('no GPU here')\n")
    with pytest.raises(InputError, match="importing .*broken.py failed: RuntimeError: no GPU here"):
        import_class_path(f"{tmp_path}/broken.py:X", "data.source")


def test_arguments_are_checked_against_the_signature():
    with pytest.raises(
        InputError, match=r"batchsize is not an argument of NeedsRoot; did you mean data.args.batch_size\?"
    ):
        check_arguments(NeedsRoot, {"root": "/d", "batchsize": 8}, "data.args")
    with pytest.raises(InputError, match=r"NeedsRoot needs the argument 'root'; set data.args.root=\.\.\."):
        check_arguments(NeedsRoot, {"batch_size": 8}, "data.args")
    check_arguments(NeedsRoot, {"batch_size": 8}, "data.args", provided={"root"})
    check_arguments(type("Any", (), {"__init__": lambda self, **kw: None}), {"whatever": 1}, "data.args")


# ---------------------------------------------------------------- the spec from one batch


def test_the_example_gives_the_spec_built_in_data_would():
    data = load_data(_cfg(EXAMPLE, "data.args.batch_size=16"))
    spec = data.spec
    assert (spec.kind, spec.task, spec.input_shape, spec.num_outputs) == ("tabular", "classification", (64,), 10)
    assert spec.mean == () and spec.fingerprint and data.has_test
    assert data.datamodule.batch_size == 16  # data.args reached the constructor


@pytest.mark.parametrize(
    ("args", "overrides", "expect"),
    [
        ("shape=[1,6,6]", ["data.num_classes=3"], ("image", "classification", (1, 6, 6), 3)),
        ("shape=[5,2]", ["data.num_classes=4"], ("sequence", "classification", (5, 2), 4)),
        ("targets=float", [], ("tabular", "regression", (4,), 1)),
        ("targets=int", ["data.task=regression"], ("tabular", "regression", (4,), 1)),
    ],
)
def test_kind_task_and_classes_come_from_the_batch_or_the_config(args, overrides, expect):
    key, value = args.split("=")
    spec = load_data(_cfg(f"{HERE}:Tensors", f"data.args.{key}={value}", *overrides)).spec
    assert (spec.kind, spec.task, spec.input_shape, spec.num_outputs) == expect


def test_classes_are_never_guessed_from_the_labels_seen():
    with pytest.raises(InputError, match="one batch cannot tell how many classes there are; set data.num_classes=N"):
        load_data(_cfg(f"{HERE}:Tensors"))
    with pytest.raises(InputError, match=r"a label 2 is outside 0\.\.1; set data.num_classes"):
        load_data(_cfg(f"{HERE}:Tensors", "data.num_classes=2"))


@pytest.mark.parametrize(
    ("source", "overrides", "says"),
    [
        (f"{HERE}:DictBatches", ["data.num_classes=3"], r"must be \(inputs, targets\) tensor pairs; .* gave dict"),
        (f"{HERE}:_Stream", [], "is a _Stream, not a LightningDataModule"),
        (f"{HERE}:Tensors", ["data.batch_size=16"], "data.batch_size configures dlforge's own .*data.args.batch_size"),
        (f"{HERE}:Tensors", ["data.augment.flip=true"], "data.augment configures dlforge's own loaders"),
        (f"{HERE}:Tensors", ["data.kind=image", "data.num_classes=3"], "data.kind=image but .* yields tabular inputs"),
        (f"{HERE}:Tensors", ["data.args.shape=[2,2,2,2]", "data.num_classes=3"], r"inputs of shape \(8, 2, 2, 2, 2\)"),
        (f"{HERE}:NeedsRoot", [], r"NeedsRoot needs the argument 'root'; set data.args.root"),
    ],
)
def test_bad_datamodules_are_refused_in_one_line(source, overrides, says):
    with pytest.raises(InputError, match=says):
        load_data(_cfg(source, *overrides))


def test_cli_refuses_a_typo_in_data_args_before_writing_anything(tmp_path, cli):
    code, _, err = cli("train", f"data.source={EXAMPLE}", "data.args.batchsize=32", f"output_dir={tmp_path / 'o'}")
    assert code == 2 and err.strip().splitlines() == [
        "dlforge: error: data.args.batchsize is not an argument of MyDataModule; did you mean data.args.batch_size?"
    ]
    assert not (tmp_path / "o").exists()


def test_args_are_a_mapping_in_yaml_and_keys_on_the_command_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"data:\n  source: {EXAMPLE}\n  args: {{batch_size: 16, as_images: true}}\n")
    cfg = load_config(path, ["data.args.batch_size=8"])
    assert cfg.data.args == {"batch_size": 8, "as_images": True}
    assert cfg.flat()["data.args.batch_size"] == 8


# ---------------------------------------------------------------- streamed data: trained on, never gathered


def test_a_streamed_datamodule_trains_without_being_read_whole(tmp_path):
    cfg = _cfg(
        f"{HERE}:Streaming",
        "model.mlp.hidden=[32]",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=20",
        "optim.lr=0.01",
        "trainer.accelerator=cpu",
        tmp_path=tmp_path,
    )
    before = dict(STREAMED)
    result = train(cfg)
    made = STREAMED["train"] - before["train"]
    # two epochs of 20 batches, the batch read for the spec, one batch of look-ahead per epoch: of 10¹² examples
    assert 0 < made <= (2 * (20 + 1) + 1) * 32
    assert STREAMED["test"] - before["test"] == 320  # tested on its own test loader, whole
    assert result.data["input_shape"] == [8] and result.data["num_outputs"] == 2
    assert result.metrics["test/acc"] > 0.85  # a line in 8-D: chance is 0.5 (0.97 measured)


def test_without_a_test_loader_the_val_loader_is_tested_and_the_user_is_told(tmp_path, capsys):
    cfg = _cfg(f"{HERE}:StreamingNoTest", "trainer.max_epochs=1", "trainer.limit_train_batches=5", tmp_path=tmp_path)
    result = train(cfg)
    assert "has no test_dataloader; test metrics are computed on its val loader" in capsys.readouterr().out
    assert "test/acc" in result.metrics


def test_compress_probes_the_val_and_test_loaders_only(tmp_path):
    from pipelines.compression.measure import PARITY_BATCHES, make_probe

    cfg = _cfg(f"{HERE}:Streaming", "compress.calibration_batches=3", tmp_path=tmp_path)
    data = load_data(cfg)
    train_before = STREAMED["train"]
    teacher = SimpleNamespace(family="mlp", record=SimpleNamespace(generative=False))  # only what a probe asks
    probe = make_probe(cfg, teacher, data)
    assert STREAMED["train"] == train_before  # the train stream is not touched
    assert len(probe.calibration) == 3 and all(b.shape == (32, 8) for b in probe.calibration)
    assert len(probe.parity) == PARITY_BATCHES + 1 and probe.parity[-1].shape == (1, 8)
    assert probe.test_x.shape == (320, 8) and probe.test_y.dtype.kind == "i" and probe.task == "classification"


def test_a_sweep_may_vary_the_datamodule_arguments():
    from pipelines.sweep import plan_sweep

    space = {"data": {"args": {"batch_size": {"choice": [16, 32]}}}, "optim.lr": {"loguniform": [1e-4, 1e-2]}}
    plan = plan_sweep(load_config(None, [f"data.source={EXAMPLE}", "model.family=mlp"], {"tune.space": space}))
    assert set(plan.space) == {"data.args.batch_size", "optim.lr"}
    for key in ("data.args.batchsize", "data.batch_size"):  # dlforge's loader key does not apply: the closest does
        with pytest.raises(InputError, match="did you mean 'data.args.batch_size'"):
            plan_sweep(load_config(None, [f"data.source={EXAMPLE}"], {"tune.space": {key: {"choice": [16, 32]}}}))


def test_the_default_space_sweeps_the_datamodule_batch_size():
    from pipelines.sweep import plan_sweep

    plan = plan_sweep(_cfg(EXAMPLE))
    assert "data.args.batch_size" in plan.space and "data.batch_size" not in plan.space
    assert plan.space["data.args.batch_size"].values == (32, 64, 128)


def test_a_family_that_cannot_take_the_batches_names_those_that_can(cli, tmp_path):
    code, _, err = cli("train", f"data.source={EXAMPLE}", "model.family=rnn", f"output_dir={tmp_path / 'o'}")
    assert code == 2 and "yields tabular batches of (64,) per example; use model.family=mlp" in err
    assert "data.kind" not in err and not (tmp_path / "o").exists()
