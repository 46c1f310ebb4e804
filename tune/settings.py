"""The sweep's settings, declared once: the config's ``tune`` section, and the job a sweep is started with.

:class:`TuneConfig` is the ``tune.*`` section of dlforge's config (``pipelines.config`` uses it as it is), so a new
tune option is one field here. Each field's ``metadata`` holds the range the config parser checks it against
(``ge``/``gt``/``le``). :class:`SweepJob` adds only what a sweep resolves when it starts — the metric and mode found
by probing training, absolute folders, the epoch budget, the experiment's name and the seed — never a copy of a
config field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal


def _range(*, ge: float | None = None, gt: float | None = None, le: float | None = None) -> dict[str, Any]:
    return {"ge": ge, "gt": gt, "le": le}


# Dotted config key → one distribution: {loguniform|uniform: [low, high]}, {randint: [low, high)} (high excluded,
# as in Ray), {choice: [values]} or {grid: [values]}. Setting tune.space replaces this default as a whole.
DEFAULT_SPACE: dict[str, Any] = {
    "optim.lr": {"loguniform": [1e-4, 1e-2]},
    "optim.weight_decay": {"loguniform": [1e-6, 1e-2]},
    "optim.l1": {"choice": [0.0, 1e-6, 1e-5]},  # 0 included: L1 off is a fair candidate
    "model.dropout": {"uniform": [0.0, 0.5]},
    "data.batch_size": {"choice": [32, 64, 128]},
}


@dataclass(frozen=True)
class TrialResourcesConfig:
    """What one trial reserves (split evenly between its workers when ``workers_per_trial`` > 1)."""

    cpu: float = field(default=1.0, metadata=_range(gt=0))  # Ray refuses a trial asking for 0 CPUs
    gpu: float = field(default=0.0, metadata=_range(ge=0))  # fractions share a GPU between trials


@dataclass(frozen=True)
class TuneConfig:
    """The ``tune.*`` config section: the search space, search algorithm, scheduler, budgets and resources."""

    enabled: bool = True  # `dlforge run` sweeps first unless false (or --no-sweep); tune always, train never
    space: dict[str, Any] = field(default_factory=lambda: {k: dict(v) for k, v in DEFAULT_SPACE.items()})
    num_samples: int = field(default=8, metadata=_range(ge=1))  # trials (search=grid: every combination once)
    max_concurrent: int = field(default=0, metadata=_range(ge=0))  # 0 = as many as the resources allow
    metric: str = "auto"  # auto = the checkpoint monitor (trainer.monitor)
    mode: Literal["auto", "min", "max"] = "auto"
    search: Literal["random", "grid", "optuna"] = "random"
    scheduler: Literal["fifo", "asha", "hyperband", "median", "pbt"] = "asha"
    grace_period: int = field(default=1, metadata=_range(ge=1))  # epochs before asha/median may stop a trial
    reduction_factor: int = field(default=4, metadata=_range(ge=2))  # asha/hyperband keep the top 1/this per rung
    perturbation_interval: int = field(default=2, metadata=_range(ge=1))  # pbt: epochs between exploits
    time_budget_s: float = field(default=0.0, metadata=_range(ge=0))  # whole sweep; 0 = no limit
    trial_timeout_s: float = field(default=0.0, metadata=_range(ge=0))  # one trial; 0 = no limit
    resources_per_trial: TrialResourcesConfig = field(default_factory=TrialResourcesConfig)
    workers_per_trial: int = field(default=1, metadata=_range(ge=1))  # >1: DDP over Ray Train workers
    ray_address: str | None = None  # an existing cluster (else RAY_ADDRESS, else a local Ray)
    max_failures: int = field(default=0, metadata=_range(ge=0))  # retries of a crashed trial
    storage_path: str | None = None  # Ray results and trial checkpoints; default <output_dir>/tune
    # seed the sweep with an earlier one's best configurations: its sweep run id or its sweep_results.csv path
    # (values outside this space are dropped, one line each); the first trials evaluate them
    warm_start: str | None = None


@dataclass(frozen=True)
class SweepJob:
    """One sweep as ``tune.sweep.run_sweep`` runs it: the ``tune`` section plus what was resolved at its start.

    Raises:
        ValueError: ``storage_path`` or ``trials_dir`` is not absolute (trials change directory).
    """

    tune: TuneConfig
    metric: str  # the resolved tune.metric
    mode: str  # "min" | "max": the resolved tune.mode
    storage_path: str  # absolute: tune.storage_path, or the default under the output folder
    trials_dir: str  # <trials_dir>/<trial_id>/ is each trial's own folder, stable across restarts
    max_epochs: int  # the schedulers' max_t: one report per epoch
    name: str = "sweep"  # the Ray experiment: <storage_path>/<name>
    seed: int = 0
    verbose: bool = True  # the trials table on a terminal (one line per finished trial otherwise)
    points: tuple[dict[str, Any], ...] = ()  # configurations to evaluate first (tune.warm_start's, resolved)

    def __post_init__(self) -> None:
        for name in ("storage_path", "trials_dir"):
            if not os.path.isabs(getattr(self, name)):
                raise ValueError(f"{name} must be absolute (trials change directory): {getattr(self, name)}")
