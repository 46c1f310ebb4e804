"""The compress stage, read as its table of contents: :func:`compress`.

Load the teacher, load the data, ship the teacher (export, parity, quantize, measure), distill a smaller student and
train the same student from scratch, ship the student, evaluate the gates, choose the champion, write the report,
and — tracking on — log it all to the compress run and register every ONNX file whose own gates passed. Every model
is scored by the same function on the same test split, so the rows of the report differ only in the model.

Gates guard what they gate: parity guards an fp32 file and the quantized file made from it, a quantization drop its
quantized file, the student drop both student files. The champion is the first artifact of ``compress.register``'s
preference order whose own gates passed (:func:`~pipelines.compression.gates.preference`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dl_lightning.data import Splits
from dl_lightning.errors import InputError
from pipelines.compression.ensemble import ROLE as ENSEMBLE
from pipelines.compression.ensemble import ship_ensemble
from pipelines.compression.gates import choose_champion, drop_points, metric_gate, preference
from pipelines.compression.measure import Probe, make_probe, measure_torch
from pipelines.compression.publish import log_result, registered_key, tracked
from pipelines.compression.results import CompressResult, Gate, Row, shippable
from pipelines.compression.ship import ship
from pipelines.compression.students import sized_student_arch, student_epochs, train_students
from pipelines.compression.tables import write_report
from pipelines.compression.teacher import Teacher, check_compatible, ensemble_members, load_ensemble, load_teacher
from pipelines.config import Config
from pipelines.stage_results import Upstream
from pipelines.train import load_data


def compress_stage(cfg: Config, upstream: Upstream) -> CompressResult:
    """The compress stage (``dlforge compress`` and ``dlforge run``): :func:`compress` of the teacher upstream names.

    The teacher is ``upstream.model`` (``--teacher``: a checkpoint, run id or ``models:/`` URI), else the train
    stage's best (or last) checkpoint; under ``compress.teacher=ensemble`` the sweep's best trials are its members.
    The compress run nests under ``upstream.parent_run_id``.

    Raises:
        InputError: upstream names no teacher.
    """
    trained = upstream.train.result if upstream.train is not None else None
    teacher = upstream.model or (trained and (trained.best_checkpoint or trained.last_checkpoint))
    if not teacher:
        raise InputError("compress needs a teacher; pass --teacher CKPT|RUN_ID|models:/<name>@<alias>")
    sweep = upstream.sweep
    ensemble = cfg.compress.teacher == "ensemble" and sweep is not None
    members = ensemble_members(sweep.to_dict(), cfg.compress.ensemble_k) if ensemble else []  # type: ignore[union-attr]
    return compress(cfg, teacher, parent_run_id=upstream.parent_run_id, members=members)


def compress(
    cfg: Config, teacher_ref: str, *, parent_run_id: str | None = None, members: Sequence[str] = ()
) -> CompressResult:
    """Distill, export, quantize, measure and gate the teacher ``teacher_ref`` on ``cfg``'s data.

    Args:
        teacher_ref: a checkpoint path, an MLflow run id or ``models:/<name>@<alias>`` (resolved in the store
            ``cfg.tracking.uri`` names, downloaded to ``<output_dir>/teacher``).
        parent_run_id: the pipeline's MLflow run, when compress runs as one of its stages: the compress run is its
            child.
        members: under ``compress.teacher=ensemble``, the checkpoints whose ensemble the student learns from (the
            best sweep trials': ``teacher.ensemble_members``); the ensemble also ships as one graph, ``ensemble``
            (and ``ensemble-int8``), preferred after the teacher's files (``gates.preference``).

    Raises:
        InputError: the teacher cannot be found or read, or does not fit the data; ``compress.register`` asks for
            a student that will not be trained.
    """
    teacher = load_teacher(teacher_ref, cfg)
    if cfg.compress.teacher == "ensemble":
        ensemble = load_ensemble(list(members), teacher, cfg)
        teacher = dataclasses.replace(teacher, ensemble=ensemble, members=tuple(members))
    registered_key(cfg, teacher)  # a registration that cannot happen fails now, not after the training
    # the data is read as the teacher's family reads it (a 2-D array is a table to an mlp, signals to an rnn)
    splits = load_data(cfg.with_overrides({"model.family": teacher.family}))
    check_compatible(teacher.spec, splits.spec)
    probe = make_probe(cfg, teacher, splits)
    with tracked(cfg, teacher, parent_run_id) as run_id:
        result = _compress(cfg, teacher, splits, probe, run_id)
        result = log_result(cfg, run_id, teacher, probe, result)
    return result


def _compress(cfg: Config, teacher: Teacher, splits: Splits, probe: Probe, run_id: str | None) -> CompressResult:
    out = Path(cfg.output_dir).absolute()
    net, example = teacher.module.export_net()
    role = "generator" if teacher.record.generative else "teacher"
    rows, files, gates, tuned = ship(cfg, net, example, role, teacher, teacher.family, probe, out / "onnx")
    autotune = {role: tuned} if tuned else {}
    if teacher.ensemble is not None and not teacher.record.generative:  # the ensemble competes as one graph too
        e_rows, e_files, e_gates, e_tuned = ship_ensemble(cfg, teacher, probe, out / "onnx")
        rows, files, gates = [*rows, *e_rows], files | e_files, [*gates, *e_gates]
        autotune |= {ENSEMBLE: e_tuned} if e_tuned else {}
    student: dict[str, Any] = {}
    checkpoints: dict[str, str] = {}
    if not teacher.record.generative and student_epochs(cfg, teacher) > 0:
        s_rows, s_files, s_gates, student, checkpoints = _student(cfg, teacher, splits, probe, rows[0], out)
        rows, files, gates = [*rows, *s_rows], files | s_files, [*gates, *s_gates]
        autotune |= {"student": student.pop("autotune")} if student.get("autotune") else {}
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
        "autotune": autotune,
        "ensemble_members": list(teacher.members),  # compress.teacher=ensemble: the checkpoints in `ensemble`
    }
    md, js = write_report(out, report, rows, gates)
    return CompressResult(
        str(out),
        metric,
        rows,
        gates,
        files,
        str(md),
        str(js),
        teacher.run_id,
        run_id,
        student,
        champion=champion,
        autotune=autotune,
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
    rows, files, gates, tuned = ship(cfg, s_net, s_example, "student", teacher, family, probe, out / "onnx")
    student_row = rows[0]  # PyTorch fp32, as the teacher's
    ratio = student_row.params / max(teacher_row.params, 1)
    epochs = student_epochs(cfg, teacher)
    facts: dict[str, Any] = {"family": family, "arch": arch, "params_ratio": ratio, "epochs": epochs}
    facts |= {"autotune": tuned} if tuned else {}  # popped into the report's autotune section by the caller
    facts |= {"inherited": distilled.inherited} if hasattr(distilled, "inherited") else {}  # compress.inherit
    if teacher.ensemble is not None:  # what the student learned from (the ensemble's own rows come before)
        facts["ensemble_members"] = list(teacher.members)
        rows.append(_taught_by_teacher_alone(cfg, teacher, splits, probe, family, arch, out))
        if probe.task is not None:
            gain = -drop_points(rows[-1].metric, student_row.metric, probe.task)
            facts["gain_over_single_teacher"] = gain + 0.0  # a tie reads +0.00, not -0.00
    if scratch is not None:
        scratch_net = scratch.export_net()[0]
        rows.append(measure_torch(cfg, "student from scratch (PyTorch)", "student_scratch_pytorch", scratch_net, probe))
        if probe.task is not None:
            facts["gain_over_scratch"] = -drop_points(rows[-1].metric, student_row.metric, probe.task)
    gates.append(_student_gate(cfg, teacher_row, student_row, probe, ratio))
    names = ("student", "scratch") if scratch is not None else ("student",)
    found = [(n, p) for n in names for p in sorted((out / n / "checkpoints").glob("*.ckpt"))]
    return rows, files, gates, facts, {f"{n}_{p.stem}_checkpoint": str(p) for n, p in found}


def _taught_by_teacher_alone(
    cfg: Config, teacher: Teacher, splits: Splits, probe: Probe, family: str, arch: dict[str, Any], out: Path
) -> Row:
    """``compress.teacher=ensemble``: the same student (seed, budget, inherited weights) taught by the teacher alone,
    in ``<output_dir>/single_teacher``, so the report shows what the ensemble added; it is measured, not shipped."""
    alone = dataclasses.replace(teacher, ensemble=None, members=())
    fit_cfg = cfg.with_overrides({"output_dir": str(out / "single_teacher"), "compress.scratch": False})
    student, _ = train_students(fit_cfg, alone, splits, family, arch)
    name = "student taught by the teacher alone (PyTorch)"
    return measure_torch(cfg, name, "student_single_teacher_pytorch", student.export_net()[0], probe)


def _student_gate(cfg: Config, teacher_row: Row, student_row: Row, probe: Probe, ratio: float) -> Gate:
    """The student's drop against the teacher, guarding both student files."""
    limit = cfg.compress.max_student_drop
    gate = metric_gate("student drop", teacher_row.metric, student_row.metric, probe.task, limit)
    if not gate.passed:  # the architecture cannot hold the teacher's accuracy: say so, ship neither student file
        gate = dataclasses.replace(
            gate,
            detail=f"{gate.detail}; a student at {ratio:.0%} of the teacher's parameters "
            "cannot hold its accuracy — not shipped",
        )
    return dataclasses.replace(gate, guards=("student", "student-int8"))
