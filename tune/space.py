"""Search spaces: ``tune.space`` (dotted config key → distribution spec) checked, then translated for Ray.

A spec is a one-key mapping: ``{loguniform: [low, high]}``, ``{uniform: [low, high]}``, ``{randint: [low, high]}``
(``high`` excluded, as in Ray and numpy), ``{choice: [v1, v2, ...]}`` or ``{grid: [v1, v2, ...]}``. Keys may be
written dotted (``optim.lr: {...}``) or nested (``optim: {lr: {...}}``); both name the same dimension.

Everything here but :func:`to_ray` and :func:`pbt_mutations` is plain Python, so bad input is rejected without
importing or starting Ray.
"""

from __future__ import annotations

import contextlib
import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dl_lightning.errors import InputError

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice", "grid")
_RANGES = ("loguniform", "uniform", "randint")
# Keys PBT may change in the middle of a trial: the optimizer's numbers, dropout, batch size and augmentation are
# re-applied after a restore; anything else (architecture, optimizer class) would not fit the donor's checkpoint.
PBT_MUTABLE = ("optim.lr", "optim.weight_decay", "optim.l1", "optim.momentum", "model.dropout", "data.batch_size")
PBT_MUTABLE_PREFIXES = ("data.augment.",)


@dataclass(frozen=True)
class Dimension:
    """One searched key: ``kind`` is one of DISTRIBUTIONS; ``values`` is ``(low, high)`` or the candidates."""

    key: str
    kind: str
    values: tuple[Any, ...]

    @property
    def is_range(self) -> bool:
        return self.kind in _RANGES

    def candidates(self) -> tuple[Any, ...]:
        """Values that bound the dimension, to check against the config before anything runs."""
        if self.kind == "randint":
            return (self.values[0], self.values[1] - 1)
        return self.values

    def describe(self) -> str:
        return f"{self.kind}{list(self.values)}"


def parse_space(raw: Mapping[str, Any], valid_keys: Iterable[str]) -> dict[str, Dimension]:
    """Check ``raw`` (the ``tune.space`` mapping) and return its dimensions keyed by dotted config key.

    Raises:
        InputError: an empty space, a key that is not a sweepable config key (naming the closest valid one), an
            unknown distribution, or bounds/candidates that do not make sense; one line each.
    """
    valid = set(valid_keys)
    specs = _flatten_specs(raw, valid, prefix="")
    if not specs:
        raise InputError(
            "tune.space is empty; give at least one key, e.g. tune.space.optim.lr={loguniform: [1e-4, 1e-2]}"
        )
    return {key: _dimension(key, spec) for key, spec in specs.items()}


def check_search(space: Mapping[str, Dimension], search: str, scheduler: str) -> None:
    """Refuse combinations Ray would reject later, or silently run differently from what the config says."""
    ranges = [d.key for d in space.values() if d.is_range]
    grids = [d.key for d in space.values() if d.kind == "grid"]
    if search == "grid" and ranges:
        raise InputError(
            f"tune.search=grid needs every dimension to be grid or choice, but {ranges[0]} is "
            f"{space[ranges[0]].kind}; list its values with {{grid: [...]}} or use tune.search=random"
        )
    if search == "optuna" and grids:
        raise InputError(f"tune.search=optuna cannot take grid dimensions ({grids[0]}); write it as {{choice: [...]}}")
    if scheduler == "pbt":
        if search != "random":
            raise InputError(f"tune.scheduler=pbt explores by itself; use tune.search=random, not {search}")
        if not mutable_keys(space):
            raise InputError(
                f"tune.scheduler=pbt needs a dimension it can mutate mid-training ({', '.join(PBT_MUTABLE)}); "
                "add one to tune.space"
            )


def mutable_keys(space: Mapping[str, Dimension]) -> list[str]:
    """The dimensions PBT may perturb (the rest are sampled once and copied with the donor's checkpoint)."""
    return [k for k in space if k in PBT_MUTABLE or k.startswith(PBT_MUTABLE_PREFIXES)]


def grid_size(space: Mapping[str, Dimension]) -> int:
    """Trials in one pass over the grid and choice dimensions (what tune.search=grid runs)."""
    return math.prod(len(d.values) for d in space.values() if d.kind in ("grid", "choice"))


def to_ray(space: Mapping[str, Dimension], search: str) -> dict[str, Any]:
    """Ray Tune search space, flat and keyed by dotted config key; under ``search=grid`` a choice is a grid."""
    from ray import tune as ray_tune

    def domain(d: Dimension) -> Any:
        if d.kind == "grid" or (d.kind == "choice" and search == "grid"):
            return ray_tune.grid_search(list(d.values))
        return ray_tune.choice(list(d.values)) if d.kind == "choice" else _range_domain(d)

    return {key: domain(d) for key, d in space.items()}


def pbt_mutations(space: Mapping[str, Dimension]) -> dict[str, Any]:
    """PBT's ``hyperparam_mutations``: the mutable dimensions as Ray domains (choices as plain lists)."""
    return {k: _range_domain(space[k]) if space[k].is_range else list(space[k].values) for k in mutable_keys(space)}


def _range_domain(d: Dimension) -> Any:
    from ray import tune as ray_tune

    sampler = {"loguniform": ray_tune.loguniform, "uniform": ray_tune.uniform, "randint": ray_tune.randint}[d.kind]
    return sampler(*d.values)


# ---------------------------------------------------------------- parsing


def _flatten_specs(raw: Any, valid: set[str], prefix: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise InputError(f"tune.space must be a mapping of config keys to distributions; got {raw!r}")
    out: dict[str, Any] = {}
    for name, value in raw.items():
        key = f"{prefix}{name}"
        if key in valid or _is_spec(value):
            out[key] = value  # a later entry wins: a command-line override after the file's
        elif isinstance(value, Mapping) and any(k.startswith(key + ".") for k in valid):
            out.update(_flatten_specs(value, valid, key + "."))
        else:
            out[key] = value  # reported as an unknown key by _dimension
    for key in out:
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else "; see `dlforge show` for the valid keys"
            raise InputError(f"tune.space: {key!r} is not a config key that can be swept{hint}")
    return out


def _is_spec(value: Any) -> bool:
    return isinstance(value, Mapping) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS


def _dimension(key: str, spec: Any) -> Dimension:
    where = f"tune.space.{key}"
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise InputError(f"{where} must be one distribution such as {{loguniform: [1e-4, 1e-2]}}; got {spec!r}")
    ((kind, args),) = spec.items()
    if kind not in DISTRIBUTIONS:
        close = difflib.get_close_matches(str(kind), DISTRIBUTIONS, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InputError(f"{where}: unknown distribution {kind!r}; use one of {', '.join(DISTRIBUTIONS)}{hint}")
    if kind in _RANGES:
        return Dimension(key, kind, _bounds(where, kind, args))
    return Dimension(key, kind, _candidates(where, kind, args))


def _bounds(where: str, kind: str, args: Any) -> tuple[float, float] | tuple[int, int]:
    if not isinstance(args, list | tuple) or len(args) != 2:
        raise InputError(f"{where}: {kind} takes [low, high]; got {args!r}")
    low, high = (_number(where, kind, a) for a in args)
    if kind == "randint" and not all(float(v).is_integer() for v in (low, high)):
        raise InputError(f"{where}: randint bounds must be integers; got {list(args)}")
    if kind == "loguniform" and low <= 0:
        raise InputError(f"{where}: loguniform needs 0 < low; got low={low} (use uniform or choice to include 0)")
    if not low < high:
        raise InputError(f"{where}: {kind} needs low < high; got [{low}, {high}]")
    return (int(low), int(high)) if kind == "randint" else (float(low), float(high))


def _number(where: str, kind: str, value: Any) -> float:
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{where}: {kind} bounds must be finite numbers; got {value!r}")
    return value


def _candidates(where: str, kind: str, args: Any) -> tuple[Any, ...]:
    if not isinstance(args, list | tuple) or not args:
        raise InputError(f"{where}: {kind} takes a non-empty list of values, e.g. {{{kind}: [32, 64]}}; got {args!r}")
    values = tuple(tuple(v) if isinstance(v, list) else v for v in args)
    for v in values:
        if isinstance(v, Mapping):
            raise InputError(f"{where}: {kind} values must be numbers, strings, booleans or lists; got {v!r}")
    if len(set(map(repr, values))) != len(values):
        raise InputError(f"{where}: {kind} lists a value twice; list each candidate once")
    return values
