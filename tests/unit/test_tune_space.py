"""tune.space → dimensions, and every bad sweep input rejected before Ray starts (one line, exit 2)."""

import os
import sys

import pytest

from dl_lightning.errors import InputError
from pipelines.config import Config, ConfigError, all_keys, load_config
from pipelines.sweep import plan_sweep, trial_config
from tune.settings import DEFAULT_SPACE
from tune.space import Dimension, check_search, grid_size, mutable_keys, parse_space

KEYS = all_keys()


def test_default_space_covers_lr_batch_size_and_regularization():
    space = parse_space(Config().tune.space, KEYS)
    assert set(space) == {"optim.lr", "optim.weight_decay", "optim.l1", "model.dropout", "data.batch_size"}
    assert space["optim.lr"] == Dimension("optim.lr", "loguniform", (1e-4, 1e-2))
    assert space["data.batch_size"].values == (32, 64, 128)
    assert Config().tune.space == DEFAULT_SPACE  # a copy, equal to the documented default


@pytest.mark.parametrize(
    "raw",
    [
        {"optim.lr": {"loguniform": [1e-4, 1e-2]}},
        {"optim": {"lr": {"loguniform": [1e-4, 1e-2]}}},  # nested, as a dotted override unflattens it
        {"optim.lr": {"loguniform": ["1e-4", "1e-2"]}},  # YAML 1.1 reads 1e-4 as a string
    ],
)
def test_dotted_and_nested_keys_name_the_same_dimension(raw):
    assert parse_space(raw, KEYS) == {"optim.lr": Dimension("optim.lr", "loguniform", (1e-4, 1e-2))}


def test_every_distribution_parses():
    raw = {
        "optim.lr": {"loguniform": [1e-4, 1e-1]},
        "model.dropout": {"uniform": [0, 0.5]},
        "model.cnn.hidden": {"randint": [16, 129]},
        "optim.name": {"choice": ["adam", "sgd"]},
        "model.cnn.channels": {"grid": [[16, 32], [32, 64]]},
    }
    space = parse_space(raw, KEYS)
    assert [d.kind for d in space.values()] == ["loguniform", "uniform", "randint", "choice", "grid"]
    assert space["model.cnn.hidden"].candidates() == (16, 128)  # randint excludes high, as in Ray
    assert grid_size(space) == 4


def test_override_on_the_command_line_sets_the_space():
    cfg = load_config(None, ["tune.space.optim.lr={uniform: [0.001, 0.01]}"])
    assert parse_space(cfg.tune.space, KEYS) == {"optim.lr": Dimension("optim.lr", "uniform", (0.001, 0.01))}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"optim.lrr": {"loguniform": [1e-4, 1e-2]}}, r"'optim.lrr' is not a config key .*did you mean 'optim.lr'"),
        ({"optim": {"lrr": {"uniform": [0, 1]}}}, r"'optim.lrr' is not a config key"),
        ({"optim.lr": {"logunifrom": [1e-4, 1e-2]}}, r"unknown distribution 'logunifrom'.*did you mean 'loguniform'"),
        ({"optim.lr": {"loguniform": [0, 1e-2]}}, r"loguniform needs 0 < low"),
        ({"optim.lr": {"uniform": [0.1, 0.01]}}, r"uniform needs low < high"),
        ({"optim.lr": {"uniform": [0.1]}}, r"uniform takes \[low, high\]"),
        ({"optim.lr": {"uniform": ["a", 1]}}, r"bounds must be finite numbers"),
        ({"model.cnn.hidden": {"randint": [1.5, 4]}}, r"randint bounds must be integers"),
        ({"data.batch_size": {"choice": []}}, r"choice takes a non-empty list"),
        ({"data.batch_size": {"choice": [32, 32]}}, r"lists a value twice"),
        ({"optim.lr": 0.1}, r"must be one distribution"),
        ({"optim.lr": {"uniform": [0, 1], "choice": [1]}}, r"must be one distribution"),
        ({}, r"tune.space is empty"),
    ],
)
def test_bad_space_is_one_line_naming_the_problem(raw, message):
    with pytest.raises(InputError, match=message) as info:
        parse_space(raw, KEYS)
    assert "\n" not in str(info.value)


def test_search_and_scheduler_combinations():
    ranged = parse_space({"optim.lr": {"loguniform": [1e-4, 1e-2]}}, KEYS)
    with pytest.raises(InputError, match="search=grid needs every dimension to be grid or choice"):
        check_search(ranged, "grid", "fifo")
    grid = parse_space({"data.batch_size": {"grid": [32, 64]}}, KEYS)
    with pytest.raises(InputError, match="optuna cannot take grid"):
        check_search(grid, "optuna", "asha")
    with pytest.raises(InputError, match="pbt explores by itself"):
        check_search(ranged, "optuna", "pbt")
    arch = parse_space({"model.cnn.hidden": {"choice": [16, 32]}}, KEYS)
    with pytest.raises(InputError, match="pbt needs a dimension it can mutate"):
        check_search(arch, "random", "pbt")
    assert mutable_keys(parse_space(Config().tune.space, KEYS)) == list(DEFAULT_SPACE)


def test_to_ray_makes_ray_domains():
    pytest.importorskip("ray")
    from ray.tune.search.sample import Categorical, Float, Integer

    from tune.space import pbt_mutations, to_ray

    space = parse_space(
        {
            "optim.lr": {"loguniform": [1e-4, 1e-2]},
            "model.cnn.hidden": {"randint": [8, 16]},
            "data.batch_size": {"choice": [32, 64]},
        },
        KEYS,
    )
    domains = to_ray(space, "random")
    assert isinstance(domains["optim.lr"], Float) and isinstance(domains["model.cnn.hidden"], Integer)
    assert isinstance(domains["data.batch_size"], Categorical)
    assert to_ray(space, "grid")["data.batch_size"] == {"grid_search": [32, 64]}
    assert set(pbt_mutations(space)) == {"optim.lr", "data.batch_size"}  # model.cnn.hidden: not mid-training


def test_tune_config_fields_parse_and_validate():
    cfg = load_config(None, ["tune.resources_per_trial.cpu=0.5", "tune.scheduler=pbt", "tune.workers_per_trial=2"])
    assert (cfg.tune.resources_per_trial.cpu, cfg.tune.scheduler, cfg.tune.workers_per_trial) == (0.5, "pbt", 2)
    with pytest.raises(ConfigError, match="tune.resources_per_trial.cpu must be > 0"):
        load_config(None, ["tune.resources_per_trial.cpu=0"])
    with pytest.raises(ConfigError, match="tune.scheduler must be one of"):
        load_config(None, ["tune.scheduler=bohb"])
    with pytest.raises(ConfigError, match="tune.space must be a mapping"):
        load_config(None, ["tune.space=3"])
    with pytest.raises(ConfigError, match="unknown config key 'tune.num_sample'"):
        load_config(None, ["tune.num_sample=3"])


def test_space_is_one_leaf_of_the_config_keys():
    assert "tune.space" in KEYS and not any(k.startswith("tune.space.") for k in KEYS)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["tune.space={optim.lrr: {loguniform: [1e-4, 1e-2]}}"], r"did you mean 'optim.lr'"),
        (["tune.space={model.dropout: {uniform: [0, 1.5]}}"], r"model.dropout must be ≤ 0.9"),
        (["tune.space={data.batch_size: {choice: [a, 64]}}"], r"data.batch_size must be an integer"),
        (["tune.space={tracking.uri: {choice: [a, b]}}"], r"'tracking.uri' is not a config key that can be swept"),
        (
            ["tune.metric=val/accuracy"],
            r"tune.metric=val/accuracy is never logged by training; choose one of .*val/acc",
        ),
        (["model.family=gan"], r"model.family=gan has no default metric; set tune.metric"),
        (["tune.scheduler=pbt", "tune.workers_per_trial=2"], r"pbt needs tune.workers_per_trial=1"),
        (["tune.storage_path=s3://bucket/sweeps"], r"object stores are not supported yet"),
    ],
)
def test_plan_rejects_bad_input_before_ray(overrides, message, tiny):
    with pytest.raises(InputError, match=message) as info:
        plan_sweep(load_config(None, [*tiny, *overrides]))
    assert "\n" not in str(info.value)
    assert "ray" not in sys.modules or not __import__("ray").is_initialized()


def test_plan_resolves_metric_and_mode(tiny):
    plan = plan_sweep(load_config(None, tiny))
    assert (plan.metric, plan.mode) == ("val/acc", "max")
    plan = plan_sweep(load_config(None, [*tiny, "tune.metric=val/loss"]))
    assert (plan.metric, plan.mode) == ("val/loss", "min")


def test_cli_bad_space_exits_2_with_one_line(cli, tiny):
    code, out, err = cli("tune", *tiny, "tune.space={optim.lr: {gaussian: [0, 1]}}")
    assert code == 2
    assert err.strip().count("\n") == 0 and "unknown distribution 'gaussian'" in err


def test_trial_config_is_one_process_in_its_own_folder(tmp_path):
    cfg = load_config(None, ["trainer.devices=2", "trainer.strategy=ddp", "tune.resources_per_trial.cpu=2"])
    trial = trial_config(cfg, {"optim.lr": 0.01, "model.cnn.channels": (8, 16)}, str(tmp_path / "t1"))
    assert (trial.optim.lr, trial.model.cnn.channels) == (0.01, (8, 16))
    assert (trial.trainer.devices, trial.trainer.strategy, trial.trainer.threads) == (1, "auto", 2)
    assert trial.output_dir == str(tmp_path / "t1" / "train") and trial.tune.enabled is False


def test_asha_runs_to_the_full_epoch_budget_with_the_configured_reduction_factor(tmp_path):
    from pipelines.sweep import SweepPlan, sweep_job
    from tune.sweep import _scheduler

    cfg = load_config(None, ["trainer.max_epochs=25", "tune.grace_period=3", f"output_dir={tmp_path}"])
    assert cfg.tune.reduction_factor == 4  # Ray's own default
    space = parse_space(cfg.tune.space, KEYS)
    asha = _scheduler(space, sweep_job(cfg, SweepPlan(space, "val/acc", "max")))
    assert (asha._max_t, asha._reduction_factor, [milestone for milestone, _ in asha._brackets[0]._rungs]) == (
        25,
        4,
        [12, 3],  # rungs at 3 and 12 epochs; 48 would pass the budget
    )
    with pytest.raises(ConfigError, match="tune.reduction_factor"):
        load_config(None, ["tune.reduction_factor=1"])


def test_trial_clock_tells_start_up_from_hand_offs():
    from tune.sweep import TrialClock

    clock = TrialClock()
    clock.fit_started = 100.0
    clock.started = {"a": 110.0, "b": 111.0, "c": 120.5, "d": 121.2}  # a, b wait on start-up; c, d on a free slot
    clock.ended = {"a": 120.0, "b": 121.0, "c": 130.0, "d": 131.0}
    assert clock.startup_s() == 10.0
    assert clock.handoff_s(concurrency=2) == pytest.approx(0.35)  # (0.5 + 0.2) / 2
    assert TrialClock().handoff_s(concurrency=2) is None


def test_trials_ask_for_no_runtime_environment_only_while_a_local_sweep_runs(monkeypatch):
    """Ray gives its prestarted worker processes only to work without a runtime environment; Tune's own default
    (PL_DISABLE_FORK) comes back once the sweep is over."""
    from ray.tune.execution.class_cache import ENV_VARS_TO_PROPAGATE, _ActorClassCache
    from ray.tune.trainable import Trainable

    from tune.sweep import trials_in_prestarted_workers

    for name in ENV_VARS_TO_PROPAGATE:  # forwarded from the driver when set: each would be an environment
        monkeypatch.delenv(name, raising=False)

    class Probe(Trainable):
        pass

    with trials_in_prestarted_workers():
        inside = _ActorClassCache().get(Probe)._default_options.get("runtime_env")
    outside = _ActorClassCache().get(Probe)._default_options.get("runtime_env")
    assert not inside
    assert outside["env_vars"] == {"PL_DISABLE_FORK": "1"}


def test_a_prestarted_worker_announces_itself_once_it_can_take_work(tmp_path, monkeypatch):
    from tune import prestart

    monkeypatch.setenv(prestart.PRESTART_DIR_ENV, str(tmp_path))
    prestart.announce()
    assert [p.name for p in tmp_path.iterdir()] == [str(os.getpid())]
    monkeypatch.setenv(prestart.PRESTART_DIR_ENV, str(tmp_path / "gone"))  # the driver has stopped waiting
    prestart.announce()  # no error


def test_trial_processes_preload_the_trial_functions_module_and_the_trainables():
    from pipelines.sweep import TrainingTrial
    from tune.sweep import trial_modules

    trial = TrainingTrial(Config(), "val/acc", None, "/tmp")
    assert trial_modules(trial) == ("pipelines.sweep", "tune.sweep")
    assert trial_modules(test_trial_config_is_one_process_in_its_own_folder) == (__name__, "tune.sweep")
