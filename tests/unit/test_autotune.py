"""Quantization that is what it says: the census of a quantized graph, honest names, and the autotuner's choice."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from pipelines import export
from pipelines.compression import autotune as tuner
from pipelines.compression.autotune import TIE, Attempt, Variant, autotune
from pipelines.compression.measure import Probe, measure_onnx
from pipelines.compression.quantization import census, quantize_onnx
from pipelines.compression.ship import _quantized
from pipelines.compression.tables import autotune_markdown
from pipelines.config import load_config


class GRUNet(nn.Module):
    """Two GRU layers and a linear head: the graph whose "INT8" file used to hold two fp32 GRU nodes."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(6, 48, num_layers=2, batch_first=True)
        self.head = nn.Linear(48, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(x)[0][:, -1])


def _mlp(outputs: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, outputs)).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, tuple[nn.Module, Path, np.ndarray]]:
    """name → (net, fp32 .onnx, inputs), exported once: an export takes seconds."""
    folder, rng = tmp_path_factory.mktemp("autotune"), np.random.default_rng(0)
    torch.manual_seed(0)
    nets = {"gru": (GRUNet().eval(), (64, 7, 6)), "mlp": (_mlp(3), (96, 12)), "reg": (_mlp(1), (96, 12))}
    out = {}
    for name, (net, shape) in nets.items():
        x = rng.standard_normal(shape).astype(np.float32)
        path = export.export_onnx(net, torch.from_numpy(x[:2]), folder / f"{name}.onnx", metadata={"family": name})
        out[name] = (net, path, x)
    return out


def _probe(net: nn.Module, x: np.ndarray, task: str, labels: np.ndarray | None = None) -> Probe:
    """Test on ``x`` itself (labels: the net's own answers, or ``labels``); calibration on it too."""
    y = export.run_torch(net, x)
    y = (y.argmax(1) if task == "classification" else y[:, 0]) if labels is None else labels
    return Probe(x, y, [x[:8]], [x[:32], x[32:64]], task)


def _cfg(tmp_path: Path, *overrides: str):
    return load_config(overrides=[f"output_dir={tmp_path}", "compress.latency_repeats=3", *overrides])


def test_census_counts_what_each_recipe_quantized(files, tmp_path):
    _, mlp, x = files["mlp"]
    fp32 = census(onnx.load(str(mlp)))
    assert not fp32.is_int8 and fp32.quantized_nodes == 0 and len(fp32.float_heavy) == 3  # three Gemm, all float
    for recipe in ("dynamic", "static"):
        q = quantize_onnx(mlp, tmp_path / f"{recipe}.onnx", recipe=recipe, calibration=[x[:32]])
        found = census(onnx.load(str(q)))
        assert found.is_int8 and found.quantized_nodes == 3 and found.quantized_initializers >= 3, recipe
    kept = quantize_onnx(mlp, tmp_path / "kept.onnx", recipe="static", calibration=[x[:32]], keep_float=["last"])
    found = census(onnx.load(str(kept)))
    assert found.is_int8 and found.quantized_nodes == 2 and len(found.kept_float) == 1  # asked for: still INT8
    assert export.read_metadata(kept)["kept_float"] == list(found.kept_float)


def test_a_gru_graph_is_not_called_int8_by_either_recipe(files, tmp_path):
    _, gru, x = files["gru"]
    for recipe in ("dynamic", "static"):
        q = quantize_onnx(gru, tmp_path / f"{recipe}.onnx", recipe=recipe, calibration=[x[:16]])
        model = onnx.load(str(q))
        found = census(model)
        assert not found.is_int8 and found.quantized_nodes >= 1, recipe  # the head is quantized, the GRU is not
        assert "GRU" in found.float_summary(model), recipe


def test_an_explicit_recipe_that_leaves_heavy_ops_float_is_named_and_held_back(files, tmp_path):
    net, gru, x = files["gru"]
    probe = _probe(net, x, "classification")
    row, path, gate = _quantized(_cfg(tmp_path), gru, "teacher", "dynamic", 1, probe, tmp_path)
    assert "not INT8" in row.model and "GRU fp32" in row.model and path.is_file()
    assert gate is not None and not gate.passed and gate.guards == ("teacher-int8",)
    assert "GRU" in gate.detail and "compress.quantization=auto" in gate.detail
    mlp_net, mlp, mx = files["mlp"]
    row, _, gate = _quantized(
        _cfg(tmp_path), mlp, "teacher", "dynamic", 1, _probe(mlp_net, mx, "classification"), tmp_path
    )
    assert row.model == "teacher INT8 (dynamic)" and gate is None


def _tune(cfg, name: str, files, tmp_path: Path, task: str = "classification", labels=None):
    net, path, x = files[name]
    probe = _probe(net, x, task, labels)
    row = measure_onnx(cfg, "fp32", "fp32", path, 1, probe, None)
    return autotune(cfg, path, row, "teacher", probe, tmp_path)


def test_autotune_ships_the_fastest_variant_that_passes_and_keeps_only_its_file(files, tmp_path):
    tuning = _tune(_cfg(tmp_path, "compress.max_int8_drop=100"), "mlp", files, tmp_path)
    attempts = tuning.attempts
    assert attempts[0].variant == "fp32" and attempts[0].speed == 1.0
    assert [a.variant for a in attempts[1:]] == [v.label for v in tuner.VARIANTS]  # nothing failed: no rescues
    assert all(a.status == "passed" and a.metric is not None and "b64_p50" in a.latency_ms for a in attempts)
    fastest = max(a.speed for a in attempts)
    assert tuning.chosen.speed >= fastest * (1 - TIE) and tuning.chosen.variant in tuning.why
    left = {p.name for p in (tmp_path / "autotune").glob("*.onnx")}
    assert left == (set() if tuning.chosen.variant == "fp32" else {Path(tuning.chosen.file).name})


def test_autotune_on_a_gru_ships_fp32_and_says_why(files, tmp_path, monkeypatch):
    monkeypatch.setattr(tuner, "VARIANTS", tuner.VARIANTS[:3])  # dynamic, static per-tensor and per-channel
    tuning = _tune(_cfg(tmp_path), "gru", files, tmp_path)
    assert [a.status for a in tuning.attempts[1:]] == ["not INT8"] * 3
    assert all("GRU in float" in a.detail for a in tuning.attempts[1:])
    assert tuning.chosen.variant == "fp32" and tuning.why.startswith("fp32: no INT8 variant")


def test_a_variant_that_fails_its_gate_is_retried_with_its_worst_nodes_in_float(files, tmp_path, monkeypatch):
    """Targets are the fp32 outputs, so fp32 has zero error and any quantization error fails a 0 % limit: every
    rescue fails too — the worst node, then the worst two (never all three) — and fp32 ships."""
    monkeypatch.setattr(tuner, "VARIANTS", tuner.VARIANTS[:1])
    net, _, x = files["reg"]
    exact = export.run_torch(net, x)[:, 0]
    tuning = _tune(_cfg(tmp_path, "compress.max_int8_drop=0"), "reg", files, tmp_path, "regression", exact)
    labels = [a.variant for a in tuning.attempts]
    assert labels[:2] == ["fp32", "dynamic per-tensor"] and len(labels) == 4
    assert all(label.endswith("fp32 (worst by qdq_loss_debug)") for label in labels[2:])
    assert [len(a.options["keep_float"]) for a in tuning.attempts[2:]] == [1, 2]
    assert all(a.status == "failed gate" for a in tuning.attempts[1:]) and tuning.chosen.variant == "fp32"
    assert not list((tmp_path / "autotune").glob("*"))  # no variant file, no ranking scratch left
    monkeypatch.setattr(tuner, "rank_nodes", lambda *args: [])  # no ranking: the end layers, blind
    tuning = _tune(_cfg(tmp_path, "compress.max_int8_drop=0"), "reg", files, tmp_path, "regression", exact)
    assert [a.variant for a in tuning.attempts[2:]] == [
        "dynamic per-tensor; last layer fp32",
        "dynamic per-tensor; first/last layer fp32",
    ]


def _outlier_mlp(x: np.ndarray) -> nn.Module:
    """An MLP fitted to a linear 3-class rule on ``x`` (confident answers: small rounding flips none), whose middle
    layer holds one weight of 100 on an input that is always 0 (a dead unit): the float net never feels it, but
    per-tensor INT8 rounds every other weight of that layer (all under 0.4) to 0 or ±1 step of 0.8."""
    net, inputs = _mlp(3).train(), torch.from_numpy(x)
    with torch.no_grad():
        net[0].weight[0].zero_()
        net[0].bias[0] = -1.0  # unit 0 of the first layer is dead after its ReLU: no gradient ever revives it
        net[2].weight[0, 0] = 100.0
    labels = (inputs @ torch.randn(12, 3, generator=torch.Generator().manual_seed(0))).argmax(1)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(inputs), labels).backward()
        optimizer.step()
    return net.eval()


def test_the_rescue_ranks_the_layer_that_quantizes_badly_first_and_keeps_it_in_float(tmp_path, monkeypatch):
    from pipelines.compression.quantization import heavy_nodes, prepare_for_quantization

    x = np.random.default_rng(1).standard_normal((256, 12)).astype(np.float32)
    net = _outlier_mlp(x)
    path = export.export_onnx(net, torch.from_numpy(x[:2]), tmp_path / "outlier.onnx", metadata={"family": "mlp"})
    middle = heavy_nodes(onnx.load(str(prepare_for_quantization(path, tmp_path))))[1]
    ranked = tuner.rank_nodes(path, Variant("static"), [x[:64], x[64:128]], tmp_path / "rank")
    assert ranked[0][0] == middle and ranked[0][1] < 10 < ranked[1][1]  # dB: the middle layer's noise, far worse
    monkeypatch.setattr(tuner, "VARIANTS", (Variant("static"),))
    probe = _probe(net, x, "classification")
    cfg = _cfg(tmp_path, "compress.max_int8_drop=1")
    tuning = autotune(cfg, path, measure_onnx(cfg, "fp32", "fp32", path, 1, probe, None), "teacher", probe, tmp_path)
    plain, rescued = tuning.attempts[1:]
    assert plain.status == "failed gate" and plain.metric < 0.8  # the float net's own answers, mostly lost
    assert rescued.status == "passed" and list(rescued.options["keep_float"]) == [middle] and rescued.metric > 0.97
    assert rescued.variant == f"static per-tensor minmax; {middle} fp32 (worst by qdq_loss_debug)"
    assert "2 heavy ops INT8" in rescued.detail


def test_the_budget_bounds_the_search(files, tmp_path):
    tuning = _tune(_cfg(tmp_path, "compress.autotune_budget_s=0.000001"), "mlp", files, tmp_path)
    assert [a.status for a in tuning.attempts[1:]] == ["skipped"] * len(tuner.VARIANTS)
    assert tuning.chosen.variant == "fp32"


def _attempt(variant: str, speed: float, size: int, status: str = "passed") -> Attempt:
    return Attempt(variant, status, "d", size, 0.9, {"b1_p50": 1.0, "b64_p50": 2.0}, speed)


def test_choice_fastest_passing_then_smallest_within_the_tie():
    attempts = [_attempt("fp32", 1.0, 100), _attempt("a", 3.0, 50, "failed gate"), _attempt("b", 1.5, 40)]
    assert tuner._choose(attempts).chosen.variant == "b"
    tied = [*attempts, _attempt("c", 1.5 * (1 - TIE / 2), 30)]
    assert tuner._choose(tied).chosen.variant == "c"  # as fast within the noise, and smaller
    slower = [_attempt("fp32", 1.0, 100), _attempt("b", 0.8, 40)]
    choice = tuner._choose(slower)
    assert choice.chosen.variant == "fp32" and "no INT8 variant was faster (best: b, 0.80×" in choice.why


def test_the_report_shows_every_attempt_and_the_winner():
    attempts = [_attempt("fp32", 1.0, 100), _attempt("static per-channel entropy", 2.0, 30)]
    attempts.append(dataclasses.replace(_attempt("dynamic per-tensor", 0, 40, "not INT8"), speed=None, metric=None))
    text = "\n".join(autotune_markdown({"teacher": tuner._choose(attempts).to_dict()}))
    assert "## Quantization autotuner — teacher" in text and "| ★ static per-channel entropy | passed |" in text
    assert "| dynamic per-tensor | not INT8 | 40 B" not in text and "| dynamic per-tensor | not INT8 |" in text
    assert "Shipped: static per-channel entropy: 2.00× fp32's speed" in text


def test_variant_labels_name_what_they_are():
    assert Variant("none").label == "fp32"
    assert (
        Variant("static", True, "entropy", ("first", "last")).label
        == "static per-channel entropy; first/last layer fp32"
    )


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_compress_auto_reports_every_variant_and_ships_the_winner(cli, tiny, tmp_path, digits_cnn_checkpoint):
    """dlforge train → dlforge compress (quantization=auto, no student) on digits with the CNN."""
    import json

    data = ["data.source=builtin:digits", "model.family=cnn"]
    out, teacher = tmp_path / "compressed", digits_cnn_checkpoint
    short = ["compress.epochs=0", "compress.latency_repeats=3", "compress.calibration_batches=2"]
    code, _, err = cli("compress", *tiny, *data, *short, f"output_dir={out}", "--teacher", str(teacher))
    assert code == 0, err
    report = json.loads((out / "compress_report.json").read_text())
    tuning = report["autotune"]["teacher"]
    chosen = tuning["attempts"][tuning["winner"]]
    assert len(tuning["attempts"]) == 1 + len(tuner.VARIANTS) and chosen["status"] == "passed"
    assert "## Quantization autotuner — teacher" in (out / "compress_report.md").read_text()
    int8 = out / "onnx" / "teacher-int8.onnx"
    assert int8.is_file() == (chosen["variant"] != "fp32") and not (out / "onnx" / "autotune").exists()
    if int8.is_file():
        assert census(onnx.load(str(int8))).is_int8 and report["champion"] == "teacher-int8"


def test_the_pick_is_in_the_compress_metrics():
    from pipelines.compression.publish import report_metrics
    from pipelines.compression.results import CompressResult

    attempts = [_attempt("fp32", 1.0, 100), _attempt("static per-tensor minmax", 1.5, 30)]
    attempts.append(Attempt("dynamic per-tensor", "not INT8", "left 2 GRU in float", 90))
    tuning = tuner._choose(attempts).to_dict()
    result = CompressResult("out", "test/acc", [], [], {}, "r.md", "r.json", None, autotune={"teacher": tuning})
    metrics = report_metrics(result)
    assert metrics["compress/autotune/teacher/speed_vs_fp32"] == 1.5
    assert metrics["compress/autotune/teacher/variants_measured"] == 2
