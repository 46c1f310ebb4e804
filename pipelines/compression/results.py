"""The records the compress stage hands forward: a report row, a gate, and the stage's result."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Row:
    """One line of the report: a model as it would ship (PyTorch eager, ONNX fp32 or quantized ONNX)."""

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
    autotune: dict[str, Any] = field(default_factory=dict)  # role → the autotuner's attempts (quantization=auto)

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

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON values, plus ``passed`` and ``shipped`` (what readers of the JSON look up)."""
        return dataclasses.asdict(self) | {"passed": self.passed, "shipped": self.shipped}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressResult:
        """The result :meth:`to_dict` wrote (``passed`` and ``shipped`` are recomputed, not read)."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"rows", "gates"}
        rows = [Row(**row) for row in data["rows"]]
        gates = [Gate(**(gate | {"guards": tuple(gate.get("guards") or ())})) for gate in data["gates"]]
        return cls(rows=rows, gates=gates, **{k: v for k, v in data.items() if k in fields})


def shippable(files: dict[str, str], gates: list[Gate]) -> list[str]:
    """The artifacts none of whose own gates failed: a gate guards those its ``guards`` names, or all without any."""
    failed = [g for g in gates if not g.passed]
    if any(not g.guards for g in failed):
        return []
    held = {key for g in failed for key in g.guards}
    return [key for key in files if key not in held]
