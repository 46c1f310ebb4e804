"""DCGAN generator and discriminator for images ``(C, H, W)`` of any size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BASE = 4  # the generator's first feature map is BASE × BASE


def upsample_steps(height: int, width: int) -> int:
    """How many ×2 upsamplings take BASE to at least the larger image side."""
    steps, size = 0, BASE
    while size < max(height, width):
        steps, size = steps + 1, size * 2
    return steps


class Generator(nn.Module):
    """Noise ``(B, latent_dim)`` → images ``(B, C, H, W)`` in [-1, 1] (tanh), the GAN's normalized space.

    Feature maps start at BASE×BASE with ``width × 2^steps`` channels and double in size / halve in channels
    per step until they cover the image; sizes that are not BASE × 2^k are then resized to exactly (H, W) with
    a bilinear interpolation, which exports to ONNX as a plain Resize.
    """

    def __init__(self, image_shape: list[int], latent_dim: int, width: int) -> None:
        super().__init__()
        channels, height, w = image_shape
        self.out_size = (height, w)
        steps = upsample_steps(height, w)
        c = width * 2**steps
        self.project = nn.Sequential(
            nn.Linear(latent_dim, c * BASE * BASE, bias=False), nn.Unflatten(1, (c, BASE, BASE))
        )  # (B, latent_dim) → (B, c, BASE, BASE)
        blocks: list[nn.Module] = [nn.BatchNorm2d(c), nn.ReLU()]
        for _ in range(steps):
            # kernel 4, stride 2, padding 1 doubles the size exactly (DCGAN's choice, no checkerboard offset)
            blocks += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c // 2), nn.ReLU()]
            c //= 2
        blocks.append(nn.Conv2d(c, channels, 3, padding=1))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.project(z))  # (B, C, BASE·2^steps, BASE·2^steps)
        if tuple(h.shape[-2:]) != self.out_size:  # a Python check on static sizes: no branch in the graph
            h = F.interpolate(h, size=self.out_size, mode="bilinear", align_corners=False)
        return torch.tanh(h)  # (B, C, H, W)


class Discriminator(nn.Module):
    """Images ``(B, C, H, W)`` in [-1, 1] → one real-vs-fake logit per image ``(B,)``."""

    def __init__(self, image_shape: list[int], width: int, dropout: float) -> None:
        super().__init__()
        channels, height, w = image_shape
        layers: list[nn.Module] = []
        c_in, c_out, size = channels, width, min(height, w)
        # stride-2 convs while the map is at least 4 wide; at least one conv so tiny images still get features
        while True:
            layers.append(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=c_in == channels))
            if c_in != channels:  # DCGAN: no batch norm on the layer that sees the images
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2))
            c_in, c_out, size = c_out, c_out * 2, size // 2
            if size < 4:
                break
        self.features = nn.Sequential(*layers)
        with torch.no_grad():  # the flattened size depends on H, W through floor divisions: measure it
            n_flat = self.features(torch.zeros(1, channels, height, w)).numel()
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(n_flat, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)  # (B,)


class ImageSampler(nn.Module):
    """Generator plus the way back to raw pixel scale: noise ``(B, latent_dim)`` → images ``(B, C, H, W)``.

    ``raw = (g · scale) · std + mean`` undoes the mapping real images go through before the discriminator sees
    them; this is the module that gets exported, so an ONNX sampler emits images in the data's own units.
    """

    def __init__(self, generator: Generator, mean: torch.Tensor, std: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.generator, self.scale = generator, scale
        self.register_buffer("mean", mean.clone())  # (C, 1, 1)
        self.register_buffer("std", std.clone())  # (C, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z) * self.scale * self.std + self.mean  # (B, C, H, W)
