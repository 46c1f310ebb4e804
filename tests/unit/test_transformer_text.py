"""The transformer on text attends to real tokens only, and stays finite on an all-padding example."""

from __future__ import annotations

import torch

from dl_lightning.nets.transformer import TransformerNet

TEXT = {"kind": "text", "vocab": [f"w{i}" for i in range(30)], "input_shape": [12], "num_outputs": 3}


def _net() -> TransformerNet:
    torch.manual_seed(0)
    return TransformerNet(TEXT, d_model=16, nhead=4, num_layers=2, dim_feedforward=32, dropout=0.1).eval()


def test_padding_does_not_reach_the_real_tokens() -> None:
    net = _net()
    tokens = torch.tensor([[5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0], [9, 3, 2, 4, 6, 7, 8, 9, 10, 11, 12, 0]])
    with torch.no_grad():
        before = net(tokens)
        net.embed.weight[0] = torch.randn(16) * 3  # what a padding position would carry if it were attended to
        after = net(tokens)
    torch.testing.assert_close(after, before)


def test_an_all_padding_example_is_finite_in_training_and_eval() -> None:
    net = _net()
    tokens = torch.zeros(2, 12, dtype=torch.long)
    tokens[1, :3] = torch.tensor([4, 5, 6])
    for mode in (True, False):
        net.train(mode)
        assert torch.isfinite(net(tokens)).all()
