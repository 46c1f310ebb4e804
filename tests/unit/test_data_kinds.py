"""The family decides how a 2-D array is read (issue 13, point 1), and image folders keep their size (point 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dl_lightning.data import load_splits
from dl_lightning.data.images import AUTO_MAX_SIDE, auto_size
from dl_lightning.data.loaders import npz_shape, source_kind
from dl_lightning.errors import InputError
from dl_lightning.registry import FAMILIES, build_model, kind_for_family
from pipelines.config import load_config
from pipelines.train import load_data

SEQUENCE_FAMILIES = [
    name for name, cls in FAMILIES.items() if "sequence" in cls.accepts and "tabular" not in cls.accepts
]


def signals_npz(path: Path, n: int = 40, steps: int = 12) -> str:
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.normal(size=(n, steps)).astype(np.float32), y=np.arange(n) % 2)
    return str(path)


def write_png(path: Path, size: tuple[int, int], mode: str = "L", value: int = 100) -> None:
    """A PNG of ``size`` = (W, H)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value,) * 3).save(path)


def folder_of(root: Path, sizes: list[tuple[int, int]], mode: str = "L") -> str:
    for i, size in enumerate(sizes):
        write_png(root / ("a" if i % 2 else "b") / f"{i}.png", size, mode, value=20 * i)
    return str(root)


# ---------------------------------------------------------------- kinds follow the family


def test_the_registry_has_families_that_need_sequences() -> None:
    assert {"cnn", "rnn", "transformer"} <= set(SEQUENCE_FAMILIES)


@pytest.mark.parametrize("family", SEQUENCE_FAMILIES)
def test_2d_npz_is_read_as_signals_by_sequence_families(family: str, tmp_path: Path) -> None:
    choice = kind_for_family(family, signals_npz(tmp_path / "s.npz", n=40, steps=12))
    assert choice.kind == "sequence"
    assert "40 rows as signals of 12 steps × 1 feature" in choice.note
    assert "data.kind=tabular" in choice.note and "model.family=mlp" in choice.note
    assert "\n" not in choice.note


def test_2d_npz_stays_a_table_for_the_mlp(tmp_path: Path) -> None:
    choice = kind_for_family("mlp", signals_npz(tmp_path / "s.npz"))
    assert (choice.kind, choice.note) == (None, "")


def test_a_csv_table_is_read_as_signals_too(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    pd.DataFrame(np.random.default_rng(0).normal(size=(30, 5)), columns=list("abcde")).assign(label=1).to_csv(path)
    choice = kind_for_family("rnn", str(path))
    assert choice.kind == "sequence" and "each row as one signal" in choice.note


def test_a_text_table_is_text_whichever_column_is_the_target(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    pd.DataFrame({"review": ["a fine long sentence here"] * 12, "label": ["pos", "neg"] * 6}).to_csv(path, index=False)
    assert source_kind(str(path)) == ("text", None)
    assert kind_for_family("transformer", str(path)).kind is None


def test_npz_shape_reads_only_the_header(tmp_path: Path) -> None:
    path = signals_npz(tmp_path / "s.npz", n=7, steps=3)
    assert npz_shape(Path(path), "x") == (7, 3)
    assert npz_shape(Path(path), "nope") is None
    assert source_kind(path) == ("tabular", (7, 3))


def test_an_explicit_kind_is_never_second_guessed(tmp_path: Path) -> None:
    source = signals_npz(tmp_path / "s.npz")
    assert kind_for_family("cnn", source, kind="sequence").kind == "sequence"
    with pytest.raises(InputError) as err:
        kind_for_family("cnn", source, kind="tabular")
    message = str(err.value)
    assert "data.kind=tabular" in message and "model.family=mlp" in message and "data.kind=sequence" in message


@pytest.mark.parametrize(
    ("family", "source", "fixes"),
    [
        ("cnn", "builtin:python_docs", ["model.family=mlp, rnn or transformer"]),
        ("rnn", "builtin:digits", ["model.family=mlp, cnn or gan", "data.kind=sequence"]),
        ("gan", "builtin:wine", ["model.family=mlp"]),
    ],
)
def test_a_wrong_guess_is_an_error_naming_every_fix(family: str, source: str, fixes: list[str]) -> None:
    with pytest.raises(InputError) as err:
        kind_for_family(family, source)
    message = str(err.value)
    assert message.startswith(f"model.family={family} needs ") and "\n" not in message
    assert all(fix in message for fix in fixes), message


def test_build_model_names_every_fix_too() -> None:
    from tests.fixtures import tiny_spec

    spec = tiny_spec("tabular", num_outputs=2)
    with pytest.raises(InputError, match=r"use model\.family=mlp, or data\.kind=sequence \(each row one signal\)"):
        build_model("rnn", spec, {}, {})


def test_unknown_family_and_missing_source_fail_early(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="model.family=vit is unknown"):
        kind_for_family("vit", "builtin:digits")
    with pytest.raises(InputError, match="does not exist"):
        kind_for_family("cnn", str(tmp_path / "missing.npz"))


def test_load_data_reads_signals_and_says_so_once(tmp_path: Path, capsys) -> None:
    source = signals_npz(tmp_path / "s.npz", n=40, steps=12)
    cfg = load_config(None, [f"data.source={source}", "model.family=cnn"])
    spec = load_data(cfg).spec
    assert (spec.kind, spec.input_shape) == ("sequence", (12, 1))
    load_data(cfg)
    assert capsys.readouterr().out.count("as signals of 12 steps") == 1


def test_dlforge_train_cnn_on_a_2d_npz(cli, tiny, tmp_path: Path) -> None:
    source = signals_npz(tmp_path / "s.npz", n=60, steps=16)
    code, out, err = cli("train", *tiny, f"data.source={source}", "model.family=cnn")
    assert code == 0, err
    assert "signals of 16 steps" in out


# ---------------------------------------------------------------- image_size: auto


def test_image_size_defaults_to_auto() -> None:
    assert load_config(None, []).data.image_size == "auto"
    assert load_config(None, ["data.image_size=16"]).data.image_size == 16


def test_auto_keeps_a_shared_size(tmp_path: Path) -> None:
    spec = load_splits(folder_of(tmp_path / "imgs", [(12, 12)] * 12)).spec
    assert spec.input_shape == (1, 12, 12)


def test_auto_keeps_a_shared_non_square_size(tmp_path: Path) -> None:
    spec = load_splits(folder_of(tmp_path / "imgs", [(20, 10)] * 12, mode="RGB")).spec
    assert spec.input_shape == (3, 10, 20)  # (C, H, W) from PIL's (W, H)


def test_auto_takes_the_median_of_mixed_sizes() -> None:
    assert auto_size([(10, 10), (14, 12), (30, 40), (14, 12), (9, 12)]) == (14, 12)


def test_auto_caps_the_longer_side_keeping_the_aspect() -> None:
    assert auto_size([(200, 100)] * 3) == (AUTO_MAX_SIDE, AUTO_MAX_SIDE // 2)


def test_an_int_image_size_still_resizes_to_a_square(tmp_path: Path) -> None:
    spec = load_splits(folder_of(tmp_path / "imgs", [(12, 12)] * 12), image_size=8).spec
    assert spec.input_shape == (1, 8, 8)
