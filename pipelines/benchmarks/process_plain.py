"""The plain PyTorch script the whole-process benchmark compares ``dlforge train`` with: run as a file, not a module.

``python process_plain.py DATA.npz OUT_DIR EPOCHS BATCH`` does the work ``dlforge train`` does for the benchmark's
job and nothing else: the same split sizes, standardization by the train split, the same Conv1d net (two conv blocks
with BatchNorm and max-pooling, an average pool to 4 positions, a two-layer head), AdamW, validation every epoch,
the best checkpoint kept by validation accuracy, one test of it, and the test accuracy printed. It imports torch and
numpy only — what a user's own script would — so its start-up is the floor dlforge is measured against.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

CHANNELS, KERNEL, HIDDEN, DROPOUT, LR, WEIGHT_DECAY = (16, 32), 5, 64, 0.1, 1e-3, 1e-4


def build_net(steps: int, features: int, classes: int) -> nn.Module:
    """The same layers ``model.family=cnn`` builds for ``(steps, features)`` sequences with the bench's settings."""
    layers: list[nn.Module] = []
    c_in = features
    for c_out in CHANNELS:
        layers += [nn.Conv1d(c_in, c_out, KERNEL, padding=KERNEL // 2, bias=False), nn.BatchNorm1d(c_out)]
        layers += [nn.ReLU(), nn.MaxPool1d(2)]
        c_in, steps = c_out, steps // 2
    kernel = -(-steps // 4)
    layers += [nn.AvgPool1d(kernel, kernel, ceil_mode=True), nn.Flatten()]
    layers += [nn.Linear(c_in * -(-steps // kernel), HIDDEN), nn.ReLU(), nn.Dropout(DROPOUT)]
    layers.append(nn.Linear(HIDDEN, classes))
    return nn.Sequential(*layers)


@torch.no_grad()
def accuracy(net: nn.Module, loader: DataLoader) -> float:
    net.eval()
    hits = total = 0
    for x, y in loader:
        hits += int((net(x.transpose(1, 2)).argmax(dim=1) == y).sum())
        total += len(y)
    return hits / total


def main(data: str, out: str, epochs: int, batch: int) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    arrays = np.load(data)
    x, y = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])
    order = torch.randperm(len(x))
    n_val = n_test = int(len(x) * 0.15)  # data.val_fraction and data.test_fraction defaults
    val, test, train = order[:n_val], order[n_val : n_val + n_test], order[n_val + n_test :]
    mean, std = x[train].mean(dim=(0, 1)), x[train].std(dim=(0, 1)) + 1e-8
    x = (x - mean) / std
    loaders = [
        DataLoader(TensorDataset(x[idx], y[idx]), batch_size=batch, shuffle=shuffle)
        for idx, shuffle in ((train, True), (val, False), (test, False))
    ]
    net = build_net(x.shape[1], x.shape[2], int(y.max()) + 1)
    optimizer = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    best = -1.0
    for _ in range(epochs):
        net.train()
        for xb, yb in loaders[0]:
            loss = F.cross_entropy(net(xb.transpose(1, 2)), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        score = accuracy(net, loaders[1])
        if score > best:
            best = score
            torch.save({"state_dict": net.state_dict(), "optimizer": optimizer.state_dict()}, f"{out}/best.pt")
    net.load_state_dict(torch.load(f"{out}/best.pt", weights_only=True)["state_dict"])
    print(f"test_acc {accuracy(net, loaders[2]):.4f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
