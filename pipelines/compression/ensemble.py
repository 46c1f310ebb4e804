"""The ensemble as one shippable model (``compress.teacher=ensemble``): the best sweep trials' nets side by side in
one graph, shipped like any model — ONNX export with parity, quantization, measurement, gates — as ``ensemble``.

The graph keeps the contract of dlforge's classifier graphs: it outputs logits. Its output is the log of the members'
mean class probability, so ``softmax(output)`` is exactly that mean and ``argmax`` is the ensemble's prediction;
``dlforge predict`` and the pyfunc read it as they read any classifier. (The distillation teacher,
:class:`dl_lightning.distill.EnsembleTeacher`, averages the temperature-softened outputs instead; the shipped
ensemble predicts at temperature 1, as an ensemble is used.)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipelines.compression.measure import Probe
from pipelines.compression.results import Gate, Row
from pipelines.compression.ship import ship
from pipelines.compression.teacher import Teacher
from pipelines.config import Config

ROLE = "ensemble"


class EnsembleNet(nn.Module):
    """Several nets as one: ``log(mean_k softmax(z_k))`` for classification, ``mean_k y_k`` for regression.

    The members are registered children, so the ensemble's parameters, state dict and ONNX graph hold all of them.
    """

    def __init__(self, members: Sequence[nn.Module], task: str | None):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = torch.stack([member(x) for member in self.members])  # (k, B, K)
        if self.task != "classification":
            return outs.mean(0)
        # log of the mean probability, computed in log space: no probability underflows to log(0)
        return torch.logsumexp(torch.log_softmax(outs, dim=-1), dim=0) - math.log(len(self.members))  # (B, K)


def ensemble_net(teacher: Teacher, task: str | None) -> EnsembleNet:
    """The plain export nets of the ensemble teacher's members (raw-scale in, as each member's own graph) as one."""
    members = teacher.ensemble.members  # type: ignore[union-attr]
    return EnsembleNet([member.export_net()[0] for member in members], task).eval()


def ship_ensemble(
    cfg: Config, teacher: Teacher, probe: Probe, folder: Path
) -> tuple[list[Row], dict[str, str], list[Gate], dict[str, Any] | None]:
    """The ensemble's rows, files (``ensemble``, ``ensemble-int8``), gates and autotuning, as :func:`ship` gives them.

    Its first row, the ensemble in PyTorch, is the ensemble's own accuracy; its parameters and bytes are all its
    members'.
    """
    net = ensemble_net(teacher, probe.task)
    example = teacher.module.export_net()[1]
    rows, files, gates, tuned = ship(cfg, net, example, ROLE, teacher, teacher.family, probe, folder)
    name = f"ensemble of {len(net.members)} sweep trials fp32 (PyTorch)"
    return [dataclasses.replace(rows[0], model=name), *rows[1:]], files, gates, tuned
