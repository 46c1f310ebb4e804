"""Gates guard what they gate: a drop against a reference fails its own artifacts, and the champion is the first
artifact of the preference order whose own gates passed — a failing student never blocks a passing teacher."""

from __future__ import annotations

import math

from pipelines.compression.results import Gate, shippable
from pipelines.compression.teacher import Teacher
from pipelines.config import Config


def drop_points(reference: float, value: float, task: str) -> float:
    """How much worse ``value`` is than ``reference``: accuracy points (× 100), or % more error for regression."""
    if task == "classification":
        return (reference - value) * 100.0
    return (value - reference) / max(abs(reference), 1e-12) * 100.0


def metric_gate(name: str, reference: float | None, value: float | None, task: str | None, limit: float) -> Gate:
    """Passes when ``value`` is at most ``limit`` points worse than ``reference``; skipped (passed) without a metric.

    A non-finite drop fails.
    """
    if reference is None or value is None or task is None:
        return Gate(name, True, "no test metric (skipped)")
    drop = drop_points(reference, value, task)
    unit = "points" if task == "classification" else "% mse"
    if not math.isfinite(drop):
        return Gate(name, False, "metric is not finite")
    return Gate(name, drop <= limit, f"drop {drop:+.2f} {unit} (limit {limit:g})")


def preference(cfg: Config, teacher: Teacher) -> list[str]:
    """The champion's preference order: ``compress.register`` first, then its other precision, then the other model.

    ``teacher-int8`` (the default, also under ``register=none``) → teacher, student-int8, student.
    """
    first = cfg.compress.register if cfg.compress.register != "none" else "teacher-int8"
    model, _, quantized = first.partition("-")
    other = "student" if model == "teacher" else "teacher"
    order = [first, model if quantized else f"{model}-int8", f"{other}-int8" if quantized else other]
    order.append(other if quantized else f"{other}-int8")
    if teacher.record.generative:
        order = [key.replace("teacher", "generator") for key in order]
    return order


def choose_champion(order: list[str], files: dict[str, str], gates: list[Gate]) -> str | None:
    """The first artifact of ``order`` that was made and whose own gates passed; ``None`` when none qualifies."""
    ok = set(shippable(files, gates))
    return next((key for key in order if key in ok), None)
