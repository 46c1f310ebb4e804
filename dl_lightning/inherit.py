"""Weight inheritance: a narrower student starts from its teacher's weights instead of a random draw.

What the field does before distilling (DistilBERT initialises its student from the teacher's layers; Minitron prunes,
then distils): the student is the teacher's architecture with its widths shrunk, so each student tensor is a slice
of the teacher tensor of the same name. :func:`inherit` copies, for every student parameter and persistent buffer
with a teacher counterpart of the same name and rank, the teacher's leading part along every axis — the same first
``k`` units everywhere, so the units a layer keeps are exactly the inputs the next layer keeps. Axes that stack
several groups of units are sliced group by group:

- LSTM / GRU weights and biases stack their gates (``[4H, …]``, ``[3H, …]``): the first ``k`` units of each gate;
  a bidirectional stack's upper layers (and the linear layer after it) read ``[forward H, backward H]``: the first
  ``k`` of each direction.
- ``nn.MultiheadAttention``'s ``in_proj`` stacks q, k and v (``[3d, d]``) and each splits into heads: the first
  ``head_dim`` rows of every head of every projection; ``out_proj`` reads the heads the same way. The number of heads
  must be the same in both (a shrunk transformer keeps ``nhead`` and narrows ``head_dim``).
- BatchNorm's running statistics slice like its weights; its batch counter is copied.

With the same widths the student is an exact copy of the teacher. A tensor that cannot be sliced (another rank, a
student axis wider than the teacher's, a group count that does not divide it) is left as initialised and named in
the result. Non-persistent buffers (a position table computed from the shape) are the student's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}  # stacked gate blocks in the rows of a recurrent layer's tensors


@dataclass(frozen=True)
class Inheritance:
    """What :func:`inherit` did: tensors copied (whole or sliced), and the student tensors it left as they were."""

    copied: int
    fresh: tuple[str, ...]

    @property
    def total(self) -> int:
        return self.copied + len(self.fresh)

    def summary(self) -> str:
        """One line, e.g. ``"20 of 22 tensors inherited; fresh: head.weight, head.bias"``."""
        text = f"{self.copied} of {self.total} tensors inherited"
        return f"{text}; fresh: {', '.join(self.fresh)}" if self.fresh else text


def inherit(student: nn.Module, teacher: nn.Module) -> Inheritance:
    """Copy the teacher's leading slice into every student tensor that has a sliceable counterpart of its name.

    Guarantees: with identical architectures the student's outputs equal the teacher's exactly; a copied tensor
    equals the teacher's slice (group by group for gates, heads and directions). The teacher is not modified.
    """
    teacher_tensors = {**dict(teacher.named_parameters()), **_persistent_buffers(teacher)}
    copied, fresh = 0, []
    with torch.no_grad():
        for name, tensor in {**dict(student.named_parameters()), **_persistent_buffers(student)}.items():
            source = teacher_tensors.get(name)
            part = None if source is None else take(source, tensor.shape, _groups(student, name, tensor.dim()))
            if part is None:
                fresh.append(name)
                continue
            tensor.copy_(part)
            copied += 1
    return Inheritance(copied, tuple(fresh))


def take(source: torch.Tensor, shape: torch.Size, groups: tuple[int, ...]) -> torch.Tensor | None:
    """The leading ``shape`` of ``source``, axis ``i`` cut into ``groups[i]`` equal blocks each keeping its head.

    None when the ranks differ, a group count does not divide both sizes, or the student's block is the wider.
    """
    if source.dim() != len(shape):
        return None
    for axis, (want, blocks) in enumerate(zip(shape, groups, strict=True)):
        have = source.shape[axis]
        if want % blocks or have % blocks or want > have:
            return None
        split = source.unflatten(axis, (blocks, have // blocks))  # (…, blocks, block, …)
        source = split.narrow(axis + 1, 0, want // blocks).flatten(axis, axis + 1)
    return source


def _persistent_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}{'.' if prefix else ''}{name}": buf
        for prefix, mod in module.named_modules()
        for name, buf in mod.named_buffers(recurse=False)
        if name not in mod._non_persistent_buffers_set
    }


def _groups(root: nn.Module, name: str, rank: int) -> tuple[int, ...]:
    """How many stacked blocks each axis of the tensor ``name`` holds (1 = one block of plain units)."""
    owner_path, _, leaf = name.rpartition(".")
    owner = root.get_submodule(owner_path)
    parent_path, _, child = owner_path.rpartition(".")
    parent = root.get_submodule(parent_path) if owner_path else None
    if type(owner) in GATES:
        return _recurrent_groups(owner, leaf, rank)
    if isinstance(owner, nn.MultiheadAttention) and leaf.startswith("in_proj"):
        return (3 * owner.num_heads,) + (1,) * (rank - 1)  # rows: q, k, v, each head by head
    if isinstance(parent, nn.MultiheadAttention) and child == "out_proj" and rank == 2:
        return (1, parent.num_heads)  # columns: the heads, concatenated
    if isinstance(owner, nn.Linear) and leaf == "weight":
        return (1, _directions_before(root, owner))
    return (1,) * rank


def _recurrent_groups(rnn: nn.RNNBase, leaf: str, rank: int) -> tuple[int, ...]:
    gates = GATES[type(rnn)]
    if rank == 1:  # bias_ih_l0, bias_hh_l0: [gates · H]
        return (gates,)
    upper_input = leaf.startswith("weight_ih") and not leaf.startswith("weight_ih_l0")
    directions = 2 if rnn.bidirectional and upper_input else 1  # upper layers read [forward H, backward H]
    return (gates, directions)


def _directions_before(root: nn.Module, linear: nn.Linear) -> int:
    """2 when ``linear`` is the first linear layer registered after a bidirectional recurrent layer, else 1."""
    directions = 1
    for module in root.modules():
        if module is linear:
            return directions
        if type(module) in GATES:
            directions = 2 if module.bidirectional else 1
        elif isinstance(module, nn.Linear):
            directions = 1
    return 1
