"""The data layer: every source kind, splits, statistics, vocabulary, bad input, DataModule, augmentation."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as L
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dl_lightning.data import (
    DlforgeDataModule,
    ImageAugment,
    Splits,
    build_vocab,
    encode,
    load_splits,
    tokenize,
)
from dl_lightning.data.augment import add_noise, random_crop, random_flip, random_rotation
from dl_lightning.data.text import UNK_ID
from dl_lightning.errors import InputError

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "rain", "falls"]


# ---------------------------------------------------------------- tiny data, written into tmp_path


def tabular_frame(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    classes = rng.choice(["eel", "cat", "dog"], n)
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.integers(0, 5, size=n), "label": classes})


def text_frame(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    # Row i carries the token "uniqI", seen nowhere else: it is in the vocabulary iff row i is in train.
    texts = [f"uniq{i} " + " ".join(rng.choice(WORDS, 5)) for i in range(n)]
    return pd.DataFrame({"text": texts, "label": ["pos", "neg"] * (n // 2)})


def write_png(path: Path, size: tuple[int, int], mode: str = "L", value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(np.full(shape, value, dtype=np.uint8), mode=mode).save(path)


def image_folder(root: Path, rgb_file: bool = False) -> Path:
    """Three classes of four grayscale PNGs of different sizes; optionally one RGB image."""
    for c, name in enumerate(["ant", "bee", "cow"]):
        for i in range(4):
            write_png(root / name / f"{i}.png", (5 + 3 * i, 7 + i), value=40 * c + i)
    if rgb_file:
        write_png(root / "cow" / "rgb.png", (9, 9), mode="RGB", value=200)
    return root


def save_npz(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return str(path)


def rows(n: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, *shape)).astype(np.float32)


def labels(n: int, classes: int = 2) -> np.ndarray:
    return np.arange(n) % classes


# ---------------------------------------------------------------- builtins


@pytest.mark.parametrize(
    ("name", "kind", "task", "shape", "outputs"),
    [
        ("digits", "image", "classification", (1, 8, 8), 10),
        ("breast_cancer", "tabular", "classification", (30,), 2),
        ("wine", "tabular", "classification", (13,), 3),
        ("iris", "tabular", "classification", (4,), 3),
        ("diabetes", "tabular", "regression", (10,), 1),
    ],
)
def test_builtin_loads_with_kind_task_and_shape(name, kind, task, shape, outputs):
    splits = load_splits(f"builtin:{name}")
    spec = splits.spec
    assert (spec.kind, spec.task, spec.input_shape, spec.num_outputs) == (kind, task, shape, outputs)
    for x, y in (splits.train, splits.val, splits.test):
        assert x.dtype == np.float32 and x.shape[1:] == shape
        assert y.dtype == (np.int64 if task == "classification" else np.float32) and y.shape == (len(x),)
    assert len(spec.mean) == len(spec.std) == shape[0]
    assert len(spec.fingerprint) == 64


def test_digits_keep_raw_pixel_scale_and_class_names():
    splits = load_splits("builtin:digits")
    assert splits.train[0].max() == 16.0 and splits.train[0].min() == 0.0
    assert splits.spec.class_names == tuple(str(d) for d in range(10))
    assert sum(len(x) for x, _ in (splits.train, splits.val, splits.test)) == 1797


def test_builtin_kind_override_reshapes_digits():
    assert load_splits("builtin:digits", kind="tabular").spec.input_shape == (64,)
    assert load_splits("builtin:digits", kind="sequence").spec.input_shape == (8, 8)


# ---------------------------------------------------------------- CSV / Parquet


def test_csv_tabular_with_string_labels(tmp_path):
    path = tmp_path / "data.csv"
    tabular_frame().to_csv(path, index=False)
    splits = load_splits(str(path))
    spec = splits.spec
    assert (spec.kind, spec.task, spec.input_shape) == ("tabular", "classification", (2,))
    assert spec.class_names == ("cat", "dog", "eel")  # sorted, whatever the order in the file
    assert set(np.concatenate([splits.train[1], splits.val[1], splits.test[1]])) == {0, 1, 2}


@pytest.mark.parametrize(("columns", "expected"), [(["x", "target", "z"], "target"), (["x", "y", "z"], "z")])
def test_csv_default_target_is_named_column_else_last(tmp_path, columns, expected):
    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(30, 3)), columns=columns)
    frame[expected] = np.arange(30) % 2
    frame.to_csv(tmp_path / "data.csv", index=False)
    splits = load_splits(str(tmp_path / "data.csv"))
    assert splits.spec.input_shape == (2,) and splits.spec.class_names == ("0", "1")


def test_csv_explicit_target_and_regression_inference(tmp_path):
    frame = tabular_frame().assign(price=np.linspace(0.5, 99.7, 60))
    frame.drop(columns="label").to_csv(tmp_path / "data.csv", index=False)
    splits = load_splits(str(tmp_path / "data.csv"), target="price")
    assert splits.spec.task == "regression" and splits.spec.num_outputs == 1
    assert splits.train[1].dtype == np.float32


def test_parquet_tabular(tmp_path):
    tabular_frame().to_parquet(tmp_path / "data.parquet")
    splits = load_splits(str(tmp_path / "data.parquet"))
    assert (splits.spec.kind, splits.spec.input_shape, splits.spec.num_outputs) == ("tabular", (2,), 3)


def test_csv_as_sequence(tmp_path):
    tabular_frame().to_csv(tmp_path / "data.csv", index=False)
    assert load_splits(str(tmp_path / "data.csv"), kind="sequence").spec.input_shape == (2, 1)


# ---------------------------------------------------------------- NPZ


@pytest.mark.parametrize(
    ("shape", "kind", "expected_kind", "expected_shape"),
    [
        ((6,), None, "tabular", (6,)),
        ((6,), "sequence", "sequence", (6, 1)),
        ((5, 3), None, "sequence", (5, 3)),
        ((5, 3), "image", "image", (1, 5, 3)),
        ((2, 4, 4), None, "image", (2, 4, 4)),
    ],
)
def test_npz_shapes(tmp_path, shape, kind, expected_kind, expected_shape):
    source = save_npz(tmp_path / "d.npz", x=rows(30, *shape), y=labels(30))
    spec = load_splits(source, kind=kind).spec
    assert (spec.kind, spec.input_shape) == (expected_kind, expected_shape)
    stats = {"tabular": expected_shape[-1], "sequence": expected_shape[-1], "image": expected_shape[0]}
    assert len(spec.mean) == stats[expected_kind]


def test_npz_fixed_test_split_is_kept(tmp_path):
    x_test, y_test = rows(7, 4) + 100, np.array([0, 1, 0, 1, 0, 1, 0])
    source = save_npz(tmp_path / "d.npz", x=rows(40, 4), y=labels(40), x_test=x_test, y_test=y_test)
    splits = load_splits(source)
    np.testing.assert_array_equal(splits.test[0], x_test)
    np.testing.assert_array_equal(splits.test[1], y_test)
    assert len(splits.train[0]) + len(splits.val[0]) == 40


def test_npz_float_labels_with_whole_values_are_classes(tmp_path):
    source = save_npz(tmp_path / "d.npz", x=rows(30, 3), y=labels(30, 3).astype(np.float64))
    spec = load_splits(source).spec
    assert spec.task == "classification" and spec.class_names == ("0", "1", "2")


# ---------------------------------------------------------------- image folders


def test_image_folder_grayscale_resized(tmp_path):
    splits = load_splits(str(image_folder(tmp_path / "imgs")), image_size=6)
    spec = splits.spec
    assert (spec.kind, spec.input_shape, spec.class_names) == ("image", (1, 6, 6), ("ant", "bee", "cow"))
    assert splits.train[0].max() > 1  # raw 0..255 pixel scale, not rescaled


def test_image_folder_with_any_rgb_image_is_rgb(tmp_path):
    spec = load_splits(str(image_folder(tmp_path / "imgs", rgb_file=True)), image_size=4).spec
    assert spec.input_shape == (3, 4, 4) and len(spec.mean) == 3


# ---------------------------------------------------------------- text


def test_text_csv_is_inferred_and_encoded(tmp_path):
    text_frame().to_csv(tmp_path / "data.csv", index=False)
    splits = load_splits(str(tmp_path / "data.csv"), max_len=4)
    spec = splits.spec
    assert (spec.kind, spec.input_shape, spec.class_names) == ("text", (4,), ("neg", "pos"))
    assert spec.vocab[:2] == ("<pad>", "<unk>") and spec.mean == ()
    assert splits.train[0].dtype == np.int64 and splits.train[0].shape[1] == 4


def test_text_column_can_be_named_among_several_string_columns(tmp_path):
    frame = text_frame().assign(colour=["red", "blue"] * 20, note=["x"] * 40)
    frame.to_csv(tmp_path / "data.csv", index=False)
    assert load_splits(str(tmp_path / "data.csv"), text_column="text").spec.kind == "text"
    # Three string columns, but only "text" reads as prose.
    assert load_splits(str(tmp_path / "data.csv"), kind="text").spec.kind == "text"


def test_vocabulary_comes_from_train_only(tmp_path):
    text_frame().to_csv(tmp_path / "data.csv", index=False)
    splits = load_splits(str(tmp_path / "data.csv"))
    # Each row starts with its own unique word: known in train, unknown (id 1) in val and test.
    assert (splits.train[0][:, 0] != UNK_ID).all()
    assert (splits.val[0][:, 0] == UNK_ID).all() and (splits.test[0][:, 0] == UNK_ID).all()
    assert sum(token.startswith("uniq") for token in splits.spec.vocab) == len(splits.train[0])


def test_tokenizer_vocab_and_encode():
    assert tokenize("Don't STOP, now!") == ["don't", "stop", "now"]
    vocab = build_vocab(["b a", "a c", "c"], max_vocab=4)
    assert vocab == ("<pad>", "<unk>", "a", "c")  # a and c twice, b once; ties alphabetical; capped at 4
    np.testing.assert_array_equal(encode(["a b c a", ""], vocab, max_len=3), [[2, 1, 3], [0, 0, 0]])


# ---------------------------------------------------------------- splitting and statistics


def test_same_seed_gives_identical_splits_and_other_seed_differs(tmp_path):
    tabular_frame(200).to_csv(tmp_path / "data.csv", index=False)
    first, again = (load_splits(str(tmp_path / "data.csv"), seed=3) for _ in range(2))
    other = load_splits(str(tmp_path / "data.csv"), seed=4)
    for a, b in zip((first.train, first.val, first.test), (again.train, again.val, again.test), strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(first.test[0], other.test[0])
    assert first.spec == again.spec


def test_split_sizes_and_stratification():
    splits = load_splits("builtin:breast_cancer", val_fraction=0.2, test_fraction=0.1)
    sizes = [len(x) for x, _ in (splits.train, splits.val, splits.test)]
    assert sizes == [398, 114, 57]
    overall = np.mean(np.concatenate([splits.train[1], splits.val[1], splits.test[1]]))
    for _, y in (splits.train, splits.val, splits.test):
        assert abs(y.mean() - overall) < 0.02


def test_split_falls_back_to_unstratified_for_a_rare_class(tmp_path):
    y = np.array([0, 1] * 15 + [2])  # class 2 has a single member
    splits = load_splits(save_npz(tmp_path / "d.npz", x=rows(31, 3), y=y))
    assert splits.spec.num_outputs == 3
    assert sum(len(x) for x, _ in (splits.train, splits.val, splits.test)) == 31


def test_normalization_statistics_come_from_train_only(tmp_path):
    x = rows(100, 3)
    x[:, 2] = 5.0  # a constant column
    splits = load_splits(save_npz(tmp_path / "d.npz", x=x, y=labels(100)))
    np.testing.assert_allclose(splits.spec.mean, splits.train[0].mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(splits.spec.std[:2], splits.train[0].std(axis=0)[:2], rtol=1e-5)
    assert splits.spec.std[2] == 1e-6
    assert not np.allclose(splits.spec.mean[:2], x.mean(axis=0)[:2], rtol=1e-4, atol=1e-6)
    assert np.isin(splits.train[0], x).all()  # arrays stay raw; the model normalizes


def test_image_statistics_are_per_channel():
    splits = load_splits("builtin:digits")
    assert splits.spec.mean == pytest.approx((float(splits.train[0].astype(np.float64).mean()),))


def test_fingerprint_tracks_the_data(tmp_path):
    a = load_splits(save_npz(tmp_path / "a.npz", x=rows(30, 3), y=labels(30))).spec.fingerprint
    b = load_splits(save_npz(tmp_path / "b.npz", x=rows(30, 3) + 1, y=labels(30))).spec.fingerprint
    assert a != b and a == load_splits(str(tmp_path / "a.npz"), seed=7).spec.fingerprint


# ---------------------------------------------------------------- bad input: one-line InputError


def _csv(tmp_path: Path, frame: pd.DataFrame) -> str:
    frame.to_csv(tmp_path / "data.csv", index=False)
    return str(tmp_path / "data.csv")


def _file(tmp_path: Path, name: str, content: str = "") -> str:
    (tmp_path / name).write_text(content)
    return str(tmp_path / name)


def _empty_dir(tmp_path: Path) -> str:
    (tmp_path / "imgs").mkdir()
    return str(tmp_path / "imgs")


def _flat_image_dir(tmp_path: Path) -> str:
    write_png(tmp_path / "imgs" / "a.png", (4, 4))
    return str(tmp_path / "imgs")


def _class_without_images(tmp_path: Path) -> str:
    image_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "dog").mkdir()
    return str(tmp_path / "imgs")


def _broken_image(tmp_path: Path) -> str:
    image_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "ant" / "bad.png").write_bytes(b"not a png")
    return str(tmp_path / "imgs")


def _nan_features(tmp_path: Path) -> str:
    frame = tabular_frame()
    frame.loc[[3, 7], "b"] = np.nan
    return _csv(tmp_path, frame)


BAD_INPUTS = {
    "missing file": (lambda p: str(p / "nope.csv"), {}, r"nope\.csv does not exist"),
    "unknown builtin": (lambda p: "builtin:mnist", {}, r"unknown builtin.*'builtin:mnist'.*builtin:digits"),
    "unsupported extension": (lambda p: _file(p, "data.txt"), {}, r"unsupported file type '\.txt'"),
    "absent target": (
        lambda p: _csv(p, tabular_frame()),
        {"target": "y"},
        r"target column 'y' not in data\.csv; columns are: a, b, label — set data\.target",
    ),
    "non-numeric feature": (
        lambda p: _csv(p, tabular_frame().assign(colour="red")),
        {},
        r"feature column 'colour' in data\.csv is not numeric",
    ),
    "NaN feature": (_nan_features, {}, r"feature column 'b' in data\.csv has 2 NaN/Inf values"),
    "NaN array": (
        lambda p: save_npz(p / "d.npz", x=np.full((20, 2), np.nan), y=labels(20)),
        {},
        r"array 'x' in d\.npz has 40 NaN/Inf values",
    ),
    "missing target values": (
        lambda p: _csv(p, tabular_frame().assign(label=["a", None] * 30)),
        {},
        r"target column 'label' .* 30 missing values",
    ),
    "single class": (lambda p: _csv(p, tabular_frame().assign(label="cat")), {}, r"single class \('cat'\)"),
    "empty image folder": (_empty_dir, {}, r"image folder .* is empty"),
    "no class subfolders": (_flat_image_dir, {}, r"no class subfolders"),
    "class folder without images": (_class_without_images, {}, r"class folder 'dog' .* no PNG/JPEG images"),
    "unreadable image": (_broken_image, {}, r"cannot read image .*bad\.png"),
    "npz without y": (lambda p: save_npz(p / "d.npz", x=rows(20, 2)), {}, r"d\.npz has no array y"),
    "npz with x_test only": (
        lambda p: save_npz(p / "d.npz", x=rows(20, 2), y=labels(20), x_test=rows(5, 2)),
        {},
        r"only one of x_test, y_test",
    ),
    "npz x_test shape": (
        lambda p: save_npz(p / "d.npz", x=rows(20, 2), y=labels(20), x_test=rows(5, 3), y_test=labels(5)),
        {},
        r"x_test .* shape \(3,\) but x has \(2,\)",
    ),
    "mismatched lengths": (
        lambda p: save_npz(p / "d.npz", x=rows(20, 2), y=labels(19)),
        {},
        r"'x' has 20 rows but 'y' has 19",
    ),
    "too few rows": (
        lambda p: save_npz(p / "d.npz", x=rows(5, 2), y=labels(5)),
        {},
        r"only 5 rows; at least 10",
    ),
    "not an npz": (lambda p: _file(p, "d.npz", "garbage"), {}, r"cannot read d\.npz as \.npz"),
    "empty csv": (lambda p: _file(p, "data.csv"), {}, r"data\.csv is empty"),
    "unknown kind": (lambda p: "builtin:iris", {"kind": "video"}, r"unknown data kind 'video'"),
    "unknown task": (lambda p: "builtin:iris", {"task": "ranking"}, r"unknown task 'ranking'"),
    "bad fractions": (lambda p: "builtin:iris", {"val_fraction": 0.6, "test_fraction": 0.5}, r"sum below 1"),
    "regression on strings": (
        lambda p: _csv(p, tabular_frame()),
        {"task": "regression"},
        r"task=regression but the targets .* not numeric",
    ),
    "ambiguous integer target": (
        lambda p: save_npz(p / "d.npz", x=rows(300, 2), y=np.arange(300)),
        {},
        r"300 distinct whole-number values — set data\.task",
    ),
    "missing text column": (
        lambda p: _csv(p, text_frame()),
        {"text_column": "body"},
        r"text column 'body' not in data\.csv",
    ),
    "text kind on arrays": (
        lambda p: save_npz(p / "d.npz", x=rows(20, 2), y=labels(20)),
        {"kind": "text"},
        r"d\.npz is tabular data but data\.kind=text",
    ),
    "image kind on tabular": (lambda p: "builtin:iris", {"kind": "image"}, r"cannot be read as image"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_raises_one_line_input_error(tmp_path, case):
    make_source, kwargs, message = BAD_INPUTS[case]
    with pytest.raises(InputError, match=message) as raised:
        load_splits(make_source(tmp_path), **kwargs)
    assert "\n" not in str(raised.value)


# ---------------------------------------------------------------- DataModule


@pytest.fixture(scope="module")
def digits() -> Splits:
    return load_splits("builtin:digits")


def test_datamodule_loaders(digits):
    dm = DlforgeDataModule(digits, batch_size=32)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    val_x, _ = next(iter(dm.val_dataloader()))
    torch.testing.assert_close(val_x, torch.from_numpy(digits.val[0][:32]))  # in order, not shuffled
    (pred_x,) = next(iter(dm.predict_dataloader()))
    torch.testing.assert_close(pred_x, torch.from_numpy(digits.test[0][:32]))
    assert not dm.train_dataloader().persistent_workers
    assert DlforgeDataModule(digits, num_workers=1).test_dataloader().persistent_workers


def test_datamodule_never_leaves_a_batch_of_one(digits):
    dm = DlforgeDataModule(digits, batch_size=len(digits.train[0]) - 1)
    assert [len(x) for x, _ in dm.train_dataloader()] == [len(digits.train[0]) - 1]


def test_augmentation_only_while_training(digits):
    dm = DlforgeDataModule(digits, augment={"flip": True, "rotation": 20.0, "crop_padding": 2, "noise": 0.1})
    batch = (torch.from_numpy(digits.train[0][:16]), torch.from_numpy(digits.train[1][:16]))
    assert dm.on_after_batch_transfer(batch, 0) is batch  # no trainer attached
    dm.trainer = SimpleNamespace(training=False)
    assert dm.on_after_batch_transfer(batch, 0) is batch
    dm.trainer = SimpleNamespace(training=True)
    x, y = dm.on_after_batch_transfer(batch, 0)
    assert x.shape == batch[0].shape and x.dtype == torch.float32 and y is batch[1]
    assert not torch.equal(x, batch[0])


class _RecordingModel(L.LightningModule):
    """Records whether each batch it sees equals the raw split data."""

    def __init__(self, raw_train: torch.Tensor) -> None:
        super().__init__()
        self.raw_train = raw_train
        self.layer = torch.nn.Linear(64, 10)
        self.train_changed: list[bool] = []
        self.val_raw: list[bool] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.train_changed.append(not any(torch.equal(xi, r) for xi in x[:1] for r in self.raw_train))
        return torch.nn.functional.cross_entropy(self.layer(x.flatten(1)), y)

    def validation_step(self, batch, batch_idx):
        self.val_raw.append(torch.equal(batch[0], self.val_x[: len(batch[0])]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_augmentation_in_a_real_fit_is_off_for_validation(digits):
    dm = DlforgeDataModule(digits, batch_size=64, augment={"noise": 0.5})
    model = _RecordingModel(torch.from_numpy(digits.train[0]))
    model.val_x = torch.from_numpy(digits.val[0])
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule=dm)
    assert model.train_changed == [True, True] and model.val_raw == [True]


def test_augmentation_is_refused_for_non_image_data_and_unknown_keys():
    iris = load_splits("builtin:iris")
    with pytest.raises(InputError, match="augment applies to images, but this data is tabular"):
        DlforgeDataModule(iris, augment={"flip": True})
    DlforgeDataModule(iris, augment={"flip": False, "rotation": 0.0, "crop_padding": 0, "noise": 0.0})
    with pytest.raises(InputError, match="unknown augmentation blur; valid ones are: flip"):
        DlforgeDataModule(iris, augment={"blur": 1})


# ---------------------------------------------------------------- augmentation transforms


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(8, 3, 6, 5, generator=torch.Generator().manual_seed(0))


def test_flip_gives_each_image_or_its_mirror(images):
    out = random_flip(images)
    assert all(torch.equal(o, x) or torch.equal(o, x.flip(-1)) for o, x in zip(out, images, strict=True))


def test_crop_is_a_shifted_window_of_the_padded_image(images):
    out = random_crop(images, 2)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    windows = [[padded[:, :, i : i + 6, j : j + 5] for j in range(5)] for i in range(5)]
    for b in range(len(images)):
        assert any(torch.equal(out[b], w[b]) for row in windows for w in row)
    assert torch.equal(random_crop(images, 0), images)


def test_rotation_and_noise_keep_shape_and_zero_is_identity(images):
    assert random_rotation(images, 30.0).shape == images.shape
    torch.testing.assert_close(random_rotation(images, 0.0), images, atol=1e-5, rtol=0)
    assert torch.equal(add_noise(images, 0.0, torch.ones(3)), images)
    noisy = add_noise(images, 1.0, torch.tensor([0.0, 0.0, 1.0]))
    assert torch.equal(noisy[:, :2], images[:, :2]) and not torch.equal(noisy[:, 2], images[:, 2])


def test_image_augment_composes_and_reports_active(images):
    augment = ImageAugment.from_dict({"flip": True, "crop_padding": 1, "rotation": 10.0}, [1.0, 1.0, 1.0])
    assert augment.active and augment(images).shape == images.shape
    assert not ImageAugment.from_dict({}, [1.0]).active
