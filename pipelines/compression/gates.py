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
    """The champion's preference order: ``compress.register`` first, then its other precision, then the other models
    in the same precision order — the teacher, the ensemble (``compress.teacher=ensemble`` only), the student.

    ``teacher-int8`` (the default, also under ``register=none``) → teacher, ensemble-int8, ensemble, student-int8,
    student. The ensemble comes after the teacher by default: it is k times the teacher's size and latency.
    """
    first = cfg.compress.register if cfg.compress.register != "none" else "teacher-int8"
    model, _, quantized = first.partition("-")
    models = (
        ["teacher", "ensemble", "student"]
        if teacher.ensemble is not None or teacher.members
        else ["teacher", "student"]
    )
    if model in models:  # an ensemble choice without an ensemble was refused up front (publish.registered_key)
        models.insert(0, models.pop(models.index(model)))
    order = [key for m in models for key in ((f"{m}-int8", m) if quantized else (m, f"{m}-int8"))]
    if teacher.record.generative:
        order = [key.replace("teacher", "generator") for key in order]
    return order


def choose_champion(order: list[str], files: dict[str, str], gates: list[Gate]) -> str | None:
    """The first artifact of ``order`` that was made and whose own gates passed; ``None`` when none qualifies."""
    ok = set(shippable(files, gates))
    return next((key for key in order if key in ok), None)
