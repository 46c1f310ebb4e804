"""The user's own model, named by class path: ``pkg.module:Class`` or ``path/to/file.py:Class``.

Two kinds of class are taken:

- a plain ``torch.nn.Module``: wrapped in :class:`UserNetModule`, dlforge's supervised LightningModule, so the
  configured loss, optimizer, scheduler, regularization, metrics and guards apply as to a built-in family; its
  inputs arrive standardized with the train split's statistics (inside the net, so an exported model takes raw input);
- a ``LightningModule``: trained as it is (its own ``training_step`` and ``configure_optimizers``).

Either way the constructor gets ``model.args`` plus the data facts it declares by name (:data:`DATA_FACTS`), and the
checkpoint records the class path and arguments as plain data (``torch.load(weights_only=True)`` reads it). A class is
imported only when the configuration names it; ``registry.checkpoint_family`` refuses a checkpoint naming another.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Any

import lightning.pytorch as L
from torch import nn

from dl_lightning.data.class_path import check_arguments, import_class_path
from dl_lightning.errors import InputError, clip
from dl_lightning.families import NO_MONITOR, SUPERVISED_MONITOR, Family
from dl_lightning.modules.base import FAMILY_KEY, SupervisedModule, example_input
from dl_lightning.nets.common import standardizer, vocab_size

DATA_FACTS = ("input_shape", "num_outputs", "vocab_size")  # filled in from the data when the constructor names them
MODEL_KEY = "dlforge_model"  # checkpoint key: {"args": ..., "data": ..., "optim": ...}, plain data
ALL_KINDS = frozenset({"tabular", "image", "sequence", "text"})


# ---------------------------------------------------------------- import and signature


def load_class(class_path: str) -> type:
    """The ``nn.Module`` class ``class_path`` names, imported now (``dl_lightning.data.class_path``).

    Raises:
        InputError: the module or file is missing or fails to import, the name is not a class in it (the closest
            one suggested), or it is not an ``nn.Module`` class.
    """
    found = import_class_path(class_path, "model.family")
    if not issubclass(found, nn.Module):
        raise InputError(f"model.family={class_path} is not a torch.nn.Module or LightningModule class; name one")
    return found


def check_args(class_path: str, cls: type, args: dict[str, Any], key: str = "model.args") -> None:
    """Refuse arguments the constructor does not take and required ones that are missing, before anything runs.

    Raises:
        InputError: a data fact set by hand, an unknown argument (the closest valid one named), or a required
            argument without a value.
    """
    for arg in args:
        if arg in DATA_FACTS:
            raise InputError(f"{key}.{arg} is filled in from the data; remove it")
    check_arguments(cls, args, key, provided=DATA_FACTS)


def argument_keys(class_path: str) -> list[str]:
    """``model.args.<name>`` for each constructor argument the user sets (the data facts are dlforge's)."""
    named = [p for p in _parameters(load_class(class_path)) if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return [f"model.args.{p.name}" for p in named if p.name not in DATA_FACTS]


def _parameters(cls: type) -> list[inspect.Parameter]:
    try:
        signature = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return []
    return [p for name, p in signature.parameters.items() if name != "self"]


def data_facts(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The data facts among the constructor's parameters: ``input_shape`` (tuple), ``num_outputs``, ``vocab_size``."""
    facts = {
        "input_shape": tuple(data["input_shape"]),
        "num_outputs": int(data["num_outputs"]),
        "vocab_size": vocab_size(data),
    }
    declared = {p.name for p in _parameters(cls)}
    return {name: value for name, value in facts.items() if name in declared}


def construct(class_path: str, args: dict[str, Any], data: dict[str, Any]) -> nn.Module:
    """The user's class built with ``args`` and its declared data facts (arguments checked first)."""
    cls = load_class(class_path)
    check_args(class_path, cls, args)
    try:
        return cls(**args, **data_facts(cls, data))
    except Exception as exc:  # the user's constructor raised: one line naming it
        raise InputError(f"{class_path}({_short(args)}) raised {type(exc).__name__}: {exc}") from None


def _short(args: dict[str, Any]) -> str:
    return clip(", ".join(f"{k}={v!r}" for k, v in args.items()), 120)


def is_lightning(class_path: str) -> bool:
    return issubclass(load_class(class_path), L.LightningModule)


# ---------------------------------------------------------------- the record, build and load


def user_record(class_path: str) -> Family:
    """A family record for a user's class: any data kind; a LightningModule has no default monitor (it logs what
    it logs: set ``trainer.monitor``); the student's widths are not known (``compress.student.args`` sets them)."""
    lightning = is_lightning(class_path)
    return Family(
        class_path,
        load_class(class_path) if lightning else UserNetModule,
        ALL_KINDS,
        monitor=dict(NO_MONITOR if lightning else SUPERVISED_MONITOR),
    )


class UserNetModule(SupervisedModule):
    """A user's plain ``nn.Module`` as ``self.net``, behind the train split's standardization, trained as a built-in
    supervised family is (loss, metrics, optimizer, scheduler, L1, class weights, guards)."""

    family = "user"  # replaced per instance by the class path (what the checkpoint records)

    def __init__(self, data: dict, class_path: str, args: dict | None = None, optim: dict | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.family = class_path
        self.init_supervised(data, optim)
        inner = construct(class_path, dict(args or {}), data)
        self.net = nn.Sequential(OrderedDict(norm=standardizer(data), model=inner))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[MODEL_KEY] = {"args": self.hparams["args"] or {}, "data": self.data_spec, "optim": self.optim_cfg}


def build_user_module(class_path: str, data: dict, args: dict[str, Any], optim: dict[str, Any]) -> L.LightningModule:
    """The LightningModule for a user's class: a LightningModule as built, a plain net inside :class:`UserNetModule`.

    Raises:
        InputError: the class does not import or its constructor does not take ``args``.
    """
    if not is_lightning(class_path):
        return UserNetModule(data, class_path, dict(args), dict(optim))
    module = construct(class_path, dict(args), data)
    _stamp(module, class_path, {"args": dict(args), "data": data, "optim": dict(optim)})
    return module


def _stamp(module: L.LightningModule, class_path: str, record: dict[str, Any]) -> None:
    """Give a user's LightningModule what the stages read (its data facts, an export input) and make its checkpoints
    record the class path and arguments, after whatever its own ``on_save_checkpoint`` stores."""
    own = module.on_save_checkpoint

    def on_save_checkpoint(checkpoint: dict[str, Any]) -> None:
        own(checkpoint)
        checkpoint[FAMILY_KEY] = class_path
        checkpoint[MODEL_KEY] = record

    module.on_save_checkpoint = on_save_checkpoint
    module.data_spec = record["data"]
    if getattr(module, "example_input_array", None) is None:
        module.example_input_array = example_input(record["data"])
    if not hasattr(module, "export_net"):
        module.export_net = lambda: (module, module.example_input_array)


def saved_facts(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """``{"args", "data", "optim"}`` of a checkpoint of a user's class (plain data)."""
    facts = checkpoint.get(MODEL_KEY)
    if not isinstance(facts, dict) or "data" not in facts:
        raise InputError("the checkpoint has no record of its model's arguments and data; retrain it with dlforge")
    return facts


def load_user_module(checkpoint: dict[str, Any]) -> L.LightningModule:
    """The user's model rebuilt from a checkpoint whose class path was already allowed (``checkpoint_family``)."""
    facts = saved_facts(checkpoint)
    module = build_user_module(checkpoint[FAMILY_KEY], facts["data"], facts["args"], facts.get("optim") or {})
    module.load_state_dict(checkpoint["state_dict"])
    return module
