"""Property tests (hypothesis): the config parser and overrides, and the tabular CSV and NPZ loaders.

Each property holds for every input hypothesis tries: a valid config survives a round trip, a numeric key takes
every value in its range and refuses every value outside it naming the key, an override string never raises
anything but ConfigError, and a loader gives either consistent splits or an InputError — never another exception.
Example counts are kept small so the file runs in seconds.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dl_lightning.data import load_splits
from dl_lightning.errors import InputError
from pipelines.config import Config, ConfigError, build_config, dump_yaml, load_config, parse_override

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SLOWER = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def numeric_keys(cls: type = Config, prefix: str = "") -> dict[str, tuple[type, dict]]:
    """Dotted key → (int or float, {ge, gt, le}) for every plain numeric leaf of the config."""
    hints, out = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            out |= numeric_keys(hint, f"{prefix}{f.name}.")
        elif hint in (int, float):
            out[prefix + f.name] = (hint, {k: v for k, v in f.metadata.items() if v is not None})
    return out


NUMERIC = numeric_keys()
BOUNDED = {k: v for k, v in NUMERIC.items() if v[1]}


def in_range(kind: type, meta: dict) -> st.SearchStrategy:
    low = meta.get("ge", meta.get("gt"))
    high = meta.get("le")
    if kind is int:
        return st.integers(min_value=math.ceil(low) + ("gt" in meta) if low is not None else -(10**6), max_value=high)
    return st.floats(
        min_value=low, max_value=high, exclude_min="gt" in meta, allow_nan=False, allow_infinity=False
    ).filter(lambda v: low is None or high is None or v <= 1e12)


def out_of_range(kind: type, meta: dict) -> st.SearchStrategy:
    finite = {"allow_nan": False, "allow_infinity": False}
    sides = []
    low = meta.get("ge", meta.get("gt"))
    if low is not None and kind is int:
        sides.append(st.integers(max_value=math.ceil(low) - (0 if "gt" in meta else 1)))
    elif low is not None:
        sides.append(st.floats(max_value=low, exclude_max="ge" in meta, **finite))
    if meta.get("le") is not None and kind is int:
        sides.append(st.integers(min_value=math.floor(meta["le"]) + 1))
    elif meta.get("le") is not None:
        sides.append(st.floats(min_value=meta["le"], exclude_min=True, **finite))
    return st.one_of(sides)


@st.composite
def valid_overrides(draw) -> dict[str, typing.Any]:
    keys = draw(st.lists(st.sampled_from(sorted(BOUNDED)), max_size=6, unique=True))
    return {k: draw(in_range(*BOUNDED[k])) for k in keys}


# ---------------------------------------------------------------- config


@FAST
@given(valid_overrides())
def test_a_valid_config_round_trips_through_to_dict_and_yaml(overrides):
    cfg = build_config({}, overrides)
    assert build_config(cfg.to_dict()) == cfg
    assert build_config(yaml.safe_load(dump_yaml(cfg))) == cfg
    assert cfg.with_overrides({}) == cfg


@FAST
@given(st.sampled_from(sorted(BOUNDED)), st.data())
def test_every_value_in_range_is_accepted(key, data):
    kind, meta = BOUNDED[key]
    value = data.draw(in_range(kind, meta))
    cfg = build_config({}, {key: value})
    assert cfg.flat()[key] == value


@FAST
@given(st.sampled_from(sorted(BOUNDED)), st.data())
def test_every_value_out_of_range_is_refused_naming_the_key(key, data):
    kind, meta = BOUNDED[key]
    value = data.draw(out_of_range(kind, meta))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_config({}, {key: value})


@FAST
@given(st.sampled_from(sorted(NUMERIC)), st.sampled_from(["abc", "[1, 2]", "{a: 1}", "true", ".nan", ".inf"]))
def test_a_wrong_type_on_the_command_line_is_refused_naming_the_key(key, text):
    kind, _ = NUMERIC[key]
    assume(not (kind is float and text == "true"))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [f"{key}={text}"])


@FAST
@given(st.text(max_size=40))
def test_parse_override_raises_nothing_but_config_error(text):
    try:
        key, _ = parse_override(text)
    except ConfigError:
        return
    assert key and key == key.strip()


@FAST
@given(st.lists(st.text(alphabet="abcdefgilmnoprstuvwxyz._=-0123456789[]{}: ", max_size=30), max_size=3))
def test_any_override_list_gives_a_config_or_a_config_error(items):
    try:
        cfg = load_config(None, items)
    except ConfigError:
        return
    assert isinstance(cfg, Config)


# ---------------------------------------------------------------- loaders

CELLS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.integers(min_value=-5, max_value=5),
    st.sampled_from(["a", "b", "", "1.5"]),
)


def check_splits(splits, rows: int | None = None) -> None:
    """Every split non-empty, x and y aligned, nothing lost or duplicated, x finite."""
    sizes = [len(x) for x, _ in (splits.train, splits.val, splits.test)]
    assert all(n > 0 for n in sizes)
    for x, y in (splits.train, splits.val, splits.test):
        assert len(x) == len(y) and x.shape[1:] == splits.train[0].shape[1:]
        assert np.isfinite(x).all() if x.dtype.kind == "f" else True
    if rows is not None:
        assert sum(sizes) == rows


@SLOWER
@given(
    rows=st.integers(min_value=0, max_value=40),
    columns=st.integers(min_value=1, max_value=4),
    data=st.data(),
)
def test_csv_loader_gives_consistent_splits_or_an_input_error(tmp_path_factory, rows, columns, data):
    frame = pd.DataFrame({f"c{j}": data.draw(st.lists(CELLS, min_size=rows, max_size=rows)) for j in range(columns)})
    path = Path(tmp_path_factory.mktemp("csv")) / "table.csv"
    frame.to_csv(path, index=False)
    try:
        splits = load_splits(str(path))
    except InputError:
        return
    check_splits(splits, rows)


ARRAYS = st.sampled_from(["float32", "float64", "int64", "int8", "bool", "object", "str"])


@st.composite
def npz_arrays(draw) -> dict[str, np.ndarray]:
    n = draw(st.integers(min_value=0, max_value=30))
    shape = (n, *draw(st.lists(st.integers(min_value=1, max_value=4), max_size=3)))
    dtype = draw(ARRAYS)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.normal(size=shape) * draw(st.sampled_from([1.0, 1e30, 0.0]))
    if draw(st.booleans()):
        x.flat[: draw(st.integers(0, 2))] = draw(st.sampled_from([np.nan, np.inf]))
    x = x.astype(str) if dtype == "str" else x.astype(dtype)
    y_rows = draw(st.sampled_from([n, max(n - 1, 0)]))
    y = rng.integers(0, draw(st.integers(1, 4)), size=y_rows).astype(draw(st.sampled_from(["int64", "float32"])))
    arrays = {"x": x, "y": y}
    if draw(st.booleans()):
        arrays["x_test"], arrays["y_test"] = x[:5], y[:5]
    return arrays


def test_an_empty_npz_is_an_input_error(tmp_path):
    """Found by the property below: zero rows once reached ``classes[0]`` of no classes."""
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 3), np.float32), y=np.zeros(0, np.int64))
    with pytest.raises(InputError):
        load_splits(str(tmp_path / "empty.npz"))


@SLOWER
@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")
@given(arrays=npz_arrays())
def test_npz_loader_gives_consistent_splits_or_an_input_error(tmp_path_factory, arrays):
    path = Path(tmp_path_factory.mktemp("npz")) / "data.npz"
    np.savez(path, **arrays)
    try:
        splits = load_splits(str(path))
    except InputError:
        return
    check_splits(splits)
