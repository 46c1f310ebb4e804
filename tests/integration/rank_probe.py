"""``python -m tests.integration.rank_probe ARGS`` is ``dlforge ARGS``, plus one file per rank for the tests.

Each process writes ``$DLFORGE_RANK_PROBE/rank<RANK>.json`` with the test metrics *its* train stage returned, so a
multi-node test can compare what every rank saw (rank 1 prints nothing by design). The files go to a folder of the
test's choosing, never into ``output_dir``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pipelines.train_stage
from pipelines.cli import main

_train_stage = pipelines.train_stage.train_stage


def _recording_train_stage(*args, **kwargs):
    stage = _train_stage(*args, **kwargs)
    result = stage.result  # the fit, with the run id the stage's run was given (None off rank 0 is fine)
    record = {
        "rank": int(os.environ.get("RANK", "0")),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "is_global_zero": result.is_global_zero,
        "run_id": result.run_id,
        "metrics": result.metrics,
    }
    folder = Path(os.environ["DLFORGE_RANK_PROBE"])
    (folder / f"rank{record['rank']}.json").write_text(json.dumps(record))
    return stage


pipelines.train_stage.train_stage = _recording_train_stage  # cmd_train imports it at call time, so it gets this one

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
