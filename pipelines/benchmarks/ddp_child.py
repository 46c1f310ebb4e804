"""One timed ``train()`` in its own process, for the DDP benchmark (Lightning re-launches it for rank 1).

``python -m pipelines.benchmarks.ddp_child OUT.json [key=value ...]``: rank 0 writes epoch times, training
examples seen, and the test metrics to ``OUT.json``.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

from pipelines.benchmarks.loop import EpochTimer, epoch_times
from pipelines.config import load_config
from pipelines.train import train


def main(out: str, overrides: list[str]) -> None:
    warnings.filterwarnings("ignore")
    cfg = load_config(None, overrides)
    timer = EpochTimer()
    result = train(cfg, callbacks=[timer])
    if not result.is_global_zero:
        return
    full, steps = epoch_times(timer.starts, timer.train_ends, timer.end)
    world = cfg.trainer.devices * cfg.trainer.num_nodes
    record = {"epoch_s": full, "train_s": steps, "steps": timer.steps, "world": world, "metrics": result.metrics}
    with open(out, "w") as handle:
        json.dump(record, handle)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main(sys.argv[1], sys.argv[2:])
