"""Optimizers, lr schedules and regularizers built from the ``optim`` dict (OptimConfig + max_epochs)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler

from dl_lightning.errors import InputError

# Mirrors pipelines' OptimConfig defaults (dl_lightning may not import pipelines): a module builds without it.
DEFAULT_OPTIM: dict[str, Any] = {
    "name": "adamw",
    "lr": 1e-3,
    "weight_decay": 0.0,
    "l1": 0.0,
    "momentum": 0.9,
    "nesterov": False,
    "scheduler": "none",
    "step_size": 10,
    "gamma": 0.5,
    "warmup_epochs": 0,
    "backbone_lr_scale": 1.0,
    "max_epochs": 10,
}


def resolve_optim(optim: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults overlaid with ``optim``; an unknown key is an InputError, not a silently ignored typo."""
    unknown = sorted(set(optim or {}) - set(DEFAULT_OPTIM))
    if unknown:
        raise InputError(f"unknown optim setting(s) {', '.join(unknown)}; valid: {', '.join(DEFAULT_OPTIM)}")
    cfg = {**DEFAULT_OPTIM, **(optim or {})}
    if cfg["name"] == "sgd" and cfg["nesterov"] and cfg["momentum"] <= 0:
        raise InputError("optim.nesterov=true needs optim.momentum > 0; set momentum=0.9 or nesterov=false")
    return cfg


def build_optimizer(params: Iterable[nn.Parameter], cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg["name"]``; ``weight_decay`` is its L2 term (decoupled for adamw)."""
    name, lr, wd, momentum = cfg["name"], cfg["lr"], cfg["weight_decay"], cfg["momentum"]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=cfg["nesterov"], weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=wd)
    classes = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adagrad": torch.optim.Adagrad}
    if name not in classes:
        raise InputError(f"optim.name={name} is unknown; use one of sgd, adam, adamw, rmsprop, adagrad")
    return classes[name](params, lr=lr, weight_decay=wd)


def param_groups(module: nn.Module, backbone: frozenset[str], cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """``module``'s parameters as optimizer groups: one group, or — with ``backbone`` names (weights loaded from an
    earlier model) and ``backbone_lr_scale`` ≠ 1 — the head at ``lr`` and the backbone at ``lr × scale``.

    The split depends only on the names and the config, so a resumed fit rebuilds the same groups.
    """
    named = list(module.named_parameters())
    scale = cfg.get("backbone_lr_scale", 1.0)
    if scale == 1.0 or not backbone:
        return [{"params": [p for _, p in named]}]
    head = [p for name, p in named if name not in backbone]
    body = [p for name, p in named if name in backbone]
    groups = [{"params": body, "lr": cfg["lr"] * scale, "name": "backbone"}]
    return groups + ([{"params": head, "lr": cfg["lr"], "name": "head"}] if head else [])


class WarmupReduceLROnPlateau(lr_scheduler.ReduceLROnPlateau):
    """ReduceLROnPlateau that first ramps the lr up linearly for ``warmup_epochs`` steps, ignoring the metric.

    One object rather than two chained schedulers: a LambdaLR beside a plateau scheduler would rewrite the lr
    from its base every epoch and undo the plateau's reductions.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_epochs: int, **kwargs: Any) -> None:
        super().__init__(optimizer, **kwargs)
        self.warmup_epochs, self.warmup_done = warmup_epochs, 0
        self.target_lrs = [group["lr"] for group in optimizer.param_groups]
        self._set_warmup_lr()

    def _set_warmup_lr(self) -> None:
        factor = (self.warmup_done + 1) / (self.warmup_epochs + 1)  # reaches 1 after warmup_epochs steps
        for group, target in zip(self.optimizer.param_groups, self.target_lrs, strict=True):
            group["lr"] = target * factor
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def step(self, metrics: Any, epoch: int | None = None) -> None:  # type: ignore[override]
        if self.warmup_done < self.warmup_epochs:
            self.warmup_done += 1
            self._set_warmup_lr()
            return
        super().step(metrics)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: dict[str, Any]) -> Any | None:
    """The epoch-wise lr schedule of ``cfg``, with an optional linear warmup; None when there is none.

    Plateau waits ``step_size`` epochs without improvement before multiplying the lr by ``gamma``.
    """
    kind, warmup, gamma = cfg["scheduler"], cfg["warmup_epochs"], cfg["gamma"]
    if kind == "plateau":
        return WarmupReduceLROnPlateau(optimizer, warmup, mode="min", factor=gamma, patience=cfg["step_size"])
    main = {
        "none": lambda: None,
        "step": lambda: lr_scheduler.StepLR(optimizer, step_size=cfg["step_size"], gamma=gamma),
        "exponential": lambda: lr_scheduler.ExponentialLR(optimizer, gamma=gamma),
        # the cosine runs over the epochs left after warmup so it ends at its minimum on the last epoch
        "cosine": lambda: lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, cfg["max_epochs"] - warmup)),
    }[kind]()
    if warmup == 0:
        return main
    ramp = lr_scheduler.LinearLR(optimizer, start_factor=1.0 / (warmup + 1), total_iters=warmup)
    if main is None:
        return ramp
    return lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def l1_penalty(module: nn.Module) -> torch.Tensor:
    """``Σ|w|`` over weight matrices and kernels only: biases and norm scales (1-d) are not sparsified."""
    weights = [p.abs().sum() for name, p in module.named_parameters() if p.dim() > 1 and p.requires_grad]
    return torch.stack(weights).sum() if weights else torch.zeros(())


def rescale_lr(optimizer: torch.optim.Optimizer, schedulers: list[Any], lr: float) -> None:
    """Make ``lr`` the base lr of ``optimizer`` and its schedulers, keeping the schedule's current position.

    A group halfway through warmup or two decays in keeps that factor: its lr becomes ``lr · current / base``.
    Nested schedulers (SequentialLR's) are included so the next ``step()`` continues from the new base.
    """
    mine = [s for s in schedulers if s.optimizer is optimizer]  # a GAN has two optimizers, each with its own
    flat = [s for sched in mine for s in (sched, *getattr(sched, "_schedulers", ()))]
    plateau_bases = next((s.target_lrs for s in flat if isinstance(s, WarmupReduceLROnPlateau)), None)
    for i, group in enumerate(optimizer.param_groups):
        base = group.get("initial_lr") or (plateau_bases[i] if plateau_bases else group["lr"])
        group["lr"] = lr * group["lr"] / base
        if "initial_lr" in group:
            group["initial_lr"] = lr
    for sched in flat:
        for attr in ("base_lrs", "target_lrs"):
            if hasattr(sched, attr):
                setattr(sched, attr, [lr] * len(optimizer.param_groups))
        sched._last_lr = [group["lr"] for group in optimizer.param_groups]


def set_dropout(module: nn.Module, p: float) -> None:
    """Set every dropout probability in ``module``: Dropout layers, RNN inter-layer and attention dropout."""
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
        elif isinstance(m, nn.MultiheadAttention) or (isinstance(m, nn.RNNBase) and m.num_layers > 1):
            m.dropout = p  # attention weights / between stacked recurrent layers
