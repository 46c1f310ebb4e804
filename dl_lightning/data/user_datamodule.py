"""A user's own LightningDataModule as the data source: ``data.source=pkg.module:MyDataModule`` (or ``file.py:…``).

dlforge builds it from ``data.args``, calls its hooks, and reads the :class:`DataSpec` the built-in data would give
from one batch of its train loader, so models are built the same way. The data is never gathered: the module
streams its batches to the trainer, and the compress stage reads a bounded number of them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden

from dl_lightning.data.class_path import check_arguments, import_class_path
from dl_lightning.data.spec import DataSpec, Kind
from dl_lightning.errors import InputError, one_line

KINDS_BY_RANK: dict[int, Kind] = {1: "tabular", 2: "sequence", 3: "image"}  # float inputs: dims per example
# data.* keys a DataModule source reads; the others describe dlforge's own loaders, so setting one is a mistake
DATAMODULE_KEYS = frozenset({"source", "args", "kind", "task", "num_classes"})


@dataclass(frozen=True, eq=False)
class UserData:
    """The user's DataModule, set up for fitting, and the spec read from its first train batch.

    ``has_test``: it defines ``test_dataloader``; when it does not, its val loader stands in for it (``notes``
    says so) and test metrics are computed on validation data. ``notes``: lines for the caller to print.
    """

    datamodule: L.LightningDataModule
    spec: DataSpec
    source: str
    has_test: bool
    notes: tuple[str, ...] = ()

    def val_inputs(self, count: int) -> list[np.ndarray]:
        """The inputs of the val loader's first ``count`` batches (fewer when it has fewer)."""
        batches = []
        for x, _ in _pairs(self.datamodule.val_dataloader(), self.source):
            batches.append(_array(x, self.spec))
            if len(batches) >= count:
                break
        if not batches:
            raise InputError(f"data.source={self.source}: its val loader is empty; it must yield at least one batch")
        return batches

    def test_examples(self, limit: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """``(x, y, cut)``: the test loader's first examples, at most ``limit`` (about; whole batches), and
        whether the loader had more."""
        if self.has_test:
            self.datamodule.setup("test")
        xs, ys, seen = [], [], 0
        for x, y in _pairs(self.datamodule.test_dataloader(), self.source):
            if seen >= limit:
                return np.concatenate(xs), np.concatenate(ys), True
            xs.append(_array(x, self.spec))
            ys.append(y.reshape(len(y), -1)[:, 0].numpy().astype(_target_dtype(self.spec)))
            seen += len(x)
        return np.concatenate(xs), np.concatenate(ys), False


def load_user_data(
    source: str,
    args: Mapping[str, Any],
    *,
    changed: Iterable[str] = (),
    kind: str | None = None,
    task: str | None = None,
    num_classes: int | None = None,
) -> UserData:
    """Build ``source``'s DataModule from ``args``, call ``prepare_data`` and ``setup("fit")``, read its spec.

    Args:
        changed: the ``data.*`` keys the config sets away from their defaults; only :data:`DATAMODULE_KEYS` apply.
        kind, task, num_classes: ``data.kind``/``data.task``/``data.num_classes`` when the batch cannot tell.

    Raises:
        InputError: one line — not a LightningDataModule, an argument its constructor lacks or needs, a hook or
            a batch that fails, a batch that is not ``(inputs, targets)`` tensors, or classes that cannot be told.
    """
    _refuse_loader_settings(changed)
    cls = import_class_path(source, "data.source")
    if not issubclass(cls, L.LightningDataModule):
        raise InputError(f"data.source={source} is a {cls.__name__}, not a LightningDataModule; name your DataModule")
    check_arguments(cls, args, "data.args")
    datamodule = _user_call(source, "its constructor", lambda: cls(**args))
    for loader, use in (("train_dataloader", "to train on"), ("val_dataloader", "to pick the best checkpoint")):
        if not is_overridden(loader, datamodule, L.LightningDataModule):
            raise InputError(f"data.source={source} defines no {loader}; dlforge needs one {use}")
    if os.environ.get("LOCAL_RANK", "0") == "0":  # Lightning's rule: other ranks start after rank 0 prepared it
        _user_call(source, "prepare_data()", datamodule.prepare_data)
    _user_call(source, 'setup("fit")', lambda: datamodule.setup("fit"))
    batch = _user_call(source, "its first train batch", lambda: next(iter(datamodule.train_dataloader())))
    x, y = _pair(batch, source)
    spec = infer_spec(x, y, datamodule, source, args, kind=kind, task=task, num_classes=num_classes)
    has_test = is_overridden("test_dataloader", datamodule, L.LightningDataModule)
    notes: tuple[str, ...] = ()
    if not has_test:
        datamodule.test_dataloader = datamodule.val_dataloader  # test/* metrics: the next best held-out data
        notes = (f"data: {source} has no test_dataloader; test metrics are computed on its val loader",)
    return UserData(datamodule, spec, source, has_test, notes)


def _refuse_loader_settings(changed: Iterable[str]) -> None:
    for key in changed:
        if key not in DATAMODULE_KEYS:
            fix = "data.args.batch_size" if key == "batch_size" else "data.args (or your DataModule)"
            raise InputError(
                f"data.{key} configures dlforge's own loaders, not a DataModule source; set it in {fix} or drop it"
            )


def _user_call(source: str, what: str, call: Any) -> Any:
    """``call()``; an exception in the user's code becomes one line naming the step (a typo in ``args`` values,
    a missing file), not a traceback."""
    try:
        return call()
    except (InputError, KeyboardInterrupt):
        raise
    except StopIteration:
        raise InputError(f"data.source={source}: its train loader is empty; it must yield at least one batch") from None
    except Exception as exc:
        raise InputError(f"data.source={source}: {what} failed: {type(exc).__name__}: {one_line(exc, 300)}") from None


def _pair(batch: Any, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` of one batch, or InputError saying what a batch must be."""
    if isinstance(batch, list | tuple) and len(batch) >= 2 and all(torch.is_tensor(b) for b in batch[:2]):
        return batch[0], batch[1]
    got = type(batch).__name__ + (f" of {len(batch)}" if isinstance(batch, list | tuple) else "")
    raise InputError(
        f"data.source={source}: batches must be (inputs, targets) tensor pairs; its train loader gave {got}"
    )


def _pairs(loader: Iterable[Any], source: str) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    return (_pair(batch, source) for batch in loader)


def infer_spec(
    x: torch.Tensor,
    y: torch.Tensor,
    datamodule: Any,
    source: str,
    args: Mapping[str, Any],
    *,
    kind: str | None = None,
    task: str | None = None,
    num_classes: int | None = None,
) -> DataSpec:
    """The spec the built-in data would give, read from one batch ``(x, y)``.

    Kind from the inputs (float: 1 dim per example tabular, 2 sequence, 3 image; integer ids ``(B, T)`` text,
    whose ``vocab`` the DataModule holds); task from the targets (float: regression, integer: classification)
    unless ``task`` is set; classes from ``num_classes``, else the DataModule's ``num_classes`` attribute — never
    from the labels seen, which one batch may not all hold. Normalization statistics stay empty: the DataModule's
    batches reach the net as they are.
    """
    kind_ = _kind(x, source, kind)
    task_ = task or ("regression" if y.is_floating_point() else "classification")
    outputs = _num_outputs(y, datamodule, source, task_, num_classes)
    names = tuple(str(n) for n in getattr(datamodule, "class_names", None) or ())
    vocab = _vocab(datamodule, source) if kind_ == "text" else ()
    digest = hashlib.sha256(f"{source}\x1f{sorted(args.items())!r}".encode())
    digest.update(x.detach().cpu().contiguous().numpy().tobytes())  # the first batch: changes with the data
    return DataSpec(
        kind=kind_,
        task=task_,
        input_shape=tuple(int(d) for d in x.shape[1:]),
        num_outputs=outputs,
        class_names=names if task_ == "classification" and len(names) == outputs else (),
        vocab=vocab,
        fingerprint=digest.hexdigest(),
    )


def _kind(x: torch.Tensor, source: str, kind: str | None) -> Kind:
    shape = tuple(x.shape)
    if x.dtype == torch.float64:
        raise InputError(
            f"data.source={source}: inputs are float64; yield float32 (x.float()) as the nets compute in it"
        )
    if x.is_floating_point() and x.dim() - 1 in KINDS_BY_RANK:
        found = KINDS_BY_RANK[x.dim() - 1]
    elif not x.is_floating_point() and x.dtype != torch.bool and x.dim() == 2:
        found = "text"  # integer (batch, T): token ids
    else:
        raise InputError(
            f"data.source={source}: inputs of shape {shape} ({x.dtype}) are none of tabular (B, F), sequence "
            "(B, T, F), image (B, C, H, W) floats or text (B, T) token ids"
        )
    if kind is not None and kind != found:
        raise InputError(f"data.kind={kind} but {source} yields {found} inputs of shape {shape}; drop data.kind")
    return found


def _num_outputs(y: torch.Tensor, datamodule: Any, source: str, task: str, num_classes: int | None) -> int:
    """1 for regression; else the classes ``data.num_classes`` or the DataModule names, checked against ``y``."""
    if task == "regression":
        if y.dim() > 2 or (y.dim() == 2 and y.shape[1] != 1):
            raise InputError(f"data.source={source}: regression targets must be (B,) or (B, 1); got {tuple(y.shape)}")
        return 1
    if y.dim() != 1 or y.is_floating_point() and not torch.equal(y, y.round()):
        raise InputError(
            f"data.source={source}: class targets must be whole numbers of shape (B,); got {tuple(y.shape)} "
            f"{y.dtype} — for real-valued targets set data.task=regression"
        )
    count = num_classes or getattr(datamodule, "num_classes", None)
    if not isinstance(count, int) or count < 2:
        raise InputError(
            f"data.source={source}: one batch cannot tell how many classes there are; set data.num_classes=N "
            "(or give the DataModule a num_classes attribute)"
        )
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= count):
        raise InputError(
            f"data.source={source}: a label {int(y.max()) if int(y.max()) >= count else int(y.min())} is outside "
            f"0..{count - 1}; set data.num_classes to the number of classes"
        )
    return count


def _vocab(datamodule: Any, source: str) -> tuple[str, ...]:
    vocab = getattr(datamodule, "vocab", None)
    if not vocab or not all(isinstance(token, str) for token in vocab):
        raise InputError(
            f"data.source={source} yields token ids; give the DataModule a vocab attribute (index → token, "
            "0 padding, 1 unknown) so the embedding is sized and predict can tokenize"
        )
    return tuple(vocab)


def _array(x: torch.Tensor, spec: DataSpec) -> np.ndarray:
    """A batch of inputs as the exported model takes them: int64 token ids or float32 values."""
    return x.detach().cpu().numpy().astype(np.int64 if spec.kind == "text" else np.float32)


def _target_dtype(spec: DataSpec) -> type:
    return np.int64 if spec.task == "classification" else np.float32
