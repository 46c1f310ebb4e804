"""The quantization autotuner (``compress.quantization=auto``): try the recipes, ship the fastest one that passes.

On small nets INT8 is often slower than ONNX fp32 (docs/benchmarks.md), and ONNX Runtime quantizes some heavy ops
not at all (GRU: neither recipe), so no fixed recipe is right for every model. :func:`autotune` measures fp32 ONNX,
dynamic INT8 and static QDQ INT8 (per-tensor and per-channel, each calibration method) on the same probe, keeps only
variants whose heavy ops really are INT8 (:func:`~pipelines.compression.quantization.census`) and whose accuracy
drop passes ``compress.max_int8_drop``, rescues a failing variant by keeping in float the heavy nodes that hurt most
(:func:`rank_nodes`, ORT's ``qdq_loss_debug`` on the calibration batches: the worst one, then the worst two, …; where
no ranking can be made, its last, then first and last, layer), and returns every attempt with the winner: the fastest
passing variant, fp32 included.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from dl_lightning.errors import clip
from pipelines import export
from pipelines.compression.gates import metric_gate
from pipelines.compression.measure import LATENCY_BATCHES, Probe, measure_onnx, onnx_latency
from pipelines.compression.quantization import census, heavy_nodes, prepare_for_quantization, quantize_onnx
from pipelines.compression.results import Row
from pipelines.config import Config

TIE = 0.05  # variants within 5 % of the fastest are a tie (timer noise): the smallest file of them wins


@dataclass(frozen=True)
class Variant:
    """One way to ship the fp32 graph: as it is (``none``), or quantized by a recipe with its options."""

    recipe: str  # none | dynamic | static
    per_channel: bool = False
    method: str = "minmax"  # static calibration: minmax | entropy | percentile
    keep_float: tuple[str, ...] = ()  # "first" / "last" heavy layer, or heavy nodes by name, left in float

    @property
    def label(self) -> str:
        """``fp32``, ``dynamic``, ``static per-channel entropy; last layer fp32``…"""
        if self.recipe == "none":
            return "fp32"
        text = self.recipe + (" per-channel" if self.per_channel else " per-tensor")
        text += f" {self.method}" if self.recipe == "static" else ""
        if set(self.keep_float) <= set(ENDS):
            return text + (f"; {'/'.join(self.keep_float)} layer fp32" if self.keep_float else "")
        return text + f"; {', '.join(self.keep_float)} fp32 (worst by qdq_loss_debug)"

    @property
    def slug(self) -> str:
        named = set(self.keep_float) - set(ENDS)  # node names may hold "/" or "::": counted, not spelled
        kept = list(self.keep_float) if not named else [f"worst{len(self.keep_float)}"]
        return "-".join([self.recipe, "pc" if self.per_channel else "pt", self.method, *kept])


ENDS = ("first", "last")


# the order of trial: cheapest first, so a tight budget still sees both recipes
VARIANTS = (
    Variant("dynamic"),
    Variant("static", False, "minmax"),
    Variant("static", True, "minmax"),
    Variant("static", True, "entropy"),
    Variant("static", True, "percentile"),
    Variant("static", False, "entropy"),
    Variant("static", False, "percentile"),
)
RESCUES = (("last",), ("first", "last"))  # what a failed variant keeps in float in turn when no ranking can be made
RANKED_RESCUES = 3  # at most the 1, 2, 3 worst nodes by rank_nodes left in float, in turn


@dataclass(frozen=True)
class Attempt:
    """One variant as measured: ``status`` is passed, failed gate, not INT8, error or skipped (budget)."""

    variant: str
    status: str
    detail: str
    size_bytes: int | None = None
    metric: float | None = None
    latency_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    speed: float | None = None  # mean over batch sizes of fp32 p50 / this p50: > 1 is faster than fp32
    file: str | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Tuning:
    """Every attempt, the winner's index into them, and why it won."""

    attempts: list[Attempt]
    winner: int
    why: str

    @property
    def chosen(self) -> Attempt:
        return self.attempts[self.winner]

    def to_dict(self) -> dict[str, Any]:
        return {"attempts": [dataclasses.asdict(a) for a in self.attempts], "winner": self.winner, "why": self.why}


def autotune(cfg: Config, fp32: Path, fp32_row: Row, role: str, probe: Probe, folder: Path) -> Tuning:
    """Try ``VARIANTS`` on ``fp32`` within ``compress.autotune_budget_s``; return the attempts and the winner.

    A variant that starts before the budget ends is finished; later ones are ``skipped``. Only the winner's file
    is kept (``<folder>/autotune/<role>-<variant>.onnx``); fp32 always passes, so there is always a winner.
    """
    deadline = time.monotonic() + cfg.compress.autotune_budget_s
    base = Attempt("fp32", "passed", "the exported graph", fp32_row.size_bytes, fp32_row.metric, fp32_row.latency_ms)
    attempts = [dataclasses.replace(base, speed=1.0, file=str(fp32), options=dataclasses.asdict(Variant("none")))]
    for variant in VARIANTS:
        if time.monotonic() > deadline:
            attempts.append(Attempt(variant.label, "skipped", "budget"))
            continue
        attempt = _attempt(cfg, variant, fp32, base, role, probe, folder)
        attempts.append(attempt)
        if attempt.status == "failed gate" and probe.task is not None:  # only an accuracy failure is worth a rescue
            attempts += _rescue(cfg, variant, fp32, base, role, probe, folder, deadline)
    tuning = _choose(attempts)
    _keep_only(tuning.chosen, attempts)
    return tuning


def _rescue(
    cfg: Config, variant: Variant, fp32: Path, base: Attempt, role: str, probe: Probe, folder: Path, deadline: float
) -> list[Attempt]:
    """``variant`` again with the worst 1, 2, … nodes of :func:`rank_nodes` in float (never all of them), else with
    ``RESCUES``; until one attempt does not fail its gate or the budget ends."""
    if time.monotonic() > deadline:
        return [Attempt(dataclasses.replace(variant, keep_float=RESCUES[0]).label, "skipped", "budget")]
    ranked = [name for name, _ in rank_nodes(fp32, variant, probe.calibration, folder / "autotune")]
    rescues = [tuple(ranked[:n]) for n in range(1, min(RANKED_RESCUES, len(ranked) - 1) + 1)] or list(RESCUES)
    attempts: list[Attempt] = []
    for keep in rescues:
        rescued = dataclasses.replace(variant, keep_float=keep)
        if time.monotonic() > deadline:
            return [*attempts, Attempt(rescued.label, "skipped", "budget")]
        attempts.append(_attempt(cfg, rescued, fp32, base, role, probe, folder))
        if attempts[-1].status != "failed gate":
            break
    return attempts


def rank_nodes(
    fp32: Path, variant: Variant, calibration: Sequence[np.ndarray], workdir: Path
) -> list[tuple[str, float]]:
    """The weighted heavy nodes of ``fp32``'s quantizable graph, worst first, each with the quantization noise it
    sees: the lowest signal-to-quantization-noise ratio (dB) of its weight, its bias and its input activation.

    Made with ORT's ``qdq_loss_debug`` on a static QDQ copy of the graph at ``variant``'s granularity (a dynamic
    variant's weights round as per-tensor/per-channel MinMax do): weights and biases are matched with their
    dequantized copies (per output row, the median, so one huge weight that rounds every other one of its tensor to
    zero shows), and the float graph's activations on the calibration batches are rounded by the copy's scales (ORT's
    own pre/post-QDQ comparison is no measure where a Relu is folded into its quantizer). Empty when ORT cannot
    quantize or run the graph: the caller falls back to ``RESCUES``.
    """
    from onnxruntime.quantization import qdq_loss_debug as debug

    workdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=workdir))
    try:
        prepared = prepare_for_quantization(fp32, tmp)
        method = variant.method if variant.recipe == "static" else "minmax"
        qdq = quantize_onnx(
            fp32,
            tmp / "qdq.onnx",
            recipe="static",
            per_channel=variant.per_channel,
            calibration=calibration,
            method=method,
        )
        noise = debug.compute_weight_error(debug.create_weight_matching(str(prepared), str(qdq)), _row_sqnr)
        noise |= _activation_sqnr(prepared, qdq, calibration, tmp)
        return _worst_first(onnx.load(str(prepared)), noise)
    except Exception:  # a graph ORT's debugger cannot follow: no ranking, the blind rescues instead
        return []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _worst_first(model: onnx.ModelProto, noise: dict[str, float]) -> list[tuple[str, float]]:
    heavy = set(heavy_nodes(model))
    scores = {}
    for node in (n for n in model.graph.node if n.name in heavy):
        found = [noise[name] for name in node.input if name in noise]
        if found:
            scores[node.name] = min(found)
    return sorted(scores.items(), key=lambda item: item[1])


def _row_sqnr(reference: np.ndarray, rounded: np.ndarray) -> float:
    """The median over rows (axis 0) of each row's SQNR in dB: the typical row, not the largest value's."""
    from onnxruntime.quantization.qdq_loss_debug import compute_signal_to_quantization_noice_ratio as sqnr

    ref, out = np.atleast_2d(reference), np.atleast_2d(rounded)
    rows = ref.reshape(ref.shape[0], -1), out.reshape(out.shape[0], -1)
    return float(np.median([sqnr(a, b) for a, b in zip(*rows, strict=True)]))


def _activation_sqnr(prepared: Path, qdq: Path, calibration: Sequence[np.ndarray], tmp: Path) -> dict[str, float]:
    """Per quantized activation: the float graph's values on ``calibration`` against the same values rounded by the
    QDQ copy's scale and zero point."""
    from onnxruntime.quantization import qdq_loss_debug as debug

    augmented = tmp / "float_outputs.onnx"
    debug.modify_model_output_intermediate_tensors(str(prepared), str(augmented))
    values = debug.collect_activations(str(augmented), [{export.INPUT_NAME: batch} for batch in calibration])
    model = onnx.load(str(qdq))
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    noise = {}
    for node in (n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in values):
        scale, zero = constants[node.input[1]], constants[node.input[2]]
        x = np.concatenate([v.ravel() for v in values[node.input[0]]])
        bounds = np.iinfo(zero.dtype)
        rounded = (np.clip(np.round(x / scale) + zero, bounds.min, bounds.max) - zero.astype(np.float32)) * scale
        noise[node.input[0]] = debug.compute_signal_to_quantization_noice_ratio(x, rounded)
    return noise


def _attempt(
    cfg: Config, variant: Variant, fp32: Path, base: Attempt, role: str, probe: Probe, folder: Path
) -> Attempt:
    """Quantize by ``variant``, check it is INT8, measure it and gate its drop against fp32."""
    options = dataclasses.asdict(variant)
    dst = folder / "autotune" / f"{role}-{variant.slug}.onnx"
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        path = quantize_onnx(
            fp32,
            dst,
            recipe=variant.recipe,  # type: ignore[arg-type]
            per_channel=variant.per_channel,
            calibration=probe.calibration,
            method=variant.method,
            keep_float=variant.keep_float,  # type: ignore[arg-type]
        )
    except Exception as exc:  # a recipe ORT cannot apply to this graph is one failed attempt, not a failed stage
        why = f"{type(exc).__name__}: {clip((str(exc).splitlines() or [''])[0], 160)}"
        return Attempt(variant.label, "error", why, options=options)
    model = onnx.load(str(path))
    found = census(model)
    size = path.stat().st_size
    if not found.is_int8:
        path.unlink()
        left = found.float_summary(model) or "every heavy op"
        return Attempt(variant.label, "not INT8", f"left {left} in float", size, options=options)
    row = measure_onnx(cfg, variant.label, variant.slug, path, 0, probe, None)
    gate = metric_gate("drop", base.metric, row.metric, probe.task, cfg.compress.max_int8_drop)
    status = "passed" if gate.passed else "failed gate"
    detail = f"{found.quantized_nodes} heavy ops INT8; {gate.detail}"
    speed = paired_speed(fp32, path, probe, cfg.compress.latency_repeats)
    return Attempt(variant.label, status, detail, size, row.metric, row.latency_ms, speed, str(path), options)


def paired_speed(reference: Path, candidate: Path, probe: Probe, repeats: int) -> float:
    """How much faster ``candidate`` runs than ``reference``: the mean over ``LATENCY_BATCHES`` of their p50 ratio,
    each timed right beside the other in A-B-B-A order, so the load of a shared machine falls on both alike (timing
    each variant once, in turn, let drift pick the winner: docs/benchmarks.md)."""
    sessions = [export.open_session(reference, threads=1), export.open_session(candidate, threads=1)]
    ratios = []
    for b in LATENCY_BATCHES:
        x = probe.batch(b)
        ref_first = [onnx_latency(s, x, repeats)[0] for s in sessions]
        cand_first = [onnx_latency(s, x, repeats)[0] for s in sessions[::-1]][::-1]
        ratios.append((ref_first[0] + cand_first[0]) / max(ref_first[1] + cand_first[1], 1e-9))
    return float(np.mean(ratios))


def _choose(attempts: list[Attempt]) -> Tuning:
    """The fastest passing attempt; within ``TIE`` of it, the smallest file. Says why in one line."""
    passing = [i for i, a in enumerate(attempts) if a.status == "passed"]
    fastest = max(attempts[i].speed or 0.0 for i in passing)
    tied = [i for i in passing if (attempts[i].speed or 0.0) >= fastest * (1 - TIE)]
    winner = min(tied, key=lambda i: attempts[i].size_bytes or 0)
    return Tuning(attempts, winner, _why(attempts, winner, len(tied) > 1))


def _why(attempts: list[Attempt], winner: int, tie: bool) -> str:
    chosen = attempts[winner]
    others = [a for i, a in enumerate(attempts) if i != winner and a.status == "passed"]
    batches = " and ".join(f"b{b}" for b in LATENCY_BATCHES)
    if chosen.variant == "fp32":
        if not others:
            return "fp32: no INT8 variant both quantized the heavy ops and passed its accuracy gate"
        best = max(others, key=lambda a: a.speed or 0.0)
        return f"fp32: no INT8 variant was faster (best: {best.variant}, {best.speed:.2f}× fp32's speed at {batches})"
    text = f"{chosen.variant}: {chosen.speed:.2f}× fp32's speed (mean over {batches}, timed beside it), {chosen.detail}"
    return text + (f"; the smallest file of those within {TIE:.0%} of the fastest" if tie else "")


def _keep_only(chosen: Attempt, attempts: list[Attempt]) -> None:
    """Delete every variant file but the winner's (fp32 is the stage's own file and stays)."""
    for attempt in attempts:
        if attempt.file and attempt is not chosen and attempt.variant != "fp32":
            Path(attempt.file).unlink(missing_ok=True)


def install(chosen: Attempt, dst: Path) -> Path:
    """Move the winning variant's file to ``dst`` (the artifact's stable name) and drop the autotune folder."""
    src = Path(chosen.file or "")
    shutil.move(src, dst)
    shutil.rmtree(src.parent, ignore_errors=True)
    return dst
