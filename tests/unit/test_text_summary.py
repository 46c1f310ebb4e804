"""The rnn's and the transformer's summary (what the head reads): the max over the words for text, the last step
(rnn) or the mean (transformer) for sequences; both survive ONNX export and INT8 with padding."""

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

SMALL = {"rnn": {"hidden_size": 16, "embed_dim": 8}, "transformer": {"d_model": 16, "dim_feedforward": 32}}
SEQUENCE_SUMMARY = {"rnn": "last", "transformer": "mean"}


def _default_net(kind: str, family: str = "rnn", **changes):
    """The family as `dlforge train` builds it with no config (small widths), in eval mode."""
    torch.manual_seed(0)
    arch = dataclasses.replace(ModelConfig(), family=family).arch() | SMALL[family] | changes
    shape = (9,) if kind == "text" else (6, 3)
    return build_model(family, tiny_spec(kind, input_shape=shape), arch, {}).eval()


def _padded_words(rng: np.random.Generator, n: int, length: int = 9) -> np.ndarray:
    """``(n, length)`` token ids of random lengths 1..length, right-padded with 0."""
    ids = rng.integers(2, 32, (n, length))
    return ids * (np.arange(length)[None] < rng.integers(1, length + 1, (n, 1)))


@pytest.mark.parametrize("family", ["rnn", "transformer"])
def test_auto_summary_is_max_for_text_and_the_familys_own_for_sequences(family):
    assert _default_net("text", family).net.summary == "max"
    assert _default_net("sequence", family).net.summary == SEQUENCE_SUMMARY[family]
    with pytest.raises(InputError, match=f"model.{family}.summary=first is unknown"):
        _default_net("text", family, summary="first")


def test_rnn_embeds_words_in_128_dims_and_sequences_do_not_depend_on_it():
    """The default word embedding is 128 wide (it learned faster than 64, docs/benchmarks.md); a sequence net has no
    embedding, so the key leaves it computing exactly what it did."""
    arch = dataclasses.replace(ModelConfig(), family="rnn").arch()
    spec = tiny_spec("text", input_shape=(9,))
    assert build_model("rnn", spec, arch, {}).net.embed.embedding_dim == 128
    x = torch.randn(4, 6, 3)
    outputs = []
    for embed_dim in (64, 128):
        torch.manual_seed(0)
        net = build_model("rnn", tiny_spec("sequence"), arch | {"embed_dim": embed_dim}, {}).eval()
        with torch.no_grad():
            outputs.append(net(x))
    assert torch.equal(*outputs)


def test_transformer_text_max_summary_reads_only_real_words():
    model = _default_net("text", "transformer")
    words = torch.tensor([[5, 6, 7, 0, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        h = torch.randn(1, 9, 16)  # any encoder output: the padding positions' values must not matter
        assert torch.equal(model.net._pool(h, words), h[:, :3].amax(dim=1))
        assert torch.isfinite(model(torch.zeros(1, 9, dtype=torch.long))).all()  # an empty sentence stays finite


def test_rnn_text_max_summary_reads_every_word():
    model = _default_net("text")
    words = torch.tensor([[5, 6, 7, 0, 0, 0, 0, 0, 0]])
    longer_padding = torch.tensor([[5, 6, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        assert torch.allclose(model(words), model(longer_padding), atol=1e-6)
        all_padding = model(torch.zeros(1, 9, dtype=torch.long))
        out = model.net.rnn(model.net.embed(words))[0]  # (1, 9, H)
        assert torch.equal(model.net._summary(out, words), out[:, :3].amax(dim=1))
    assert torch.isfinite(all_padding).all()


@pytest.mark.parametrize(("family", "changes"), [("rnn", {}), ("rnn", {"bidirectional": True}), ("transformer", {})])
def test_text_max_summary_exports_and_quantizes(family, changes, tmp_path):
    model = _default_net("text", family, **changes)
    rng = np.random.default_rng(0)
    batches = [_padded_words(rng, 6), np.zeros((1, 9), dtype=np.int64)]  # an all-padding row stays finite
    net, example = model.export_net()
    meta = export.model_metadata(model.data_spec, family=family, role="teacher", source_run_id="r")
    path = export.export_onnx(net, example, tmp_path / f"{family}.onnx", metadata=meta, sequence_axis=True)
    parity = export.check_parity(net, export.open_session(path), batches)
    assert parity.passed and parity.max_abs_diff <= 1e-4
    int8 = quantize_onnx(path, tmp_path / "int8.onnx", recipe="dynamic", calibration=batches)
    assert census(onnx.load(str(int8))).is_int8  # the LSTM or the attention, and the head, really are INT8
