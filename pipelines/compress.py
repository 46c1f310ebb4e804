"""The compress stage: teacher → distilled student → ONNX fp32 → INT8 → measured → gated → report.

Reads like its table of contents, :func:`compress`: load the teacher, load the data, ship the teacher (export, parity,
quantize, measure), distill a smaller student and train the same student from scratch, ship the student, evaluate
the gates, choose the champion, write the report, and — tracking on — log it all to the compress run and register every
ONNX file whose own gates passed. Every model is scored by the same function on the same test split, so the rows of the
report differ only in the model.

Gates guard what they gate: parity guards an fp32 file and the INT8 file made from it, an INT8 drop its INT8 file, the
student drop both student files. The champion is the first artifact of ``compress.register``'s preference order whose
own gates passed (:func:`preference`): a failing student never blocks a passing teacher INT8.

MLflow metrics are ``compress/<row key>/<what>``: the row keys are stable (``teacher_fp32_pytorch``,
``teacher_fp32_onnx``, ``teacher_int8_onnx``, ``student_…``, ``student_scratch_pytorch``) whatever the INT8 recipe,
so runs compare column by column; ``<what>`` is ``acc`` or ``mse`` (the test metric), ``params``, ``size_bytes``,
``parity_max_abs_diff``, ``latency_b1_p50_ms``…; gates are ``compress/gate/<name>`` (1 passed, 0 failed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from torch import nn

from dl_lightning.data import DlforgeDataModule, Splits
from dl_lightning.data.spec import DataSpec
from dl_lightning.distill import DistillModule
from dl_lightning.errors import InputError
from dl_lightning.registry import FAMILY_KEY, build_model, load_model
from pipelines import export, tracking
from pipelines.config import Config
from pipelines.outputs import write_json_atomic, write_text_atomic
from pipelines.train import fit_module, load_data, optim_settings

RUN_ID = re.compile(r"[0-9a-f]{32}")
WIDTH_KEYS = ("hidden", "channels", "hidden_size", "embed_dim", "d_model", "dim_feedforward", "width")
PARITY_BATCHES = 4


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class Teacher:
    module: L.LightningModule
    checkpoint: str
    family: str
    spec: DataSpec
    arch: dict[str, Any]  # the family's keyword arguments, without data and optim
    run_id: str | None
    epochs: int = 0  # the teacher's own trainer.max_epochs: the student's budget under compress.epochs=auto


@dataclass(frozen=True)
class Row:
    """One line of the report: a model as it would ship (PyTorch eager, ONNX fp32 or ONNX INT8)."""

    model: str
    runtime: str  # pytorch | onnxruntime
    params: int
    size_bytes: int
    metric: float | None
    latency_ms: dict[str, float]  # b1_p50, b1_p95, b64_p50, b64_p95 — one thread
    parity_max_abs_diff: float | None = None
    file: str | None = None
    key: str = ""  # stable id in metric names: teacher_fp32_pytorch, teacher_int8_onnx, student_scratch_pytorch…


@dataclass(frozen=True)
class Gate:
    """One check, and the artifacts (``CompressResult.files`` keys) it guards: a failure ships none of them."""

    name: str
    passed: bool
    detail: str
    guards: tuple[str, ...] = ()


@dataclass(frozen=True)
class CompressResult:
    """What the stage hands forward: files by path, rows, gates and the champion.

    ``champion`` is the artifact (a ``files`` key) shipped: the first of ``compress.register``'s preference order
    whose own gates all passed, or ``None`` when none did. ``passed`` means every gate passed.
    """

    output_dir: str
    metric: str | None  # test/acc, test/mse or None (gan)
    rows: list[Row]
    gates: list[Gate]
    files: dict[str, str]  # teacher, teacher-int8, student, student-int8 → .onnx path
    report_md: str
    report_json: str
    teacher_run_id: str | None
    run_id: str | None = None
    student: dict[str, Any] = field(default_factory=dict)
    registered: dict[str, Any] | None = None  # name, versions; version, alias, uri, model — of the champion
    champion: str | None = None

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def shipped(self) -> list[str]:
        """The artifacts whose own gates all passed, in ``files`` order."""
        return shippable(self.files, self.gates)

    @property
    def failed(self) -> list[Gate]:
        return [g for g in self.gates if not g.passed]


@dataclass(frozen=True)
class Probe:
    """The arrays every model is measured on: test split, parity batches, calibration batches, latency inputs."""

    test_x: np.ndarray
    test_y: np.ndarray | None  # None for the GAN (noise in, images out: no test metric)
    parity: list[np.ndarray]
    calibration: list[np.ndarray]
    task: str | None

    def batch(self, n: int) -> np.ndarray:
        return self.test_x[np.arange(n) % len(self.test_x)]


# ---------------------------------------------------------------- the stage


def compress(cfg: Config, teacher_ref: str, *, parent_run_id: str | None = None) -> CompressResult:
    """Distill, export, quantize, measure and gate the teacher ``teacher_ref`` on ``cfg``'s data.

    Args:
        teacher_ref: a checkpoint path, an MLflow run id or ``models:/<name>@<alias>`` (resolved in the store
            ``cfg.tracking.uri`` names, downloaded to ``<output_dir>/teacher``).
        parent_run_id: the pipeline's MLflow run, when compress runs as one of its stages: the compress run is its
            child.

    Raises:
        InputError: the teacher cannot be found or read, or does not fit the data; ``compress.register`` asks for
            a student that will not be trained.
    """
    teacher = load_teacher(teacher_ref, cfg)
    registered_key(cfg, teacher)  # a registration that cannot happen fails now, not after the training
    splits = load_data(cfg)
    check_compatible(teacher.spec, splits.spec)
    probe = make_probe(cfg, teacher, splits)
    with _tracked(cfg, teacher, parent_run_id) as run_id:
        result = _compress(cfg, teacher, splits, probe, run_id)
        result = log_result(cfg, run_id, teacher, probe, result)
    return result


def _compress(cfg: Config, teacher: Teacher, splits: Splits, probe: Probe, run_id: str | None) -> CompressResult:
    out = Path(cfg.output_dir).absolute()
    net, example = teacher.module.export_net()
    role = "generator" if teacher.family == "gan" else "teacher"
    rows, files, gates = ship(cfg, net, example, role, teacher, teacher.family, probe, out / "onnx")
    student: dict[str, Any] = {}
    checkpoints: dict[str, str] = {}
    if teacher.family != "gan" and student_epochs(cfg, teacher) > 0:
        s_rows, s_files, s_gates, student, checkpoints = _student(cfg, teacher, splits, probe, rows[0], out)
        rows, files, gates = [*rows, *s_rows], files | s_files, [*gates, *s_gates]
    metric = None if probe.task is None else ("test/acc" if probe.task == "classification" else "test/mse")
    champion = choose_champion(preference(cfg, teacher), files, gates)
    report = {
        "metric": metric,
        "teacher": {"checkpoint": teacher.checkpoint, "family": teacher.family, "run_id": teacher.run_id},
        "student": student,
        "champion": champion,
        "files": files,
        "shipped": shippable(files, gates),
        "checkpoints": checkpoints,
    }
    md, js = write_report(out, report, rows, gates)
    return CompressResult(
        str(out), metric, rows, gates, files, str(md), str(js), teacher.run_id, run_id, student, champion=champion
    )


def _student(
    cfg: Config, teacher: Teacher, splits: Splits, probe: Probe, teacher_row: Row, out: Path
) -> tuple[list[Row], dict[str, str], list[Gate], dict[str, Any], dict[str, str]]:
    """Distil (and train from scratch) the student, ship it, gate it against the teacher.

    Returns its rows, files, gates, the facts the report gives about it, and its checkpoints.
    """
    family, arch = sized_student_arch(cfg, teacher)
    distilled, scratch = train_students(cfg, teacher, splits, family, arch)
    s_net, s_example = distilled.export_net()
    rows, files, gates = ship(cfg, s_net, s_example, "student", teacher, family, probe, out / "onnx")
    student_row = rows[0]  # PyTorch fp32, as the teacher's
    ratio = student_row.params / max(teacher_row.params, 1)
    facts: dict[str, Any] = {
        "family": family,
        "arch": arch,
        "params_ratio": ratio,
        "epochs": student_epochs(cfg, teacher),
    }
    if scratch is not None:
        rows.append(
            measure_torch(cfg, "student from scratch (PyTorch)", "student_scratch_pytorch", scratch_net(scratch), probe)
        )
        if probe.task is not None:
            facts["gain_over_scratch"] = -drop_points(rows[-1].metric, student_row.metric, probe.task)
    limit = cfg.compress.max_student_drop
    gate = metric_gate("student drop", teacher_row.metric, student_row.metric, probe.task, limit)
    if not gate.passed:  # the architecture cannot hold the teacher's accuracy: say so, ship neither student file
        gate = dataclasses.replace(
            gate,
            detail=f"{gate.detail}; a student at {ratio:.0%} of the teacher's parameters "
            "cannot hold its accuracy — not shipped",
        )
    gates.append(dataclasses.replace(gate, guards=("student", "student-int8")))
    names = ("student", "scratch") if scratch is not None else ("student",)
    found = [(n, p) for n in names for p in sorted((out / n / "checkpoints").glob("*.ckpt"))]
    return rows, files, gates, facts, {f"{n}_{p.stem}_checkpoint": str(p) for n, p in found}


def scratch_net(module: L.LightningModule) -> nn.Module:
    return module.export_net()[0]


def student_epochs(cfg: Config, teacher: Teacher) -> int:
    """The student's budget: ``compress.epochs``, or under ``auto`` the teacher's own epochs (10 when unknown)."""
    epochs = cfg.compress.epochs
    if epochs == "auto":
        return teacher.epochs or 10
    return int(epochs)


def shippable(files: dict[str, str], gates: list[Gate]) -> list[str]:
    """The artifacts none of whose own gates failed: a gate guards those its ``guards`` names, or all without any."""
    failed = [g for g in gates if not g.passed]
    if any(not g.guards for g in failed):
        return []
    held = {key for g in failed for key in g.guards}
    return [key for key in files if key not in held]


def preference(cfg: Config, teacher: Teacher) -> list[str]:
    """The champion's preference order: ``compress.register`` first, then its other precision, then the other model.

    ``teacher-int8`` (the default, also under ``register=none``) → teacher, student-int8, student.
    """
    first = cfg.compress.register if cfg.compress.register != "none" else "teacher-int8"
    model, _, int8 = first.partition("-")
    other = "student" if model == "teacher" else "teacher"
    order = [first, model if int8 else f"{model}-int8", f"{other}-int8" if int8 else other]
    order.append(other if int8 else f"{other}-int8")
    if teacher.family == "gan":
        order = [key.replace("teacher", "generator") for key in order]
    return order


def choose_champion(order: list[str], files: dict[str, str], gates: list[Gate]) -> str | None:
    """The first artifact of ``order`` that was made and whose own gates passed; ``None`` when none qualifies."""
    ok = set(shippable(files, gates))
    return next((key for key in order if key in ok), None)


def ship(
    cfg: Config,
    net: nn.Module,
    example: torch.Tensor,
    role: str,
    teacher: Teacher,
    family: str,
    probe: Probe,
    folder: Path,
) -> tuple[list[Row], dict[str, str], list[Gate]]:
    """PyTorch row, ONNX fp32 row (with parity) and INT8 row of one net, their files and their gates."""
    c = cfg.compress
    meta = export.model_metadata(teacher.spec.to_dict(), family=family, role=role, source_run_id=teacher.run_id)
    output = {"classification": "logits", "regression": "prediction", None: "image"}[probe.task]
    fp32 = export.export_onnx(
        net,
        example,
        folder / f"{role}.onnx",
        metadata=meta,
        output_name=output,
        sequence_axis=family in ("rnn", "transformer"),
    )
    parity = export.check_parity(
        net, export.open_session(fp32), probe.parity, atol=c.parity_atol, relative=probe.task == "regression"
    )
    rows = [measure_torch(cfg, f"{role} fp32 (PyTorch)", f"{role}_fp32_pytorch", net, probe)]
    rows.append(
        measure_onnx(cfg, f"{role} fp32 (ONNX)", f"{role}_fp32_onnx", fp32, rows[0].params, probe, parity.max_abs_diff)
    )
    detail = f"max |Δ| {parity.max_abs_diff:.2e} ≤ {parity.tolerance:.1e}"
    # the INT8 graph is the fp32 graph quantized: an export that does not match PyTorch spoils both files
    gates = [Gate(f"{role} parity", parity.passed, detail, (role, f"{role}-int8"))]
    files = {role: str(fp32)}
    recipe = export.choose_recipe(export.load_onnx(fp32, with_weights=False), c.quantization)
    if recipe != "none":
        int8 = export.quantize_onnx(
            fp32, folder / f"{role}-int8.onnx", recipe=recipe, per_channel=c.per_channel, calibration=probe.calibration
        )
        name = f"{role} INT8 ({recipe})"
        rows.append(measure_onnx(cfg, name, f"{role}_int8_onnx", int8, rows[0].params, probe, None))
        files[f"{role}-int8"] = str(int8)
        if probe.task is not None:
            gate = metric_gate(f"{role} INT8 drop", rows[1].metric, rows[2].metric, probe.task, c.max_int8_drop)
            gates.append(dataclasses.replace(gate, guards=(f"{role}-int8",)))
    return rows, files, gates


# ---------------------------------------------------------------- teacher


def load_teacher(ref: str, cfg: Config | None = None) -> Teacher:
    """The teacher module from a checkpoint path, an MLflow run id or ``models:/<name>@<alias>``."""
    path, run_id = resolve_teacher(ref, cfg)
    try:
        module = load_model(path)
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except InputError:
        raise
    except Exception as exc:  # a truncated zip, a pickle refused by weights_only, ...
        raise InputError(
            f"cannot read teacher checkpoint {path!r} ({type(exc).__name__}); pass a dlforge .ckpt"
        ) from None
    hparams = dict(checkpoint["hyper_parameters"])
    spec = DataSpec.from_dict(hparams.pop("data"))
    epochs = int((hparams.pop("optim", None) or {}).get("max_epochs") or 0)
    run_id = run_id or _checkpoint_run_id(path)
    return Teacher(module.eval(), path, checkpoint[FAMILY_KEY], spec, hparams, run_id, epochs)


def _checkpoint_run_id(path: str) -> str | None:
    """The MLflow run recorded in the checkpoint by tracking's callback (the ONNX metadata's source run)."""
    return tracking.run_id_from_checkpoint(path)


def resolve_teacher(ref: str, cfg: Config | None = None) -> tuple[str, str | None]:
    """(checkpoint path, run id or None).

    A run id or ``models:/<name>@<alias>`` is resolved in ``cfg``'s tracking store (without ``cfg``: the default
    one), even with ``tracking.enabled=false`` — it only reads — and downloaded to ``<output_dir>/teacher``.
    """
    path = Path(ref).expanduser()
    if path.is_file():
        return str(path.absolute()), None
    if ref.startswith("models:/") or RUN_ID.fullmatch(ref):
        dest = Path(cfg.output_dir).absolute() / "teacher" if cfg is not None else None
        try:
            return tracking.resolve_checkpoint(ref, cfg, dest=dest)
        except InputError as exc:
            raise InputError(f"teacher {_one_line(exc)}") from None
    raise InputError(f"teacher {ref!r} is not a checkpoint file, an MLflow run id or models:/<name>@<alias>")


def _one_line(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_compatible(teacher: DataSpec, data: DataSpec) -> None:
    """The data must look to the teacher like the data it was trained on (shape, outputs, kind, vocabulary)."""
    for name in ("kind", "task", "input_shape", "num_outputs", "vocab"):
        if getattr(teacher, name) != getattr(data, name):
            raise InputError(
                f"the teacher was trained on data with {name}={_short(getattr(teacher, name))} but data.source gives "
                f"{_short(getattr(data, name))}; pass the teacher's data config"
            )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


# ---------------------------------------------------------------- student


def student_arch(cfg: Config, teacher: Teacher, width: float | None = None) -> tuple[str, dict[str, Any]]:
    """The student's family and keyword arguments: the starting architecture shrunk by ``compress.student``."""
    s = cfg.compress.student
    if s.family == "same":
        family, arch = teacher.family, dict(teacher.arch)
    else:
        family, arch = s.family, dataclasses.replace(cfg.model, family=s.family).arch()
    return family, shrink(arch, s.width if width is None else width, s.depth)


def sized_student_arch(cfg: Config, teacher: Teacher) -> tuple[str, dict[str, Any]]:
    """:func:`student_arch`, narrowed (width × 0.9 per step) until it has at most ``compress.student.max_params``
    of the teacher's parameters — widths 0.5 of an MLP quarter its hidden layers but only halve its input layer."""
    s = cfg.compress.student
    family, arch = student_arch(cfg, teacher)
    if not s.max_params:
        return family, arch
    budget = s.max_params * _count(teacher.module.export_net()[0])
    width = s.width
    while _count(build_model(family, teacher.spec, arch, {}).export_net()[0]) > budget and width > 0.02:
        width *= 0.9
        family, arch = student_arch(cfg, teacher, width)
    return family, arch


def _count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def shrink(arch: dict[str, Any], width: float, depth: int) -> dict[str, Any]:
    """Widths × ``width`` (at least 1); with ``depth`` > 0, stacks cut to ``depth`` layers.

    A transformer's ``d_model`` stays a multiple of ``nhead`` (attention splits it evenly between heads).
    """
    out = dict(arch)
    for key in WIDTH_KEYS:
        if isinstance(out.get(key), list | tuple):
            sizes = [max(1, round(v * width)) for v in out[key]]
            out[key] = sizes[:depth] if depth else sizes
        elif isinstance(out.get(key), int) and not isinstance(out[key], bool):
            out[key] = max(1, round(out[key] * width))
    if depth and isinstance(out.get("num_layers"), int):
        out["num_layers"] = depth
    if "d_model" in out and "nhead" in out:
        heads = out["nhead"]
        out["d_model"] = max(heads, round(out["d_model"] / heads) * heads)
    return out


def train_students(
    cfg: Config, teacher: Teacher, splits: Splits, family: str, arch: dict[str, Any]
) -> tuple[L.LightningModule, L.LightningModule | None]:
    """The distilled student and (when ``compress.scratch``) the same student trained on labels alone.

    Both start from the same seed, hence the same initial weights, and get the same epochs, data, optimizer and lr
    schedule: the difference between them is the teacher's.
    """
    c = cfg.compress
    fit_cfg = student_fit_config(cfg, teacher, family)
    distilled = _build_student(fit_cfg, teacher, family, arch)
    module = DistillModule(distilled, teacher.module, teacher.spec.task, c.alpha, c.temperature, c.mixup)
    _fit(fit_cfg, module, splits, "student")
    if not c.scratch:
        return distilled, None
    scratch = _build_student(fit_cfg, teacher, family, arch)
    _fit(fit_cfg, scratch, splits, "scratch")
    return distilled, scratch


def student_fit_config(cfg: Config, teacher: Teacher, family: str) -> Config:
    """The training config of a student fit: the compress budget and schedule, one process.

    A patient schedule (Beyer et al. 2022): as many epochs as the teacher had under ``compress.epochs=auto``, the lr
    decaying on a cosine to its end under ``compress.schedule=cosine``.
    """
    overrides: dict[str, Any] = {
        "model.family": family,
        "trainer.max_epochs": student_epochs(cfg, teacher),
        "trainer.devices": 1,  # a small student on one process: DDP would relaunch the whole command
        "trainer.num_nodes": 1,
        "trainer.strategy": "auto",
    }
    if cfg.compress.schedule == "cosine":
        overrides["optim.scheduler"] = "cosine"
    return cfg.with_overrides(overrides)


def _build_student(fit_cfg: Config, teacher: Teacher, family: str, arch: dict[str, Any]) -> L.LightningModule:
    L.seed_everything(fit_cfg.seed, workers=True, verbose=False)
    return build_model(family, teacher.spec, arch, optim_settings(fit_cfg))


def _fit(cfg: Config, module: L.LightningModule, splits: Splits, name: str) -> None:
    fit_cfg = cfg.with_overrides({"output_dir": str(Path(cfg.output_dir).absolute() / name)})
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = DlforgeDataModule(
        splits,
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        augment=dataclasses.asdict(cfg.data.augment),
    )
    fit_module(fit_cfg, module, datamodule, splits.spec.task)  # tests the best checkpoint: weights end there
    module.eval()


# ---------------------------------------------------------------- measuring


def make_probe(cfg: Config, teacher: Teacher, splits: Splits) -> Probe:
    b, rng = cfg.data.batch_size, np.random.default_rng(cfg.seed)
    if teacher.family == "gan":  # the generator's inputs are noise: a fixed, seeded set stands in for data
        latent = teacher.module.export_net()[1].shape[1]
        noise = rng.standard_normal((256, latent)).astype(np.float32)
        return Probe(
            noise, None, _batches(noise, b, PARITY_BATCHES), _batches(noise, b, cfg.compress.calibration_batches), None
        )
    train_x = splits.train[0][rng.permutation(len(splits.train[0]))]
    val_x = splits.val[0]
    parity = [*_batches(val_x, b, PARITY_BATCHES), val_x[:1]]  # batch 1 too: a dynamic axis must really be dynamic
    return Probe(
        splits.test[0], splits.test[1], parity, _batches(train_x, b, cfg.compress.calibration_batches), splits.spec.task
    )


def _batches(x: np.ndarray, size: int, count: int) -> list[np.ndarray]:
    return [x[i : i + size] for i in range(0, min(len(x), size * count), size)]


def score(outputs: np.ndarray, y: np.ndarray, task: str) -> float:
    """Accuracy of logits ``(N, K)`` or the MSE of values ``(N, 1)`` against ``y`` ``(N,)``."""
    if task == "classification":
        return float((outputs.argmax(axis=1) == y).mean())
    return float(np.mean((outputs.reshape(-1) - y.reshape(-1)) ** 2))


def measure_torch(cfg: Config, name: str, key: str, net: nn.Module, probe: Probe) -> Row:
    outputs = export.run_torch(net, probe.test_x)
    metric = None if probe.test_y is None else score(outputs, probe.test_y, probe.task)
    latency = {}
    for b in (1, 64):
        p50, p95 = export.torch_latency(net, probe.batch(b), cfg.compress.latency_repeats)
        latency |= {f"b{b}_p50": p50, f"b{b}_p95": p95}
    size = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    return Row(name, "pytorch", sum(p.numel() for p in net.parameters()), size, metric, latency, key=key)


def measure_onnx(cfg: Config, name: str, key: str, path: Path, params: int, probe: Probe, parity: float | None) -> Row:
    session = export.open_session(path, threads=1)
    outputs = export.run_session(session, probe.test_x)
    metric = None if probe.test_y is None else score(outputs, probe.test_y, probe.task)
    latency = {}
    for b in (1, 64):
        p50, p95 = export.onnx_latency(session, probe.batch(b), cfg.compress.latency_repeats)
        latency |= {f"b{b}_p50": p50, f"b{b}_p95": p95}
    return Row(name, "onnxruntime", params, path.stat().st_size, metric, latency, parity, str(path), key)


# ---------------------------------------------------------------- gates


def drop_points(reference: float, value: float, task: str) -> float:
    """How much worse ``value`` is than ``reference``: accuracy points (× 100), or % more error for regression."""
    if task == "classification":
        return (reference - value) * 100.0
    return (value - reference) / max(abs(reference), 1e-12) * 100.0


def metric_gate(name: str, reference: float | None, value: float | None, task: str | None, limit: float) -> Gate:
    if reference is None or value is None or task is None:
        return Gate(name, True, "no test metric (skipped)")
    drop = drop_points(reference, value, task)
    unit = "points" if task == "classification" else "% mse"
    if not math.isfinite(drop):
        return Gate(name, False, "metric is not finite")
    return Gate(name, drop <= limit, f"drop {drop:+.2f} {unit} (limit {limit:g})")


# ---------------------------------------------------------------- report


def write_report(out: Path, report: dict[str, Any], rows: list[Row], gates: list[Gate]) -> tuple[Path, Path]:
    """``compress_report.json`` and ``compress_report.md`` in ``out``, each written atomically."""
    full = {
        **report,
        "rows": [dataclasses.asdict(r) for r in rows],
        "gates": [dataclasses.asdict(g) for g in gates],
        "passed": all(g.passed for g in gates),
    }
    js = write_json_atomic(out / "compress_report.json", full)
    md = write_text_atomic(out / "compress_report.md", report_markdown(full))
    return md, js


COLUMNS = ("model", "params", "size", "metric", "b1 p50/p95 ms", "b64 p50/p95 ms", "parity |Δ|")


def table_cells(row: dict[str, Any]) -> list[str]:
    lat = row["latency_ms"]
    metric = "—" if row["metric"] is None else f"{row['metric']:.4f}"
    parity = "—" if row["parity_max_abs_diff"] is None else f"{row['parity_max_abs_diff']:.1e}"
    return [
        row["model"],
        f"{row['params']:,}",
        _size(row["size_bytes"]),
        metric,
        f"{lat['b1_p50']:.3f} / {lat['b1_p95']:.3f}",
        f"{lat['b64_p50']:.3f} / {lat['b64_p95']:.3f}",
        parity,
    ]


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def report_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Compression report",
        "",
        f"Teacher: `{report['teacher']['checkpoint']}` ({report['teacher']['family']}); "
        f"test metric: `{report['metric'] or 'none'}`; latency: one thread.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(table_cells(r)) + " |" for r in report["rows"]]
    lines += ["", "## Gates", ""]
    lines += [
        f"- {'PASS' if g['passed'] else 'FAIL'} — {g['name']}: {g['detail']}{_guards(g)}" for g in report["gates"]
    ]
    return "\n".join([*lines, "", f"**{verdict(report)}**", ""])


def _guards(gate: dict[str, Any]) -> str:
    return f" (guards {', '.join(gate['guards'])})" if gate.get("guards") else ""


def verdict(report: dict[str, Any]) -> str:
    """One line: the champion and what was held back, from a report (or a ``CompressResult`` as a dict)."""
    shipped = report.get("shipped") or []
    held = [k for k in report.get("files") or {} if k not in shipped]
    failed = [g["name"] for g in report["gates"] if not g["passed"]]
    if report.get("champion") is None:
        return "no artifact passed its own gates: nothing is shipped" + (
            f" (failed: {', '.join(failed)})" if failed else ""
        )
    text = f"champion: {report['champion']}; shipped: {', '.join(shipped)}"
    if failed:
        text += f"; failed: {', '.join(failed)}" + (f" — not shipped: {', '.join(held)}" if held else "")
    return text


def result_summary(result: CompressResult) -> dict[str, Any]:
    """What :func:`verdict` reads, from a result."""
    gates = [dataclasses.asdict(g) for g in result.gates]
    return {"gates": gates, "champion": result.champion, "shipped": result.shipped, "files": result.files}


def print_report(result: CompressResult) -> None:
    """The report as a rich table on the terminal, then the gates."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"compression — {result.metric or 'no test metric'}")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col == "model" else "right")
    for row in result.rows:
        table.add_row(*table_cells(dataclasses.asdict(row)))
    console = Console(width=None if sys.stdout.isatty() else 150)
    console.print(table)
    for g in result.gates:
        console.print(f"  {'[green]PASS[/]' if g.passed else '[red]FAIL[/]'} {g.name}: {g.detail}")
    console.print(f"  {verdict(result_summary(result))}")


# ---------------------------------------------------------------- tracking


@contextlib.contextmanager
def _tracked(cfg: Config, teacher: Teacher, parent_run_id: str | None) -> Iterator[str | None]:
    """The compress job's MLflow run (a child of ``parent_run_id`` when given), or ``None`` with tracking off."""
    if not cfg.tracking.enabled:
        yield None
        return
    name = f"compress {teacher.family}-{tracking.dataset_name(cfg.data.source)}"
    tags = {
        "dlforge.family": teacher.family,  # the teacher's, whatever model.family the config holds
        "dlforge.teacher_run_id": teacher.run_id or "",
        "dlforge.teacher_checkpoint": teacher.checkpoint,
    }
    with tracking.job_run(cfg, name=name, kind="compress", parent_run_id=parent_run_id, tags=tags) as run_id:
        yield run_id


def report_metrics(result: CompressResult) -> dict[str, float]:
    """Flat MLflow metrics: ``compress/<row key>/<what>``, ``compress/gate/<gate>`` (1/0), ``compress/passed``."""
    metrics: dict[str, float] = {}
    leaf = (result.metric or "metric").split("/")[-1]  # acc | mse
    for row in result.rows:
        key = f"compress/{row.key or _slug(row.model)}"
        metrics[f"{key}/size_bytes"] = float(row.size_bytes)
        metrics[f"{key}/params"] = float(row.params)
        if row.metric is not None:
            metrics[f"{key}/{leaf}"] = row.metric
        if row.parity_max_abs_diff is not None:
            metrics[f"{key}/parity_max_abs_diff"] = row.parity_max_abs_diff
        metrics |= {f"{key}/latency_{k}_ms": v for k, v in row.latency_ms.items()}
    for gate in result.gates:
        metrics[f"compress/gate/{_slug(gate.name)}"] = float(gate.passed)
    metrics["compress/passed"] = float(result.passed)
    for what in ("params_ratio", "gain_over_scratch"):
        if what in result.student:
            metrics[f"compress/student/{what}"] = float(result.student[what])
    return metrics


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def registered_key(cfg: Config, teacher: Teacher) -> str | None:
    """Which file ``compress.register`` ships (a key of ``CompressResult.files``), or ``None``.

    ``teacher`` is the GAN's ``generator``; an INT8 choice is the fp32 file when ``compress.quantization=none``.
    Raises InputError when it names a student that will not be trained.
    """
    choice = cfg.compress.register
    if choice == "none" or not cfg.tracking.enabled:
        return None
    model, _, int8 = choice.partition("-")
    if model == "student" and (teacher.family == "gan" or cfg.compress.epochs == 0):  # auto: the teacher's, ≥ 1
        why = "a GAN ships its generator" if teacher.family == "gan" else "compress.epochs=0 trains none"
        raise InputError(f"compress.register={choice} needs a student, but {why}; set compress.register=teacher-int8")
    if model == "teacher" and teacher.family == "gan":
        model = "generator"
    return model + ("-int8" if int8 and cfg.compress.quantization != "none" else "")


def registered_model_name(cfg: Config, family: str) -> str:
    """``<experiment>-<family>-onnx``: beside the trained PyTorch model ``<experiment>-<family>``."""
    return tracking.registered_model_name(cfg.with_overrides({"model.family": family})) + "-onnx"


def log_result(
    cfg: Config, run_id: str | None, teacher: Teacher, probe: Probe, result: CompressResult
) -> CompressResult:
    """Metrics, report and ONNX files to the compress run; every artifact whose own gates passed registered.

    Shipped artifacts are logged with the ONNX flavor (one file, a float32 — int64 for text — signature and input
    example), so ``mlflow.pyfunc.load_model`` serves them, and registered as versions of
    ``<experiment>-<family>-onnx``, each under its own alias; the champion also under ``candidate`` (unless
    ``compress.register=none``). An artifact with a failed gate stays a plain artifact (``onnx/``) for review.
    """
    if run_id is None:
        return result
    tracking.log_metrics(run_id, report_metrics(result))
    tracking.log_artifact(run_id, result.report_md, "compress")
    tracking.log_artifact(run_id, result.report_json, "compress")
    shipped = result.shipped
    for key in [k for k in result.files if k not in shipped]:
        tracking.log_artifact(run_id, result.files[key], "onnx")
    status = "passed" if result.passed else ("partial" if shipped else "failed")
    tracking.set_tags(run_id, {"dlforge.gates": status})
    if not shipped:
        return result
    uris = {key: _log_onnx(run_id, key, Path(result.files[key]), teacher, probe) for key in shipped}
    name = registered_model_name(cfg, teacher.family)
    versions = {key: _register(name, key, uris[key], run_id, teacher, result) for key in uris}
    tracking.set_tags(run_id, {"dlforge.registered": ", ".join(f"{name}/{v}" for v in versions.values())})
    registered: dict[str, Any] = {
        "name": name,
        "versions": versions,
        "models": {key: f"models:/{name}/{v}" for key, v in versions.items()},
    }
    if result.champion is None or cfg.compress.register == "none":
        return dataclasses.replace(result, registered=registered)
    tracking.set_alias(name, tracking.CANDIDATE, versions[result.champion])
    registered |= {
        "version": versions[result.champion],
        "alias": tracking.CANDIDATE,
        "uri": f"models:/{name}@{tracking.CANDIDATE}",
        "model": result.champion,
    }
    return dataclasses.replace(result, registered=registered)


# Each shipped file is a version of <experiment>-<family>-onnx under its own alias (the generator counts as teacher).
ONNX_ALIASES = {"teacher": "fp32", "teacher-int8": "int8", "student": "student", "student-int8": "student-int8"}


def _register(name: str, key: str, uri: str, run_id: str, teacher: Teacher, result: CompressResult) -> str:
    row = next(r for r in result.rows if r.file == result.files[key])
    meta = export.read_metadata(row.file)
    tags = {
        "dlforge.model": key,
        "dlforge.family": meta["family"],
        "dlforge.quantization": meta.get("quantization", "none"),
        "dlforge.teacher_run_id": teacher.run_id or "",
        "dlforge.compress_run_id": run_id,
        "dlforge.gates": "passed",
        "dlforge.size_bytes": row.size_bytes,
    }
    if row.metric is not None and result.metric:
        tags[f"metric.{result.metric}"] = f"{row.metric:.6g}"
    alias = ONNX_ALIASES[key.replace("generator", "teacher")]
    return tracking.register_model(uri, name=name, run_id=run_id, alias=alias, tags=tags)


def _log_onnx(run_id: str, key: str, path: Path, teacher: Teacher, probe: Probe) -> str:
    """Log one ``.onnx`` with the ONNX flavor; the signature's dtype is the graph's own input type."""
    session = export.open_session(path)
    example = probe.test_x[:2]
    example = example.astype(np.int64 if session.get_inputs()[0].type == "tensor(int64)" else np.float32)
    meta = export.read_metadata(session)
    metadata = {
        "dlforge_model": key,
        "family": meta.get("family"),
        "task": meta.get("task"),
        "quantization": meta.get("quantization", "none"),
        "teacher_run_id": teacher.run_id or "",
    }
    output = export.run_session(session, example)
    return tracking.log_onnx_model(
        run_id, path, name=key, input_example=example, output_example=output, metadata=metadata
    )
