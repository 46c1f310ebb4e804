"""The compression report: its table (shared with the pipeline report), markdown and JSON files, terminal output."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from pipelines.compression.results import CompressResult, Gate, Row
from pipelines.outputs import write_json_atomic, write_text_atomic

COLUMNS = ("model", "params", "size", "metric", "b1 p50/p95 ms", "b64 p50/p95 ms", "parity |Δ|")


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


def table_cells(row: dict[str, Any]) -> list[str]:
    """One row (a :class:`Row` as a dict) as the text of the ``COLUMNS`` cells."""
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
    """``compress_report.md``: the teacher, the table, each gate with what it guards, the verdict."""
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
    lines += autotune_markdown(report.get("autotune") or {})
    lines += ["", "## Gates", ""]
    lines += [
        f"- {'PASS' if g['passed'] else 'FAIL'} — {g['name']}: {g['detail']}{_guards(g)}" for g in report["gates"]
    ]
    return "\n".join([*lines, "", f"**{verdict(report)}**", ""])


AUTOTUNE_COLUMNS = ("variant", "status", "size", "metric", "b1 p50 ms", "b64 p50 ms", "speed vs fp32", "detail")


def autotune_cells(tuning: dict[str, Any]) -> list[list[str]]:
    """One row of ``AUTOTUNE_COLUMNS`` text per attempt of the autotuner (``Tuning.to_dict``); the winner starred."""
    rows = []
    for i, a in enumerate(tuning["attempts"]):
        lat = a.get("latency_ms") or {}
        cells = [
            ("★ " if i == tuning["winner"] else "") + a["variant"],
            a["status"],
            "—" if a.get("size_bytes") is None else _size(a["size_bytes"]),
            "—" if a.get("metric") is None else f"{a['metric']:.4f}",
            *(f"{lat[k]:.3f}" if k in lat else "—" for k in ("b1_p50", "b64_p50")),
            "—" if a.get("speed") is None else f"{a['speed']:.2f}×",
            a["detail"],
        ]
        rows.append(cells)
    return rows


def autotune_markdown(autotune: dict[str, Any]) -> list[str]:
    """The autotuner's section of ``compress_report.md``: each model's attempts and why its winner won."""
    lines: list[str] = []
    for role, tuning in autotune.items():
        lines += ["", f"## Quantization autotuner — {role}", "", f"Shipped: {tuning['why']}.", ""]
        lines += ["| " + " | ".join(AUTOTUNE_COLUMNS) + " |", "|" + "---|" * len(AUTOTUNE_COLUMNS)]
        lines += ["| " + " | ".join(cells) + " |" for cells in autotune_cells(tuning)]
    return lines


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
