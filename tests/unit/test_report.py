"""The pipeline report renders every stage's result, in markdown and as one self-contained HTML page."""

from pipelines.config import Config
from pipelines.report import write_reports


def _stages(tmp_path):
    png = tmp_path / "train" / "review" / "confusion_matrix.png"
    png.parent.mkdir(parents=True)
    png.write_bytes(b"\x89PNG\r\n\x1a\n")  # the report embeds bytes as they are; it never decodes them
    row = {
        "model": "teacher INT8 (static)",
        "params": 10,
        "size_bytes": 2048,
        "metric": 0.98,
        "latency_ms": {"b1_p50": 0.1, "b1_p95": 0.2, "b64_p50": 1.0, "b64_p95": 2.0},
        "parity_max_abs_diff": None,
    }
    trial = {"trial_id": "t1", "status": "stopped", "epochs": 3, "best": 0.91, "params": {"optim.lr": 0.01}}
    return {
        "sweep": {"metric": "val/acc", "best_metric": 0.91, "best_overrides": {"optim.lr": 0.01}, "trials": [trial]},
        "train": {"metrics": {"test/acc": 0.97}, "config": {"output_dir": str(tmp_path / "train")}},
        "compress": {"rows": [row], "gates": [{"name": "teacher INT8 drop", "passed": True, "detail": "0.0 points"}]},
        "promote": {
            "name": "x-cnn",
            "champion": "2",
            "versions": [{"version": "2", "aliases": ["champion"], "gates": "passed", "metric": 0.97, "run_id": "r"}],
        },
    }


def test_report_has_every_section_and_inlines_images(tmp_path):
    md, html = write_reports(Config(), _stages(tmp_path), tmp_path)
    text = md.read_text()
    for needle in ("## Sweep", "| t1 | stopped | 3 | 0.91 | 0.01 |", "test/acc", "teacher INT8 (static)", "PASS"):
        assert needle in text
    assert "Champion: x-cnn version 2." in text
    assert "](train/review/confusion_matrix.png)" in text
    page = html.read_text()
    assert "data:image/png;base64," in page and "<table>" in page


def test_report_without_tracking_says_nothing_was_registered(tmp_path):
    stages = _stages(tmp_path)
    del stages["sweep"], stages["promote"]
    md, _ = write_reports(Config(), stages, tmp_path)
    assert "Tracking is off: nothing was registered." in md.read_text()
