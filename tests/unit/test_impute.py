"""data.impute: train-split fill values, applied inside the net, the ONNX graph and dlforge predict alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dl_lightning.data import load_splits
from dl_lightning.data.impute import apply_fill, fit_fill
from dl_lightning.errors import InputError
from dl_lightning.registry import build_model
from pipelines import export
from pipelines.predict import predict


def table(path: Path, n: int = 120) -> str:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(n, 4)).round(1), columns=["a", "b", "c", "d"])
    frame["label"] = (frame["a"] > 0).astype(int)
    frame.loc[rng.random(n) < 0.2, "b"] = np.nan  # empty cells in two columns
    frame.loc[rng.random(n) < 0.1, "d"] = np.nan
    frame.to_csv(path, index=False)
    return str(path)


def test_fill_values_per_strategy():
    x = np.array([[1.0, np.nan], [3.0, 2.0], [3.0, np.nan], [9.0, 2.0]], dtype=np.float32)
    assert fit_fill(x, "mean") == pytest.approx((4.0, 2.0))
    assert fit_fill(x, "median") == pytest.approx((3.0, 2.0))
    assert fit_fill(x, "most_frequent") == pytest.approx((3.0, 2.0))
    assert not np.isnan(apply_fill(x, (0.0, 7.0))).any() and apply_fill(x, (0.0, 7.0))[0, 1] == 7.0


def test_missing_cells_are_an_error_without_impute(tmp_path):
    with pytest.raises(InputError, match="feature column 'b'.*NaN"):
        load_splits(table(tmp_path / "t.csv"))


def test_fill_comes_from_the_train_split(tmp_path):
    splits = load_splits(table(tmp_path / "t.csv"), impute="median")
    expected = np.nanmedian(splits.train[0].astype(np.float64), axis=0)
    assert splits.spec.fill == pytest.approx(tuple(expected))
    assert np.isnan(splits.train[0]).any()  # the arrays keep NaN: the net fills them


def test_predict_on_empty_cells_matches_pytorch(tmp_path):
    splits = load_splits(table(tmp_path / "t.csv"), impute="most_frequent")
    torch.manual_seed(0)
    module = build_model("mlp", splits.spec, {"hidden": [8], "dropout": 0.0}, {})
    net, example = module.eval().export_net()
    meta = export.model_metadata(splits.spec.to_dict(), family="mlp", role="teacher", source_run_id=None)
    path = export.export_onnx(net, example, tmp_path / "m.onnx", metadata=meta)
    x = splits.test[0]
    assert np.isnan(x).any()
    pd.DataFrame(x, columns=["a", "b", "c", "d"]).to_csv(tmp_path / "in.csv", index=False)  # NaN → empty cells
    predict(str(path), str(tmp_path / "in.csv"), str(tmp_path / "out.csv"))
    got = pd.read_csv(tmp_path / "out.csv")[["prob_0", "prob_1"]].to_numpy()
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).softmax(dim=1).numpy()
    assert np.abs(got - expected).max() < 1e-5
    filled = torch.from_numpy(apply_fill(x, splits.spec.fill))
    with torch.no_grad():  # NaN in, fill inside the net == filled outside
        assert torch.allclose(net(torch.from_numpy(x)), net(filled))
