"""One record per model family: everything a stage needs to know about a family, in one place.

A stage never branches on a family's name; it asks the family's :class:`Family` record (its module class, config
section, the data kinds it takes, how a student shrinks it, its default monitor, whether it is generative, whether its
ONNX input has a sequence axis). The built-in records are declared here; ``dl_lightning.registry`` holds the table.

This file imports no torch: the config (and ``dlforge predict``, which never imports torch) reads the section
classes and family names from here. A record names its module as ``"package.module:Class"``, imported on first use.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Literal

SUPERVISED_MONITOR = {"classification": ("val/acc", "max"), "regression": ("val/mse", "min")}
NO_MONITOR = {"classification": (None, "min"), "regression": (None, "min")}  # a GAN has no good one


def bounds(*, ge: float | None = None, gt: float | None = None, le: float | None = None) -> dict[str, Any]:
    """Range metadata of a config field, checked when the config is built (``pipelines.config``)."""
    return {"ge": ge, "gt": gt, "le": le}


# ---------------------------------------------------------------- config sections (typed defaults, declared once)


@dataclass(frozen=True)
class MLPConfig:
    hidden: tuple[int, ...] = (256, 128)
    batch_norm: bool = False


@dataclass(frozen=True)
class CNNConfig:
    channels: tuple[int, ...] = (32, 64)
    kernel_size: int = field(default=3, metadata=bounds(ge=1))
    batch_norm: bool = True
    hidden: int = field(default=128, metadata=bounds(ge=1))


@dataclass(frozen=True)
class RNNConfig:
    cell: Literal["lstm", "gru", "rnn"] = "lstm"
    hidden_size: int = field(default=128, metadata=bounds(ge=1))
    num_layers: int = field(default=0, metadata=bounds(ge=0))  # 0 = auto: 1 for text, 2 for sequences (nets/rnn.py)
    bidirectional: bool = False
    # token embedding size for text (sequences have no embedding); 128 learned faster than 64 (docs/benchmarks.md)
    embed_dim: int = field(default=128, metadata=bounds(ge=1))
    summary: Literal["auto", "last", "max"] = "auto"  # what the head reads: auto = max over words, last for sequences


@dataclass(frozen=True)
class TransformerConfig:
    d_model: int = field(default=64, metadata=bounds(ge=4))
    nhead: int = field(default=4, metadata=bounds(ge=1))
    num_layers: int = field(default=2, metadata=bounds(ge=1))
    dim_feedforward: int = field(default=128, metadata=bounds(ge=1))
    summary: Literal["auto", "mean", "max"] = "auto"  # what the head reads: auto = max over words, mean for sequences


@dataclass(frozen=True)
class GANConfig:
    latent_dim: int = field(default=64, metadata=bounds(ge=1))
    width: int = field(default=64, metadata=bounds(ge=4))  # feature maps of the first G / last D layer
    sample_every_n_epochs: int = field(default=1, metadata=bounds(ge=1))


# ---------------------------------------------------------------- the record


@dataclass(frozen=True, eq=False)
class Family:
    """What every stage asks about a family.

    Attributes:
        name: ``model.family``'s value.
        module: the LightningModule class, or ``"package.module:Class"`` (imported by :meth:`module_class`).
            It takes ``data`` (``DataSpec.to_dict()``), ``optim`` and the section's keys plus ``dropout``.
        accepts: the data kinds it takes.
        section: the config section of typed defaults (``model.<name>``), or None: arguments come from ``model.args``.
        width_keys: arguments a student multiplies by ``compress.student.width`` (ints, or lists of ints).
        depth_keys: arguments ``compress.student.depth`` cuts: a list to its first ``depth`` items, an int to ``depth``.
        student_depth: the depth a student keeps when ``compress.student.depth`` is 0 (0: its teacher's).
        multiple_of: ``(key, of)`` pairs: after shrinking, ``key`` stays a multiple of ``of`` (attention heads).
        fit_only_keys: section keys the fit uses but the module does not take (e.g. how often to save samples).
        monitor: task → the default checkpoint/early-stopping metric and its mode (``None``: no good one).
        generative: it makes data rather than predicting labels: no student, no labels, its ONNX input is noise.
        sequence_axis: its exported input has a dynamic sequence axis (dim 1) besides the batch.
        manual_optimization: it steps its own optimizers (Lightning's gradient clipping/accumulation cannot apply).
        callbacks: ``"package.module:function"`` making extra fit callbacks from ``(output_dir, section dict)``.
    """

    name: str
    module: type | str
    accepts: frozenset[str]
    section: type | None = None
    width_keys: tuple[str, ...] = ()
    depth_keys: tuple[str, ...] = ()
    student_depth: int = 0
    multiple_of: tuple[tuple[str, str], ...] = ()
    fit_only_keys: tuple[str, ...] = ()
    monitor: dict[str, tuple[str | None, str]] = field(default_factory=lambda: dict(SUPERVISED_MONITOR))
    generative: bool = False
    sequence_axis: bool = False
    manual_optimization: bool = False
    callbacks: str | None = None

    def module_class(self) -> type:
        """The LightningModule class (imported now when the record names it by path)."""
        return self.module if isinstance(self.module, type) else import_attribute(self.module)

    def default_monitor(self, task: str) -> tuple[str | None, str]:
        """The checkpoint/early-stopping metric and mode for ``task``."""
        return self.monitor.get(task, (None, "min"))

    def fit_callbacks(self, output_dir: str, section: dict[str, Any]) -> list[Any]:
        """The family's own fit callbacks (none unless the record names a factory)."""
        return import_attribute(self.callbacks)(output_dir, section) if self.callbacks else []


def import_attribute(path: str) -> Any:
    """``"package.module:name"`` → the named attribute (imports the module)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


BUILTIN: tuple[Family, ...] = (
    Family(
        "mlp",
        "dl_lightning.modules.mlp:MLPModule",
        frozenset({"tabular", "image", "sequence", "text"}),
        MLPConfig,
        width_keys=("hidden", "embed_dim"),
        depth_keys=("hidden",),
    ),
    Family(
        "cnn",
        "dl_lightning.modules.cnn:CNNModule",
        frozenset({"image", "sequence"}),
        CNNConfig,
        width_keys=("channels", "hidden"),
        depth_keys=("channels",),
    ),
    Family(
        "rnn",
        "dl_lightning.modules.rnn:RNNModule",
        frozenset({"sequence", "text"}),
        RNNConfig,
        width_keys=("hidden_size", "embed_dim"),
        depth_keys=("num_layers",),
        sequence_axis=True,
    ),
    Family(
        "transformer",
        "dl_lightning.modules.transformer:TransformerModule",
        frozenset({"sequence", "text"}),
        TransformerConfig,
        width_keys=("d_model", "dim_feedforward"),
        depth_keys=("num_layers",),
        # within ¼ of the parameters one wider layer held its teacher where two narrower ones fell 2 points short
        # (docs/benchmarks.md, distillation)
        student_depth=1,
        multiple_of=(("d_model", "nhead"),),
        sequence_axis=True,
    ),
    Family(
        "gan",
        "dl_lightning.modules.gan:GANModule",
        frozenset({"image"}),
        GANConfig,
        width_keys=("width",),
        fit_only_keys=("sample_every_n_epochs",),
        monitor=dict(NO_MONITOR),
        generative=True,
        manual_optimization=True,
        callbacks="dl_lightning.modules.gan:sample_grid_callbacks",
    ),
)

_RECORDS: dict[str, Family] = {record.name: record for record in BUILTIN}


def register(record: Family) -> Family:
    """Add (or replace) a family; ``model.family=<record.name>`` then builds it in every stage."""
    _RECORDS[record.name] = record
    return record


def unregister(name: str) -> None:
    """Remove a family added by :func:`register` (built-ins stay)."""
    if name not in {record.name for record in BUILTIN}:
        _RECORDS.pop(name, None)


def names() -> list[str]:
    """Every registered family name, built-ins first."""
    return list(_RECORDS)


def is_builtin(name: str) -> bool:
    return any(record.name == name for record in BUILTIN)


def is_class_path(family: str) -> bool:
    """``pkg.module:Class`` or ``path/to/file.py:Class``: a user's own model rather than a registered family."""
    return ":" in family  # checked in full when imported (dl_lightning.data.class_path)


def find(name: str) -> Family | None:
    """The registered record of ``name``, or None (a class path or an unknown name)."""
    return _RECORDS.get(name)


def unknown_message(family: str) -> str:
    """One line for a ``model.family`` that is neither registered nor a class path, with the closest name."""
    close = difflib.get_close_matches(family, names(), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return (
        f"model.family={family} is unknown{hint}; use one of {', '.join(names())}, or your own class as "
        "pkg.module:Class or path/to/file.py:Class"
    )


def label(family: str) -> str:
    """A short name for run names and registered models: the family, or a class path's class name in lower case."""
    return family.rpartition(":")[2].lower() if is_class_path(family) else family
