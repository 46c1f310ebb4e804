"""Train-time image augmentation, batch-wise in torch (no torchvision), on whatever device the batch is on.

Every transform keeps the batch shape ``(B, C, H, W)`` and dtype; randomness is per example.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from dl_lightning.errors import InputError


def random_flip(x: torch.Tensor) -> torch.Tensor:
    """Mirrors each image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_rotation(x: torch.Tensor, max_degrees: float) -> torch.Tensor:
    """Rotates each image about its centre by a uniform angle in ±``max_degrees``; corners fill with 0."""
    angle = (torch.rand(x.shape[0], device=x.device) * 2 - 1) * math.radians(max_degrees)  # (B,)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


def random_crop(x: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pads by ``padding`` on every side, then crops each image back to ``(H, W)`` at a random offset."""
    b, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (b, 1), device=x.device)
    left = torch.randint(0, 2 * padding + 1, (b, 1), device=x.device)
    rows = top + torch.arange(h, device=x.device)  # (B, H)
    cols = left + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    # Advanced indices split by the channel slice put their dims first: (B, H, W, C).
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def add_noise(x: torch.Tensor, noise: float, channel_std: torch.Tensor) -> torch.Tensor:
    """Adds Gaussian noise of std ``noise × channel_std``, so ``noise`` means the same at any pixel scale."""
    return x + torch.randn_like(x) * (noise * channel_std.to(x)[None, :, None, None])


@dataclass(frozen=True)
class ImageAugment:
    """The augmentations a config asks for, applied in a fixed order: crop, flip, rotation, noise.

    ``channel_std`` is the per-channel std of the train split (``spec.std``).
    """

    channel_std: tuple[float, ...]
    flip: bool = False
    rotation: float = 0.0
    crop_padding: int = 0
    noise: float = 0.0

    @classmethod
    def from_dict(cls, augment: Mapping[str, object], channel_std: Sequence[float]) -> ImageAugment:
        """Builds from a dict with any of the keys ``flip``, ``rotation``, ``crop_padding``, ``noise``."""
        valid = [f.name for f in fields(cls) if f.name != "channel_std"]
        unknown = sorted(set(augment) - set(valid))
        if unknown:
            raise InputError(f"unknown augmentation {', '.join(unknown)}; valid ones are: {', '.join(valid)}")
        return cls(channel_std=tuple(channel_std), **augment)

    @property
    def active(self) -> bool:
        """True when at least one transform would change a batch."""
        return self.flip or self.rotation > 0 or self.crop_padding > 0 or self.noise > 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.crop_padding > 0:
            x = random_crop(x, self.crop_padding)
        if self.flip:
            x = random_flip(x)
        if self.rotation > 0:
            x = random_rotation(x, self.rotation)
        if self.noise > 0:
            x = add_noise(x, self.noise, torch.tensor(self.channel_std))
        return x
