"""Class imbalance: inverse-frequency class weights and a weighted sampler that works the same under DDP."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

IMBALANCE_RATIO = 10.0  # largest / smallest class above this: the training command suggests the options


def class_counts(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Examples per class ``0..num_classes-1`` of integer labels ``y``."""
    return np.bincount(np.asarray(y, dtype=np.int64).reshape(-1), minlength=num_classes)[:num_classes]


def balanced_class_weights(y: np.ndarray, num_classes: int) -> torch.Tensor:
    """``n / (K · n_k)`` per class (scikit-learn's "balanced"): each class weighs the same in the loss in total.

    A class absent from ``y`` gets weight 0 (it has no examples to weigh). Float32, shape ``(num_classes,)``.
    """
    counts = class_counts(y, num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def imbalance_note(y: np.ndarray, num_classes: int) -> str | None:
    """The one line printed when the largest class is over ``IMBALANCE_RATIO`` × the smallest; else None."""
    counts = class_counts(y, num_classes)
    counts = counts[counts > 0]
    if len(counts) < 2 or counts.max() <= IMBALANCE_RATIO * counts.min():
        return None
    return (
        f"dlforge: the classes are imbalanced (largest {counts.max()} vs smallest {counts.min()} train examples); "
        "consider data.class_weights=balanced or data.sampler=balanced, and trainer.monitor=val/f1"
    )


class BalancedSampler(DistributedSampler):
    """Draws ``len(dataset)`` indices per epoch with replacement, each class equally likely, split over ranks.

    Every rank draws the same global sequence from ``(seed, epoch)`` and takes every ``world``-th index from its
    rank on, so under DDP the ranks together see one balanced draw of the data set's size — the same effective
    distribution as one process. A ``DistributedSampler`` subclass, so Lightning neither replaces nor re-wraps it
    and calls ``set_epoch`` on it. Outside DDP it is the whole draw.
    """

    def __init__(
        self,
        dataset: Dataset,
        labels: np.ndarray,
        num_classes: int,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        world = num_replicas or (dist.get_world_size() if distributed else 1)
        rank = rank if rank is not None else (dist.get_rank() if distributed else 0)
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        per_class = balanced_class_weights(labels, num_classes).double()
        self.weights = per_class[torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1))]
        self.total = len(self.weights)
        self.num_samples = math.ceil(self.total / world)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        draws = torch.multinomial(self.weights, self.num_samples * self.num_replicas, True, generator=generator)
        return iter(draws[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples
