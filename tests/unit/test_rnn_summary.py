"""The rnn's summary (what its head reads): max over the words for text, the last step for sequences, and both
survive ONNX export with padding."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch

from dl_lightning.errors import InputError
from dl_lightning.registry import build_model
from pipelines import export
from pipelines.compression.quantization import census, quantize_onnx
from pipelines.config import ModelConfig
from tests.fixtures import tiny_spec

SMALL = {"hidden_size": 16, "embed_dim": 8}


def _default_rnn(kind: str, **changes):
    """The rnn as `dlforge train` builds it with no config (small widths), in eval mode."""
    torch.manual_seed(0)
    arch = dataclasses.replace(ModelConfig(), family="rnn").arch() | SMALL | changes
    shape = (9,) if kind == "text" else (6, 3)
    return build_model("rnn", tiny_spec(kind, input_shape=shape), arch, {}).eval()


def _padded_words(rng: np.random.Generator, n: int, length: int = 9) -> np.ndarray:
    """``(n, length)`` token ids of random lengths 1..length, right-padded with 0."""
    ids = rng.integers(2, 32, (n, length))
    return ids * (np.arange(length)[None] < rng.integers(1, length + 1, (n, 1)))


def test_auto_summary_is_max_for_text_and_last_for_sequences():
    assert _default_rnn("text").net.summary == "max" and _default_rnn("sequence").net.summary == "last"
    with pytest.raises(InputError, match="model.rnn.summary=mean is unknown"):
        _default_rnn("text", summary="mean")


def test_text_max_summary_ignores_padding_and_reads_every_word():
    model = _default_rnn("text")
    words = torch.tensor([[5, 6, 7, 0, 0, 0, 0, 0, 0]])
    longer_padding = torch.tensor([[5, 6, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        assert torch.allclose(model(words), model(longer_padding), atol=1e-6)
        all_padding = model(torch.zeros(1, 9, dtype=torch.long))
        out = model.net.rnn(model.net.embed(words))[0]  # (1, 9, H)
        assert torch.equal(model.net._summary(out, words), out[:, :3].amax(dim=1))
    assert torch.isfinite(all_padding).all()


@pytest.mark.parametrize("bidirectional", [False, True])
def test_text_max_summary_exports_and_quantizes(bidirectional, tmp_path):
    model = _default_rnn("text", bidirectional=bidirectional)
    rng = np.random.default_rng(0)
    batches = [_padded_words(rng, 6), np.zeros((1, 9), dtype=np.int64)]  # an all-padding row stays finite
    net, example = model.export_net()
    meta = export.model_metadata(model.data_spec, family="rnn", role="teacher", source_run_id="r")
    path = export.export_onnx(net, example, tmp_path / "rnn.onnx", metadata=meta, sequence_axis=True)
    parity = export.check_parity(net, export.open_session(path), batches)
    assert parity.passed and parity.max_abs_diff <= 1e-4
    int8 = quantize_onnx(path, tmp_path / "int8.onnx", recipe="dynamic", calibration=batches)
    assert census(onnx.load(str(int8))).is_int8  # the LSTM and the head really are INT8
