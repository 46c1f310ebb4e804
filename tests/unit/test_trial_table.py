"""The sweep on the terminal: one table redrawn in place on a TTY, one line per finished trial otherwise."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

from tune.callbacks import TrialTable


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _sweep(table: TrialTable, epochs: int = 25) -> None:
    """Two trials reporting ``epochs`` epochs each, interleaved as Ray calls back; the second one fails."""
    trials = [SimpleNamespace(trial_id=f"ab12_0000{i}", num_failures=i) for i in range(2)]
    for trial in trials:
        table.on_trial_start(0, trials, trial)
    for epoch in range(1, epochs + 1):
        for i, trial in enumerate(trials):
            result = {"training_iteration": epoch, "val/acc": 0.5 + 0.01 * epoch - 0.1 * i}
            table.on_trial_result(0, trials, trial, result)
    table.on_trial_complete(0, trials, trials[0])
    table.on_trial_error(0, trials, trials[1])
    table.on_experiment_end(trials)


def test_without_a_terminal_one_line_per_finished_trial():
    stream = io.StringIO()
    _sweep(TrialTable("val/acc", "max", 25, stream=stream))
    lines = stream.getvalue().splitlines()
    assert lines == [
        "  trial ab12_00000  done  val/acc 0.75 / best 0.75",
        "  trial ab12_00001  failed (1)  val/acc 0.65 / best 0.65",
    ]


def test_on_a_terminal_one_table_is_redrawn_in_place():
    stream = Terminal()
    table = TrialTable("val/acc", "max", 25, stream=stream, interval_s=0.0)
    _sweep(table)
    text = stream.getvalue()
    drawings = text.split("\x1b[3F")  # each redraw first moves up over the header and the two rows
    assert len(drawings) > 25  # it updated as the trials reported …
    final = [re.sub(r"\x1b\[2K", "", line) for line in drawings[-1].splitlines()]
    assert len(final) == 3 and final[0].split()[:3] == ["trial", "status", "epoch"]  # … and is still one table
    assert final[1].split() == ["ab12_00000", "done", "25/25", "0.75", "/", "0.75"]
    assert final[2].split() == ["ab12_00001", "failed", "(1)", "25/25", "0.65", "/", "0.65"]


def test_redraws_are_throttled_and_min_mode_keeps_the_lowest():
    stream = Terminal()
    table = TrialTable("val/loss", "min", 3, stream=stream, interval_s=3600)
    trial = SimpleNamespace(trial_id="t1", num_failures=0)
    table.on_trial_start(0, [trial], trial)
    for loss in (0.9, 0.4, 0.6):
        table.on_trial_result(0, [trial], trial, {"training_iteration": 1, "val/loss": loss})
    assert stream.getvalue().count("\x1b[2K") == 2  # the first drawing only: header and one row
    table.on_trial_complete(0, [trial], trial)  # after 1 of 3 epochs: a scheduler stopped it
    assert table.table_lines()[1].split() == ["t1", "stopped", "1/3", "0.6", "/", "0.4"]
