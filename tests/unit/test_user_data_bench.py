"""The user-data section's rows: a champion row met only by exit 0 with a champion; the student's drop and gain."""

from pipelines.benchmarks.user_data import case_rows

CASE = {
    "exit": 0,
    "wall_s": 100.0,
    "champion": "teacher-int8",
    "accuracy": {
        "teacher_fp32_pytorch": 0.90,
        "teacher_int8_onnx": 0.89,
        "student_fp32_pytorch": 0.87,
        "student_scratch_pytorch": 0.80,
    },
    "student": {"params_ratio": 0.2, "gain_over_scratch": 7.0},
    "failed_gates": [],
}


def test_a_champion_row_reports_the_shipped_artifacts_accuracy_and_the_students_drop():
    champion, drop, gain = case_rows("cnn on images", CASE)
    assert (champion.value, champion.met) == (0.89, True)
    assert round(drop.value, 6) == 3.0 and drop.met is False  # 3 points over the 2-point limit
    assert (gain.value, gain.met) == (7.0, None)


def test_no_champion_or_a_failed_command_is_not_met():
    assert case_rows("x", CASE | {"exit": 1, "champion": None})[0].met is False
    (failed,) = case_rows("x", {"exit": 2, "wall_s": 1.0, "error": "bad data"})
    assert failed.met is False and "bad data" in failed.note
