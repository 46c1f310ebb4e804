"""The one config: frozen dataclasses, parsed once at the edge from YAML + dotted ``key=value`` overrides.

Every leaf has a dotted key (``trainer.max_epochs``); the same keys name overrides on the command line, the search
space of a sweep and the overrides in tests. Validation happens here, before anything runs: unknown keys, wrong types
and out-of-range values raise :class:`ConfigError` naming the key and what it expects.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dl_lightning import families
from dl_lightning.errors import InputError, clip
from dl_lightning.families import CNNConfig, GANConfig, MLPConfig, RNNConfig, TransformerConfig
from tune.settings import TuneConfig

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MAX_YAML_BYTES = 1_000_000  # a config is a few kB; the bound keeps a hostile file from costing memory or time
MAX_YAML_NODES = 100_000  # values after expanding YAML aliases (an alias bomb expands to billions)


class ConfigError(InputError):
    """A config file, override or value that cannot be used; the message names the key and the fix."""


def _check(*, ge: float | None = None, gt: float | None = None, le: float | None = None) -> dict[str, Any]:
    return {"ge": ge, "gt": gt, "le": le}


@dataclass(frozen=True)
class AugmentConfig:
    """Train-time image augmentation, applied batch-wise (never to val/test)."""

    flip: bool = False
    rotation: float = field(default=0.0, metadata=_check(ge=0, le=180))  # max degrees either way
    crop_padding: int = field(default=0, metadata=_check(ge=0))  # pad then random-crop back to size
    noise: float = field(default=0.0, metadata=_check(ge=0))  # std of additive Gaussian noise


@dataclass(frozen=True)
class DataConfig:
    # builtin:NAME, a .csv/.parquet/.npz file, an image folder, or your LightningDataModule: pkg.module:Class or
    # path/to/file.py:Class built from `args` (it makes its own loaders: the split and loader keys do not apply)
    source: str = "builtin:digits"
    args: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = field(default=None, metadata=_check(ge=2))  # a DataModule's classes, if it cannot tell
    target: str | None = None  # label column of a CSV/Parquet file
    text_column: str | None = None  # text column of a CSV/Parquet text dataset (inferred when left out)
    kind: Literal["tabular", "image", "sequence", "text"] | None = None  # inferred when left out
    task: Literal["classification", "regression"] | None = None  # inferred when left out
    val_fraction: float = field(default=0.15, metadata=_check(gt=0, le=0.5))
    test_fraction: float = field(default=0.15, metadata=_check(gt=0, le=0.5))
    batch_size: int = field(default=64, metadata=_check(ge=1))  # per process; global = batch × devices × nodes
    num_workers: int = field(default=0, metadata=_check(ge=0))
    # image folders: resized to this square, or auto: their own size (all alike) else the median, longer side ≤ 64
    image_size: int | Literal["auto"] = field(default="auto", metadata=_check(ge=4))
    max_len: int = field(default=64, metadata=_check(ge=1))  # text: tokens per example after pad/truncate
    max_vocab: int = field(default=20000, metadata=_check(ge=10))
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # classification: balanced = inverse class frequency of the train split in the loss / in the train sampling
    class_weights: Literal["none", "balanced"] = "none"
    sampler: Literal["none", "balanced"] = "none"  # balanced: weighted draws (per rank under DDP, same mix)
    # tables: fill empty cells with the train split's per-column statistic (saved with the model, inside ONNX);
    # none: an empty cell is an error
    impute: Literal["none", "mean", "median", "most_frequent"] = "none"


@dataclass(frozen=True)
class ModelConfig:
    # a registered family (dl_lightning.families), or your own class: pkg.module:Class or path/to/file.py:Class
    family: str = "cnn"
    # a class path's (or a family without a section's) constructor arguments, e.g. model.args.hidden=64; checked
    # against its signature before anything runs; input_shape, num_outputs and vocab_size come from the data
    args: dict[str, Any] = field(default_factory=dict)
    dropout: float = field(default=0.1, metadata=_check(ge=0, le=0.9))
    mlp: MLPConfig = field(default_factory=MLPConfig)
    cnn: CNNConfig = field(default_factory=CNNConfig)
    rnn: RNNConfig = field(default_factory=RNNConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    gan: GANConfig = field(default_factory=GANConfig)
    # start from earlier weights: a .ckpt path, an MLflow run id, models:/NAME@ALIAS or models:/NAME/VERSION;
    # tensors alike in name and shape are loaded, the rest (the head when classes differ) stay fresh
    init_from: str | None = None
    freeze: tuple[str, ...] | None = None  # parameter-name prefixes kept fixed (until trainer.unfreeze_at_epoch)

    def __post_init__(self) -> None:
        check_family("model.family", self.family)
        if self.args and self.section() is not None:
            key = next(iter(self.args))
            raise ConfigError(
                f"model.args.{key}: model.args is for a class path or a family without a section; "
                f"set model.{self.family}.{key} instead"
            )

    def section(self) -> Any:
        """The chosen family's config section (``model.<family>``), or None: a class path, or a family without one."""
        record = families.find(self.family)
        if record is None or record.section is None:
            return None
        return getattr(self, self.family, None) or record.section()

    def arch(self) -> dict[str, Any]:
        """Keyword arguments of the chosen family's architecture: its section (fit-only keys included, which
        ``registry.build_model`` leaves out) plus dropout; else ``model.args``."""
        section = self.section()
        if section is None:
            return dict(self.args)
        return {**dataclasses.asdict(section), "dropout": self.dropout}


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "adam", "adamw", "rmsprop", "adagrad"] = "adamw"
    lr: float = field(default=1e-3, metadata=_check(gt=0))
    weight_decay: float = field(default=0.0, metadata=_check(ge=0))  # L2
    l1: float = field(default=0.0, metadata=_check(ge=0))  # L1; with weight_decay it is elastic net
    momentum: float = field(default=0.9, metadata=_check(ge=0, le=1))  # sgd and rmsprop
    nesterov: bool = False
    scheduler: Literal["none", "step", "exponential", "cosine", "plateau"] = "none"
    step_size: int = field(default=10, metadata=_check(ge=1))  # epochs, step scheduler
    gamma: float = field(default=0.5, metadata=_check(gt=0, le=1))  # step/exponential/plateau factor
    warmup_epochs: int = field(default=0, metadata=_check(ge=0))  # linear warmup before the schedule
    backbone_lr_scale: float = field(default=1.0, metadata=_check(gt=0, le=10))  # lr × this for init_from weights


@dataclass(frozen=True)
class TrainerConfig:
    max_epochs: int = field(default=10, metadata=_check(ge=1))
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int = field(default=1, metadata=_check(ge=1))
    num_nodes: int = field(default=1, metadata=_check(ge=1))
    strategy: Literal["auto", "ddp", "ddp_spawn"] = "auto"
    precision: Literal["32", "bf16-mixed", "16-mixed"] = "32"
    gradient_clip_val: float = field(default=0.0, metadata=_check(ge=0))  # 0 = off
    accumulate_grad_batches: int = field(default=1, metadata=_check(ge=1))
    early_stopping_patience: int = field(default=0, metadata=_check(ge=0))  # epochs; 0 = off
    monitor: str = "auto"  # checkpoint/early-stop metric; auto = val/acc, val/mse or (gan) none
    limit_train_batches: float = field(default=1.0, metadata=_check(gt=0))  # fraction (≤1) or count (>1)
    limit_val_batches: float = field(default=1.0, metadata=_check(gt=0))
    threads: int = field(default=0, metadata=_check(ge=0))  # torch intra-op threads; 0 = torch's default
    unfreeze_at_epoch: int = field(default=0, metadata=_check(ge=0))  # model.freeze ends here; 0 = never


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None  # default: sqlite:///<project>/mlruns/mlflow.db
    experiment: str = "dlforge"
    required: bool = True  # an unreachable server stops the job before training; false: warn, log locally
    artifact_location: str | None = None  # of a new experiment; default: beside a sqlite file, else the server's
    system_metrics: bool = False  # sample CPU/memory/GPU into the run (needs psutil)
    register: bool = False  # register the trained model as <experiment>-<family> with alias 'candidate'


@dataclass(frozen=True)
class StudentConfig:
    """The distilled student's architecture.

    ``family: same`` shrinks the teacher's own architecture (read from its checkpoint); a named family starts from
    this config's ``model.<family>`` section. Widths (hidden units, channels, embedding and model sizes) are
    multiplied by ``width``; ``depth`` > 0 keeps that many layers per stack.
    """

    family: str = "same"  # same, a registered family, or a class path (pkg.module:Class, path/to/file.py:Class)
    # the student's constructor arguments over the shrunk starting ones (a class path's widths are not known)
    args: dict[str, Any] = field(default_factory=dict)
    width: float = field(default=0.5, metadata=_check(gt=0, le=4))
    # 0 = the family's student depth (a transformer: 1 layer), else the starting architecture's depth
    depth: int = field(default=0, metadata=_check(ge=0))
    # at most this fraction of the teacher's parameters: the width narrows below `width` until the student fits
    # (an input or output layer shrinks with the width, not its square); 0 = no limit
    max_params: float = field(default=0.25, metadata=_check(ge=0, le=1))

    def __post_init__(self) -> None:
        if self.family != "same":
            check_family("compress.student.family", self.family)


@dataclass(frozen=True)
class CompressConfig:
    """Distill → export → quantize → measure → gate (``dlforge compress``)."""

    student: StudentConfig = field(default_factory=StudentConfig)
    # student budget: auto = the teacher's own epochs (read from its checkpoint); 0 = no student, teacher only
    epochs: int | Literal["auto"] = field(default="auto", metadata=_check(ge=0))
    # weight of the hard-label loss (docs/benchmarks.md, distillation): an inheriting student already holds its
    # teacher's function; more weight on the labels (0.8 over 0.5) lets it go past the teacher, not just copy it
    alpha: float = field(default=0.8, metadata=_check(ge=0, le=1))
    temperature: float = field(default=2.0, metadata=_check(gt=0))  # 2 beat 4 for small students in the benchmark
    # the student's lr schedule: `same` as the training config's optim.scheduler, or cosine over its epochs (which
    # cost students a teacher's budget of 15 epochs 5–7 points: they end under-trained)
    schedule: Literal["cosine", "same"] = "same"
    # function matching: students also learn the teacher on mixed inputs (Beta(mixup, mixup) weights; 0 = off).
    # Not for text (token ids do not mix); images keep data.augment too, seen alike by teacher and student
    mixup: float = field(default=1.0, metadata=_check(ge=0))  # 1: λ uniform, inputs anywhere between two examples
    # the distilled student starts from its teacher's weights (DistilBERT, Minitron): a student of the teacher's
    # family is its architecture shrunk, so each of its tensors takes a slice of the teacher's: a layer with BatchNorm
    # keeps its most important units (|gamma| × outgoing weights), others their first units, per gate, head and
    # direction (dl_lightning/inherit.py). The from-scratch twin stays random-init
    inherit: bool = True
    scratch: bool = True  # also train the same student from scratch with the same budget, to show the gain
    # the student learns from the trained model (single), or — dlforge run after a sweep — from the ensemble of the
    # best ensemble_k trials' checkpoints, their temperature-softened outputs averaged (Hinton et al. 2015)
    teacher: Literal["single", "ensemble"] = "single"
    ensemble_k: int = field(default=3, metadata=_check(ge=2))
    # auto: the autotuner ships the fastest of fp32 / dynamic / static QDQ variants whose heavy ops are INT8 and
    # whose drop passes max_int8_drop (pipelines/compression/autotune.py); dynamic / static: that recipe only
    quantization: Literal["auto", "dynamic", "static", "none"] = "auto"
    autotune_budget_s: float = field(default=60.0, metadata=_check(gt=0))  # per model; a started variant finishes
    per_channel: bool = False  # per-channel int8 weights
    calibration_batches: int = field(default=8, metadata=_check(ge=1))  # train-split batches for static
    parity_atol: float = field(default=1e-4, metadata=_check(gt=0))  # max |torch − ORT| of fp32 exports
    max_int8_drop: float = field(default=1.0, metadata=_check(ge=0))  # points (acc × 100; % of mse)
    max_student_drop: float = field(default=2.0, metadata=_check(ge=0))
    latency_repeats: int = field(default=30, metadata=_check(ge=1))
    # the model registered as <experiment>-<family>-onnx (alias 'candidate') when tracking is on and every gate
    # passes; an INT8 choice ships the fp32 file when compress.quantization=none
    # (ensemble-int8 / ensemble: the best sweep trials as one graph, under compress.teacher=ensemble)
    register: Literal["teacher-int8", "teacher", "student-int8", "student", "ensemble-int8", "ensemble", "none"] = (
        "teacher-int8"
    )


@dataclass(frozen=True)
class ModelCardConfig:
    """What the model card of every registered version says beyond the facts dlforge measures."""

    intended_use: str = ""  # what the model is for and where it must not be used; printed as written


@dataclass(frozen=True)
class Config:
    seed: int = 42
    output_dir: str = "outputs/default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    model_card: ModelCardConfig = field(default_factory=ModelCardConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def flat(self) -> dict[str, Any]:
        """Dotted key → value for every leaf (how params are logged and spaces are keyed)."""
        return flatten(self.to_dict())

    def with_overrides(self, overrides: dict[str, Any]) -> Config:
        """A new config with dotted overrides applied and validated (the one way a config is replaced)."""
        return build_config(self.to_dict(), overrides)


def check_family(key: str, family: str) -> None:
    """A registered family or a class path (imported later, by the stage that builds it); else ConfigError."""
    if not families.is_class_path(family) and families.find(family) is None:
        raise ConfigError(families.unknown_message(family).replace("model.family", key, 1))


# ---------------------------------------------------------------- parsing


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), preset: dict[str, Any] | None = None
) -> Config:
    """Read the optional YAML file, apply a dotted ``preset`` (e.g. ``--quick``), then the ``key=value`` overrides."""
    raw = _read_yaml(Path(path)) if path else {}
    return build_config(raw, {**(preset or {}), **dict(parse_override(item) for item in overrides)})


def parse_override(item: str) -> tuple[str, Any]:
    """``"optim.lr=3e-4"`` → ``("optim.lr", 0.0003)``; values are read as YAML scalars/lists."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not key=value; write e.g. trainer.max_epochs=5")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except (yaml.YAMLError, RecursionError):
        value = text
    check_yaml_size(value, f"override {key.strip()}")
    return key.strip(), value


def build_config(raw: dict[str, Any], overrides: dict[str, Any] | None = None) -> Config:
    """Nested mapping + dotted overrides → validated :class:`Config`."""
    if not isinstance(raw, dict):
        raise ConfigError("the config file must hold a mapping of keys at its top level, e.g. 'seed: 1'")
    merged = _merge(raw, unflatten(overrides or {}))
    return _build(Config, merged, prefix="")


def all_keys() -> list[str]:
    """Every valid dotted leaf key (a mapping field such as ``tune.space`` is one leaf)."""
    return _leaf_keys(Config)


def _leaf_keys(cls: type, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        is_section = dataclasses.is_dataclass(hint)
        keys.extend(_leaf_keys(hint, f"{prefix}{f.name}.") if is_section else [prefix + f.name])
    return keys


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"key {dotted!r} sets inside {part!r}, which is a value, not a section")
        node[leaf] = value
    return tree


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def _read_yaml(path: Path) -> dict[str, Any]:
    """The file's mapping; refuses files over MAX_YAML_BYTES, tags and alias bombs before anything walks them."""
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found; pass an existing YAML file or only key=value")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError(f"config file {str(path)!r} is over {MAX_YAML_BYTES // 1000} kB; a config is a few keys")
    try:
        raw = yaml.safe_load(path.read_text(errors="replace"))
    except yaml.constructor.ConstructorError as exc:
        line = getattr(exc.problem_mark, "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise ConfigError(
            f"config file {str(path)!r} uses a YAML tag{where} ({_first_problem(exc)}); dlforge loads plain values "
            "only — remove the tag"
        ) from None
    except (yaml.YAMLError, RecursionError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}; fix its syntax") from None
    check_yaml_size(raw, f"config file {str(path)!r}")
    return raw or {}


def check_yaml_size(value: Any, what: str, limit: int = MAX_YAML_NODES) -> None:
    """Refuse a loaded YAML value whose expanded tree has more than ``limit`` nodes.

    YAML aliases share one object, so a 464-byte file of nested aliases loads instantly yet expands to billions
    of nodes when merged, flattened or dumped. The walk stops at ``limit``, so it costs O(limit) at most.
    """
    stack, seen = [value], 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > limit:
            raise ConfigError(f"{what} expands to over {limit} values (YAML aliases?); write the values out")
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def _first_problem(exc: yaml.MarkedYAMLError) -> str:
    return clip(" ".join(str(exc.problem or type(exc).__name__).split()), 120)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            _unknown_key(prefix + str(key))
    values = {}
    for name, spec in names.items():
        if name not in raw:
            continue
        key, hint, value = prefix + name, hints[name], raw[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{key} is a section; set its keys, e.g. {key}.{_first_field(hint)}=...")
            values[name] = _build(hint, value, key + ".")
        else:
            values[name] = _coerce(key, hint, value)
            _check_range(key, values[name], spec.metadata)
    return cls(**values)


def _unknown_key(key: str) -> None:
    close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else "; see `dlforge show` for the valid keys"
    raise ConfigError(f"unknown config key {key!r}{hint}")


def _first_field(cls: type) -> str:
    return dataclasses.fields(cls)[0].name


def _coerce(key: str, hint: Any, value: Any) -> Any:
    """Check ``value`` against the annotation; ints widen to floats, lists become tuples; nothing else is guessed."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value  # checked by the code that owns its meaning (e.g. tune.space by tune.space)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{key} must be a mapping of names to values, e.g. {key}={{name: value}}; got {value!r}")
        return {k: _coerce(f"{key}.{k}", args[1], v) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _coerce_union(key, [a for a in args if a is not type(None)], value)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(map(str, args))
            raise ConfigError(f"{key} must be one of {choices}; got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple) or not value:
            raise ConfigError(f"{key} must be a non-empty list, e.g. {key}=[64,32]; got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", args[0], v) for i, v in enumerate(value))
    return _coerce_scalar(key, hint, value)


def _coerce_union(key: str, members: list[Any], value: Any) -> Any:
    """The first member that takes ``value`` (``int | Literal["auto"]``: a number or the word); else its error."""
    for member in members[:-1]:
        try:
            return _coerce(key, member, value)
        except ConfigError:
            continue
    try:
        return _coerce(key, members[-1], value)
    except ConfigError:
        if len(members) == 1:
            raise
    shown = " or ".join(_describe(m) for m in members)
    raise ConfigError(f"{key} must be {shown}; got {value!r}") from None


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " or ".join(map(str, typing.get_args(hint)))
    return {float: "a number", int: "an integer", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _coerce_scalar(key: str, hint: type, value: Any) -> Any:
    if hint is float and isinstance(value, str):
        value = _yaml11_float(value)  # YAML 1.1 reads "3e-4" (no dot) as a string
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number; got {value!r}")
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    expected = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}[hint]
    raise ConfigError(f"{key} must be {expected}; got {value!r}")


def _yaml11_float(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _check_range(key: str, value: Any, meta: Any) -> None:
    items = value if isinstance(value, tuple) else (value,)
    for item in items:
        if not isinstance(item, int | float) or isinstance(item, bool):
            continue
        if meta.get("ge") is not None and item < meta["ge"]:
            raise ConfigError(f"{key} must be ≥ {meta['ge']}; got {item}")
        if meta.get("gt") is not None and item <= meta["gt"]:
            raise ConfigError(f"{key} must be > {meta['gt']}; got {item}")
        if meta.get("le") is not None and item > meta["le"]:
            raise ConfigError(f"{key} must be ≤ {meta['le']}; got {item}")


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_plain(v) for v in value]
    return value
