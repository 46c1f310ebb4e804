"""GAN family: a DCGAN trained with manual optimization, plus a callback that saves sample grids.

Scaling choice: real images are standardized with the train split's per-channel mean/std, divided by
``GAN_SCALE`` (3 standard deviations) and clipped to [-1, 1] — the tanh range of the generator. Almost all
pixel mass lies within ±3σ, so the clip only touches outliers, and :meth:`GANModule.sample` maps back exactly
(``raw = g · 3 · std + mean``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from dl_lightning.modules.base import FamilyModule
from dl_lightning.modules.optim import build_scheduler, l1_penalty
from dl_lightning.nets.common import Standardize
from dl_lightning.nets.gan import Discriminator, Generator, ImageSampler

GAN_SCALE = 3.0  # standard deviations mapped onto [-1, 1]
GRID_SIZE = 64  # images in the fixed-noise sample grid


class GANModule(FamilyModule):
    """DCGAN on ``(x, ...)`` image batches; labels, if any, are ignored (any task works).

    ``optim.name`` is ignored: both nets use Adam with betas (0.5, 0.999) (the DCGAN recipe), with
    ``optim.lr``, ``weight_decay``, ``l1`` and the lr schedule. Manual optimization means Lightning's
    ``gradient_clip_val`` and ``accumulate_grad_batches > 1`` are not available for this family.
    """

    family: ClassVar[str] = "gan"

    def __init__(
        self,
        data: dict,
        latent_dim: int = 64,
        width: int = 64,
        dropout: float = 0.1,
        optim: dict | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.init_family(data, optim)
        self.automatic_optimization = False
        shape = list(data["input_shape"])
        channels = shape[0]
        self.latent_dim = latent_dim
        self.generator = Generator(shape, latent_dim, width)
        self.discriminator = Discriminator(shape, width, dropout)
        # no statistics (unusual for images) means the raw values are taken as already centred and scaled
        self.norm = Standardize(data.get("mean") or [0.0] * channels, data.get("std") or [1.0] * channels, 2)
        noise = torch.randn(GRID_SIZE, latent_dim, generator=torch.Generator().manual_seed(0))
        self.register_buffer("fixed_noise", noise)  # (GRID_SIZE, latent_dim): the same grid every epoch
        self.example_input_array = torch.zeros(2, latent_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Noise ``(B, latent_dim)`` → images ``(B, C, H, W)`` in raw input scale."""
        return self.norm.inverse(self.generator(z) * GAN_SCALE)

    def export_net(self) -> tuple[nn.Module, torch.Tensor]:
        sampler = ImageSampler(self.generator, self.norm.mean, self.norm.std, GAN_SCALE)
        # a new module starts in train mode; exporters restore that mode recursively, generator included
        return sampler.train(self.training), self.example_input_array

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Raw images → the generator's [-1, 1] space (see the module docstring)."""
        return (self.norm(x) / GAN_SCALE).clamp(-1.0, 1.0)

    # ------------------------------------------------------------ sampling

    def sample(self, n: int, seed: int) -> torch.Tensor:
        """``n`` images ``(n, C, H, W)`` in raw scale, reproducible from ``seed``; generator in eval mode."""
        z = torch.randn(n, self.latent_dim, generator=torch.Generator().manual_seed(seed))
        return self._generate(z.to(self.device))

    def sample_fixed(self) -> torch.Tensor:
        """The fixed-noise grid images ``(GRID_SIZE, C, H, W)``, raw scale: one view of progress per epoch."""
        return self._generate(self.fixed_noise)

    @torch.no_grad()
    def _generate(self, z: torch.Tensor) -> torch.Tensor:
        was_training = self.generator.training
        self.generator.eval()  # batch norm with running stats: a sample does not depend on its batch-mates
        images = self(z)
        self.generator.train(was_training)
        return images

    # ------------------------------------------------------------ training

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real = self.to_unit(images_of(batch))  # (B, C, H, W) in [-1, 1]
        opt_g, opt_d = self.optimizers()
        fake = self.generator(torch.randn(len(real), self.latent_dim, device=self.device))  # (B, C, H, W)
        l1 = self.optim_cfg["l1"]

        # discriminator: real → 1, fake → 0; fake is detached so this step leaves the generator alone
        d_loss = self._d_loss(self.discriminator(real), self.discriminator(fake.detach()))
        d_loss = d_loss + l1 * l1_penalty(self.discriminator) if l1 > 0 else d_loss
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        opt_d.step()

        # generator: make the (just updated) discriminator call fakes real — the non-saturating loss
        d_fake = self.discriminator(fake)  # (B,)
        g_loss = F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))
        g_loss = g_loss + l1 * l1_penalty(self.generator) if l1 > 0 else g_loss
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        opt_g.step()

        log = {"on_step": False, "on_epoch": True, "sync_dist": True, "batch_size": len(real)}
        self.log("train/d_loss", d_loss, **log)
        self.log("train/g_loss", g_loss, **log)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: Any, stage: str) -> None:
        """Both losses on held-out real images and fresh fakes, and how often D tells them apart."""
        real = self.to_unit(images_of(batch))  # (B, C, H, W)
        fake = self.generator(torch.randn(len(real), self.latent_dim, device=self.device))
        d_real, d_fake = self.discriminator(real), self.discriminator(fake)  # (B,) logits each
        d_loss = self._d_loss(d_real, d_fake)
        g_loss = F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))
        d_acc = torch.cat([d_real > 0, d_fake < 0]).float().mean()
        log = {"on_step": False, "on_epoch": True, "sync_dist": True, "batch_size": len(real)}
        self.log_dict({f"{stage}/d_loss": d_loss, f"{stage}/g_loss": g_loss, f"{stage}/d_acc": d_acc}, **log)

    @staticmethod
    def _d_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
        real_loss = F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
        return real_loss + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))

    def configure_optimizers(self) -> Any:
        cfg = self.optim_cfg
        adam = {"lr": cfg["lr"], "betas": (0.5, 0.999), "weight_decay": cfg["weight_decay"]}
        opt_g = torch.optim.Adam(self.generator.parameters(), **adam)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), **adam)
        schedulers = [build_scheduler(opt, cfg) for opt in (opt_g, opt_d)]
        if schedulers[0] is None:
            return [opt_g, opt_d]
        return [opt_g, opt_d], schedulers

    def on_train_epoch_end(self) -> None:
        # manual optimization: Lightning leaves the lr schedules to us; validation has run by now
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            if not isinstance(scheduler, ReduceLROnPlateau):
                scheduler.step()
            elif (metric := self.trainer.callback_metrics.get("val/g_loss")) is not None:
                scheduler.step(metric)


def images_of(batch: Any) -> torch.Tensor:
    """The image tensor of a batch: ``(x, y)`` pairs and bare ``x`` both occur."""
    return batch[0] if isinstance(batch, list | tuple) else batch


class SampleGridCallback(L.Callback):
    """Saves ``<out_dir>/samples/epoch_{epoch:03d}.png``, a grid of the GAN's fixed-noise samples, on rank 0.

    Every ``every_n_epochs`` training epochs; the written paths accumulate in ``self.paths``.
    """

    def __init__(self, out_dir: str | Path, every_n_epochs: int = 1) -> None:
        self.out_dir = Path(out_dir)
        self.every_n_epochs = every_n_epochs
        self.paths: list[str] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs or not trainer.is_global_zero:
            return
        path = self.out_dir / "samples" / f"epoch_{epoch:03d}.png"
        save_image_grid(pl_module.sample_fixed(), path)
        self.paths.append(str(path))


def save_image_grid(images: torch.Tensor, path: Path, pad: int = 1) -> None:
    """Tile ``(N, C, H, W)`` images into a square-ish PNG, min-max scaled to 0–255 over the whole grid.

    One channel → grayscale, three → RGB, otherwise the first channel in grayscale. Small images are enlarged
    (nearest neighbour) so an 8×8 digit is still visible.
    """
    x = images.detach().float().cpu()
    x = x[:, :3] if x.shape[1] == 3 else x[:, :1]
    x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-8)  # [0, 1]
    n, c, h, w = x.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = torch.zeros(c, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for i in range(n):
        top, left = pad + (i // cols) * (h + pad), pad + (i % cols) * (w + pad)
        grid[:, top : top + h, left : left + w] = x[i]
    pixels = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # (H', W', C)
    image = Image.fromarray(np.ascontiguousarray(pixels.squeeze(2) if c == 1 else pixels))
    zoom = max(1, 32 // max(h, w))
    if zoom > 1:
        image = image.resize((image.width * zoom, image.height * zoom), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def sample_grid_callbacks(output_dir: str, section: dict[str, Any]) -> list[L.Callback]:
    """The GAN's own fit callbacks (its record names this): a grid of samples every few epochs."""
    return [SampleGridCallback(Path(output_dir), section.get("sample_every_n_epochs", 1))]
