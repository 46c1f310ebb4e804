"""Ensemble distillation (``compress.teacher=ensemble``): the student taught by the best k teachers of a small sweep
against the same student taught by the best one alone, and the ensemble's own accuracy against its best member's.

A small sweep — ``MEMBERS``, the family's defaults with other learning rates and dropouts, each from its own seed —
trains teachers on one split of a small, noisy table (``make_classification``, 20% of the labels redrawn at random:
nets that memorise different noise disagree, so averaging them has room). They are ranked by validation accuracy, as
the sweep ranks its trials; the best ``K`` form the ensemble. Then, for each seed, the student ``dlforge compress``
makes is trained by the compress stage's own code (``pipelines.compression.students.train_students``) twice: taught
by the best teacher (``compress.teacher=single``) and by the ensemble (``teacher.load_ensemble``, what
``compress.teacher=ensemble`` builds) — same seed, architecture, inherited weights (the best teacher's, in both arms),
data, batches, mixed copies, epochs and schedule; only the soft targets differ. Every model is scored on the same
test split.
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.benchmarks.common import BenchContext, BenchResult, Row, quiet
from pipelines.config import CompressConfig, Config, load_config

TITLE = "Ensemble distillation: student taught by the ensemble of the 3 best teachers vs by the best one (3 seeds)"
SEEDS = (0, 1, 2)
K = 3  # compress.ensemble_k's default
GAIN = 0.5  # target: points of test accuracy the ensemble-taught student gains over the single-taught one
ROWS, NOISE, TEST_FRACTION = 1000, 0.2, 0.3  # 300 test rows: one is 0.33 points
EPOCHS, QUICK_EPOCHS = 30, 1
# the sweep's trials: (seed, overrides) — widths, learning rates and dropouts apart, so the members disagree; the
# seed changes the initial weights and batches, never the split
MEMBERS = (
    (100, {"model.mlp.hidden": [256, 128], "optim.lr": 1e-3, "model.dropout": 0.1}),
    (101, {"model.mlp.hidden": [512], "optim.lr": 3e-3, "model.dropout": 0.3}),
    (102, {"model.mlp.hidden": [128, 128, 64], "optim.lr": 1e-3, "model.dropout": 0.2}),
    (103, {"model.mlp.hidden": [256, 128], "optim.lr": 3e-4, "model.dropout": 0.0}),
    (104, {"model.mlp.hidden": [384, 192], "optim.lr": 2e-3, "model.dropout": 0.5}),
)
# the students: name → (teacher, compress overrides); "single" and "ensemble" at compress's defaults come first
ARMS = {
    "single": ("single", {}),
    "ensemble": ("ensemble", {}),
    "ensemble, T=4": ("ensemble", {"compress.temperature": 4.0}),
    "single, alpha 0.5": ("single", {"compress.alpha": 0.5}),
    "ensemble, alpha 0.5": ("ensemble", {"compress.alpha": 0.5}),
    # a student as large as its teacher (Hinton et al. 2015 distilled an ensemble into one net of the members' size):
    # it starts as the best teacher (compress.inherit) and learns from itself or from the ensemble
    "single, teacher-size student": ("single", {"compress.student.width": 1.0, "compress.student.max_params": 1.0}),
    "ensemble, teacher-size student": ("ensemble", {"compress.student.width": 1.0, "compress.student.max_params": 1.0}),
}
QUICK_ARMS = ("single", "ensemble")


def noisy_table(folder: Path) -> str:
    """A 5-class table of 20 features (10 informative), ``ROWS`` rows, ``NOISE`` of the labels redrawn; written
    once as CSV."""
    import pandas as pd
    from sklearn.datasets import make_classification

    path = folder / "noisy.csv"
    if not path.is_file():
        x, y = make_classification(
            ROWS, 20, n_informative=10, n_redundant=4, n_classes=5, class_sep=1.0, flip_y=NOISE, random_state=1
        )
        pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])]).assign(label=y).to_csv(path, index=False)
    return str(path)


def base_config(ctx: BenchContext, epochs: int) -> Config:
    out = ctx.folder("ensemble")
    return load_config(
        None,
        [
            "model.family=mlp",
            f"data.source={noisy_table(out)}",
            "data.target=label",
            f"data.test_fraction={TEST_FRACTION}",
            f"trainer.max_epochs={epochs}",
            "trainer.threads=1",  # one thread per fit: the cores are shared, and small nets gain little from two
            "tracking.enabled=false",
            "compress.epochs=auto",  # the student's budget is its teacher's
            "compress.scratch=false",  # the twin is the distillation benchmark's question, not this one's
            f"output_dir={out}",
        ],
    )


def accuracy(net: Any, x: Any, y: Any) -> float:
    from pipelines.compression.measure import score
    from pipelines.export import run_torch

    return score(run_torch(net, x), y, "classification")


def train_members(cfg: Config, splits: Any, members: tuple) -> list[dict[str, Any]]:
    """Each sweep trial fitted on the one split; its best checkpoint, validation and test accuracy, best first."""
    from pipelines.compression.teacher import load_teacher
    from pipelines.train import train

    trained = []
    for i, (seed, overrides) in enumerate(members):
        trial_cfg = cfg.with_overrides({**overrides, "seed": seed, "output_dir": f"{cfg.output_dir}/trial{i}"})
        with quiet():
            result = train(trial_cfg, splits=splits)
        net = load_teacher(result.best_checkpoint, cfg).module.export_net()[0]
        val, test = accuracy(net, *splits.val), accuracy(net, *splits.test)
        label = ", ".join(f"{k.split('.')[-1]} {v}" for k, v in overrides.items())
        trained.append({"label": label, "checkpoint": result.best_checkpoint, "val": val, "test": test, "net": net})
    return sorted(trained, key=lambda m: -m["val"])  # the sweep's order: validation, never test


def disagreement(nets: list[Any], x: Any) -> float:
    """The mean over member pairs of the fraction of rows on which their predictions differ."""
    from pipelines.export import run_torch

    predictions = [np.asarray(run_torch(net, x)).argmax(-1) for net in nets]
    return float(np.mean([np.mean(a != b) for a, b in itertools.combinations(predictions, 2)]))


def measure(ctx: BenchContext, epochs: int, seeds: tuple[int, ...], arms: tuple[str, ...]) -> dict[str, Any]:
    """The members, the ensemble's test accuracy, and per seed each arm's student's."""
    from pipelines.compression.ensemble import EnsembleNet
    from pipelines.compression.students import sized_student_arch, train_students
    from pipelines.compression.teacher import load_ensemble, load_teacher
    from pipelines.train import load_data

    cfg = base_config(ctx, epochs)
    splits = load_data(cfg)
    members = train_members(cfg, splits, MEMBERS)
    chosen = members[:K]
    single = load_teacher(chosen[0]["checkpoint"], cfg)
    ensemble_acc = accuracy(EnsembleNet([m["net"] for m in chosen], "classification").eval(), *splits.test)

    def student(seed: int, arm: str) -> float:
        kind, overrides = ARMS[arm]
        seeded = cfg.with_overrides({**overrides, "seed": seed, "output_dir": f"{cfg.output_dir}/s{seed}"})
        family, arch = sized_student_arch(seeded, single)  # compress's student, or the arm's size
        teacher = single
        if kind == "ensemble":  # what compress.teacher=ensemble builds from the best trials' checkpoints
            paths = [m["checkpoint"] for m in chosen]
            teacher = dataclasses.replace(single, ensemble=load_ensemble(paths, single, seeded), members=tuple(paths))
        with quiet():
            distilled, _ = train_students(seeded, teacher, splits, family, arch)
        return accuracy(distilled.export_net()[0], *splits.test)

    return {
        "members": [{k: v for k, v in m.items() if k != "net"} for m in members],
        "ensemble": ensemble_acc,
        "disagreement": disagreement([m["net"] for m in chosen], splits.test[0]),
        "runs": [{"seed": seed} | {arm: student(seed, arm) for arm in arms} for seed in seeds],
        "test_size": len(splits.test[1]),
        "student_params": _params(*sized_student_arch(cfg, single), single),
    }


def _params(family: str, arch: dict[str, Any], teacher: Any) -> int:
    from dl_lightning.registry import build_model
    from pipelines.compression.measure import count_params

    return count_params(build_model(family, teacher.spec, arch, {}).export_net()[0])


def _points(values: list[float]) -> tuple[float, list[float], float]:
    points = [v * 100 for v in values]
    return statistics.mean(points), [min(points), max(points)], statistics.stdev(points) if len(points) > 1 else 0.0


def _gain_row(runs: list[dict[str, Any]], arm: str, versus: str, one: float) -> Row:
    gains = [(r[arm] - r[versus]) * 100 for r in runs]
    gain = statistics.mean(gains)
    note = f"per seed {', '.join(f'{g:+.2f}' for g in gains)}; one test row is {one:.2f} points"
    return Row(
        f"student: {arm} − {versus}", gain, "points", f"≥ {GAIN:g}", gain >= GAIN, note, [min(gains), max(gains)]
    )


def result_rows(job: dict[str, Any]) -> list[Row]:
    members, runs, one = job["members"], job["runs"], 100 / job["test_size"]
    rows = [
        Row(f"teacher {i + 1} of the sweep ({m['label']})", m["test"] * 100, "%", note=f"val {m['val'] * 100:.2f} %")
        for i, m in enumerate(members)
    ]
    room = round((job["ensemble"] - members[0]["test"]) * 100, 6)  # whole test rows: no float dust at the target
    rows += [
        Row(
            f"ensemble of the best {K} (by validation)",
            job["ensemble"] * 100,
            "%",
            note=f"members disagree on {job['disagreement'] * 100:.1f} % of test rows (mean over pairs)",
        ),
        Row("ensemble − best teacher", room, "points", "≥ 1", room >= 1, f"one test row is {one:.2f} points"),
    ]
    arms = [k for k in runs[0] if k != "seed"]
    for arm in arms:
        mean, spread, sd = _points([r[arm] for r in runs])
        rows.append(Row(f"student taught by: {arm}, mean", mean, "%", note=f"sd {sd:.2f}", spread=spread))
    rows.append(_gain_row(runs, "ensemble", "single", one))
    for knob in ("alpha 0.5", "teacher-size student"):  # the same comparison at another setting
        if f"ensemble, {knob}" in arms and f"single, {knob}" in arms:
            rows.append(_gain_row(runs, f"ensemble, {knob}", f"single, {knob}", one))
    return rows


def interpretation(rows: list[Row], job: dict[str, Any]) -> str:
    by = {r.measure: r for r in rows}
    room, gain = by["ensemble − best teacher"], by["student: ensemble − single"]
    teacher = job["members"][0]["test"] * 100
    student = by["student taught by: single, mean"].value
    gains = {_setting(r.measure): r for r in rows if r.measure.startswith("student: ")}
    paid = [f"{k} ({r.value:+.2f})" for k, r in gains.items() if r.met]
    not_paid = [f"{k} ({r.value:+.2f})" for k, r in gains.items() if not r.met]
    lines = [
        f"- The ensemble teaches better (≥ {GAIN:g} points, mean of {len(job['runs'])} seeds) in: "
        f"{'; '.join(paid) or 'none'}" + (f" — not in: {'; '.join(not_paid)}." if not_paid else "."),
        f"- The ensemble beats its best member by {room.value:+.2f} points "
        f"({'room for a better teacher' if room.met else 'little room'}); its members disagree on "
        f"{job['disagreement'] * 100:.1f} % of test rows.",
        f"- The student taught by the ensemble {'gains' if gain.met else 'does not gain'} ≥ {GAIN:g} points over "
        f"the one taught by the best teacher: {gain.value:+.2f} points, mean of {len(job['runs'])} seeds "
        f"({gain.note}).",
        f"- The student ({job['student_params']:,} parameters) ends {teacher - student:+.2f} points below the best "
        "teacher it was sized from: where a student cannot hold even one teacher, a better teacher has little to add.",
        *_knob_lines(by),
        "- The ensemble itself ships as one ONNX graph under compress.teacher=ensemble (`ensemble`, `ensemble-int8`; "
        "its rows, parity and gates are in every compress report); with it, the report gives the same student taught "
        "by the teacher alone beside the ensemble-taught one.",
    ]
    return "\n".join(lines)


def _setting(measure: str) -> str:
    """``student: ensemble, alpha 0.5 − single, alpha 0.5`` → ``alpha 0.5``; the default arms → the default."""
    arm = measure.removeprefix("student: ").split(" − ")[0]
    return arm.removeprefix("ensemble").lstrip(", ") or "compress's default student"


def _knob_lines(by: dict[str, Row]) -> list[str]:
    """What the other arms say: a softer ensemble (T=4), more weight on the soft targets (alpha 0.5), a student as
    large as its teacher."""
    mean = {m.removeprefix("student taught by: ").removesuffix(", mean"): r.value for m, r in by.items()}
    lines = []
    if "ensemble, T=4" in mean:
        lines.append(
            f"- Temperature 4 instead of {CompressConfig().temperature:g} (a softer ensemble): the ensemble-taught "
            f"student moves {mean['ensemble, T=4'] - mean['ensemble']:+.2f} points."
        )
    if (row := by.get("student: ensemble, alpha 0.5 − single, alpha 0.5")) is not None:
        lines.append(
            f"- alpha 0.5 (half the loss on the teacher's soft targets): the single-taught student moves "
            f"{mean['single, alpha 0.5'] - mean['single']:+.2f} points, the ensemble-taught one "
            f"{mean['ensemble, alpha 0.5'] - mean['ensemble']:+.2f}; ensemble − single at alpha 0.5: "
            f"{row.value:+.2f} points ({row.note})."
        )
    ensemble = next(r for m, r in by.items() if m.startswith("ensemble of the best"))
    if (row := by.get("student: ensemble, teacher-size student − single, teacher-size student")) is not None:
        lines.append(
            f"- A student as large as its teacher (starting as the best teacher): taught by the ensemble "
            f"{mean['ensemble, teacher-size student']:.2f} %, by the best teacher (itself) "
            f"{mean['single, teacher-size student']:.2f} %, the ensemble itself {ensemble.value:.2f} %; the ensemble's "
            f"gain: {row.value:+.2f} points ({row.note})."
        )
    return lines


def arms_text(arms: tuple[str, ...]) -> str:
    """``single; ensemble, T=4 (compress.temperature=4); …``: each arm with its overrides."""
    parts = []
    for arm in arms:
        overrides = ", ".join(f"{key}={value:g}" for key, value in ARMS[arm][1].items())
        parts.append(f"{arm} ({overrides})" if overrides else arm)
    return "; ".join(parts)


def run(ctx: BenchContext) -> BenchResult:
    epochs = QUICK_EPOCHS if ctx.quick else EPOCHS
    seeds = SEEDS[:1] if ctx.quick else SEEDS
    arms = QUICK_ARMS if ctx.quick else tuple(ARMS)
    job = measure(ctx, epochs, seeds, arms)
    rows = result_rows(job)
    c = base_config(ctx, epochs).compress
    trials = "; ".join(f"seed {s} " + " ".join(f"{k}={v}" for k, v in o.items()) for s, o in MEMBERS)
    setup = {
        "data": f"make_classification, {ROWS:,} rows, 20 features, 5 classes, {NOISE:.0%} of labels redrawn; "
        f"test fraction {TEST_FRACTION}",
        "sweep": f"{len(MEMBERS)} MLP teachers, {epochs} epochs, best validated checkpoint each: {trials}",
        "student": f"≤ {c.student.max_params:g} of the best teacher's parameters, epochs auto, alpha {c.alpha:g}, "
        f"temperature {c.temperature:g}, mixup {c.mixup:g}, inherit {c.inherit} (the best teacher's weights, "
        "in every arm)",
        "arms": arms_text(arms),
        "seeds": list(seeds),
    }
    return BenchResult("ensemble", TITLE, rows, interpretation(rows, job), setup, job)
