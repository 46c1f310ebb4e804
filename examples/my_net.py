"""A plain ``torch.nn.Module`` of your own, trained by dlforge as it trains its built-in families.

dlforge fills in ``input_shape`` and ``num_outputs`` from the data because the constructor names them; ``hidden``
and ``depth`` come from ``model.args`` (``model.args.hidden=64`` on the command line). Inputs arrive standardized
with the train split's statistics; the forward pass returns one logit per class (or one value for regression).

    dlforge train model.family=examples/my_net.py:MyNet model.args.hidden=64 data.source=builtin:digits
"""

from __future__ import annotations

import math

from torch import nn


class MyNet(nn.Module):
    """``depth`` hidden layers of ``hidden`` units with ReLU, then a linear head."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, hidden: int = 64, depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, num_outputs))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)  # (batch, num_outputs) logits
