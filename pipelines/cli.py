"""``dlforge`` — the command line: the one place that reads argv, files and environment into a Config."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import pickle
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dl_lightning.errors import InputError, clip
from pipelines.benchmarks.cli import BENCH_FLAGS, BENCH_HELP, cmd_bench
from pipelines.config import Config, dump_yaml, load_config
from pipelines.outputs import check_writable, write_json_atomic
from pipelines.processes import job_scope, lock_output_dir

EXIT_USAGE = 2
EXIT_SIGTERM = 143  # 128 + SIGTERM, what a shell and SLURM report for a preempted process
LOST_RANK_FIX = "see that rank's log for why it died, then rerun with --resume auto to continue from last.ckpt"
AFTER_SIGTERM = {  # what each command can continue from: only train and tune have --resume
    "train": "last.ckpt keeps the state — rerun with --resume auto",
    "run": "rerun the same command: finished stages are skipped and training continues from last.ckpt",
    "tune": "finished trials are kept — continue with dlforge tune --resume <output_dir>/tune/sweep-<time>",
    "compress": "nothing was registered — rerun the same dlforge compress command (it starts over)",
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dlforge`` console script and ``python -m pipelines``.

    Called as the program (``argv`` None), a command that returns ends the process with its exit code as soon as
    every exit handler has run (``_exit_after_handlers``); a caller in the same process just gets the code.
    """
    if argv is not None:
        return _main(argv)
    exit_code: list[int] = []
    _exit_after_handlers(exit_code)
    exit_code.append(_main(None))
    return exit_code[0]


def _exit_after_handlers(exit_code: list[int]) -> None:
    """Once the interpreter has joined its threads and run every exit handler registered after this one (LIFO:
    uploads, MLflow, Ray, multiprocessing), end the process with ``exit_code[0]`` instead of tearing it down.

    Why: freeing torch, Lightning and MLflow's modules object by object took 1.5–3 s of CPU per job, after the job
    was done and every file written. The only handler registered before this one is ``logging.shutdown``: it is
    called here. A command that raised leaves ``exit_code`` empty and the interpreter ends as usual.
    """
    import atexit
    import contextlib

    def end() -> None:
        if not exit_code:
            return
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe: what is lost is lost either way
                stream.flush()
        os._exit(exit_code[0])

    atexit.register(end)


def _main(argv: list[str] | None) -> int:
    parser = _parser()
    # Overrides may come after flags (`run CONFIG --quick seed=1`): collect the positional leftovers too.
    args, extra = parser.parse_known_args(argv)
    unknown = [item for item in extra if item.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.items = [*getattr(args, "items", []), *extra]
    _quiet_libraries(args.command)
    try:
        with job_scope():  # dies with a dlforge parent; its children die with it; its output_dir locks end with it
            return args.handler(args)
    except InputError as exc:
        print(f"dlforge: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("dlforge: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:
        if not _preempted(exc):
            raise
        print(f"dlforge: stopped by SIGTERM; {AFTER_SIGTERM.get(args.command, 'rerun it')}", file=sys.stderr)
        return EXIT_SIGTERM
    except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) refused a file: never unpickle code
        from pipelines.guards import unpickling_reason

        reason = unpickling_reason(exc)
        print(f"dlforge: error: refusing a checkpoint that is not plain tensors and values ({reason})", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        if _lost_rank(exc):  # one line, not the 54-line gloo/NCCL traceback of the rank that noticed
            cause = clip((str(exc).strip().splitlines() or [type(exc).__name__])[-1], 200)
            print(f"dlforge: error: a DDP process was lost ({cause}); {LOST_RANK_FIX}", file=sys.stderr)
            return 1
        if not isinstance(getattr(exc, "exit_code", None), int):
            raise
        print(f"dlforge: error: {exc}", file=sys.stderr)  # valid input, failed job (training diverged): exit 1
        return exc.exit_code


def _lost_rank(exc: BaseException) -> bool:
    """torch.distributed's errors when a peer process died (by name: predict never imports torch)."""
    if type(exc).__name__ in ("DistBackendError", "DistNetworkError", "DistStoreError"):
        return True
    return isinstance(exc, RuntimeError) and any(
        word in str(exc) for word in ("Connection closed by peer", "Connection reset by peer", "[gloo", "NCCL error")
    )


def _preempted(exc: SystemExit) -> bool:
    """Lightning's SIGTERMException, or any exit after a SIGTERM (Ray's ``SystemExit(1)`` for a signal that came
    during its wait); both modules are loaded whenever either can have happened."""
    exceptions = sys.modules.get("lightning.pytorch.utilities.exceptions")
    guards = sys.modules.get("pipelines.guards")
    if guards is not None and guards.sigterm_received():
        return True
    return exceptions is not None and isinstance(exc, exceptions.SIGTERMException)


DESCRIPTION = (
    "Train, tune, compress and ship PyTorch models, with every run tracked in MLflow. "
    "Each command takes an optional CONFIG.yaml and key=value overrides (see them resolved with dlforge show)."
)
EPILOG = "Start with dlforge run --quick; a command's options: dlforge COMMAND --help."
# One line per command in `dlforge --help` (each command's own --help has the full sentence).
HEADLINES = {
    "run": "the main job: sweep, train, compress, gate, ship the champion",
    "train": "train one model family on a dataset (one process or DDP)",
    "tune": "sweep hyperparameters with Ray Tune and write the best config",
    "compress": "distill, ONNX-export, INT8-quantize and gate a trained model",
    "promote": "move champion to a registered version or a job's best artifact",
    "predict": "predict with an ONNX or registered model (ONNX Runtime only)",
    "ui": "serve the MLflow dashboard of the tracking store",
    "show": "print the resolved config",
    "bench": "run the benchmarks and write their tables",
}


def _parser() -> argparse.ArgumentParser:
    from pipelines.version import dlforge_version

    parser = argparse.ArgumentParser(prog="dlforge", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"dlforge {dlforge_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in sorted(COMMANDS, key=lambda n: list(HEADLINES).index(n) if n in HEADLINES else len(HEADLINES)):
        handler, help_text, extra = COMMANDS[name]
        sub = commands.add_parser(name, help=HEADLINES.get(name, help_text), description=help_text)
        sub.add_argument("items", nargs="*", metavar="[CONFIG.yaml] [key=value ...]")
        for flag, options in extra.items():
            sub.add_argument(flag, **options)
        sub.set_defaults(handler=handler)
    return parser


def config_from(args: argparse.Namespace, preset: dict[str, Any] | None = None) -> Config:
    """The optional YAML file (first item without ``=``), then ``preset``, then the ``key=value`` overrides."""
    files = [item for item in args.items if "=" not in item]
    if len(files) > 1:
        raise InputError(f"expected one config file, got {files}; pass one YAML file and key=value overrides")
    return load_config(files[0] if files else None, [item for item in args.items if "=" in item], preset)


def write_summary(cfg: Config, command: str, started: float, **fields: Any) -> Path:
    """``<output_dir>/summary.json``: command, resolved config, metrics, paths, wall time, run id, extras.

    Credentials in URIs and secret-looking values are redacted in ``argv`` and ``config``.
    """
    from pipelines.tracking.store import redact_argv, redacted_config

    summary = {
        "command": command,
        "argv": redact_argv(sys.argv),  # tracking.uri=http://user:password@… must not land in a file
        "config": redacted_config(cfg),
        **fields,
        "wall_time_s": round(time.perf_counter() - started, 3),
    }
    return write_json_atomic(Path(cfg.output_dir) / "summary.json", summary)


def cmd_show(args: argparse.Namespace) -> int:
    print(dump_yaml(config_from(args)), end="")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pipelines import finetune, tracking
    from pipelines.preflight import check_data
    from pipelines.stage_results import Upstream
    from pipelines.train import check_resources
    from pipelines.train_stage import train_stage

    started = time.perf_counter()
    cfg = config_from(args)
    check_writable(cfg.output_dir)
    splits = check_data(cfg)  # bad data is refused before the lock, the run or the store exist
    lock_output_dir(cfg.output_dir)
    check_resources(cfg)
    if args.parent_run_id is None and (unused := _unused_tune_keys(cfg)):  # a pipeline's stage config holds its sweep's
        print(f"dlforge: {', '.join(unused)} unused: dlforge train never sweeps (dlforge tune or run does)", flush=True)
    resume = _resume_path(cfg, args.resume)
    stage = train_stage(cfg, Upstream(parent_run_id=args.parent_run_id), resume=resume, splits=splits)
    result, logged = stage.result, stage.logged
    if not result.is_global_zero:
        return 0
    paths = {"best_checkpoint": result.best_checkpoint, "last_checkpoint": result.last_checkpoint}
    paths |= _review_paths(cfg)  # review plots and reports (tracking on), GAN samples: in paths like every file
    summary = write_summary(
        cfg,
        "train",
        started,
        metrics=result.metrics,
        paths=paths,
        mlflow_run_id=result.run_id,
        tracking=tracking.summary_fields(cfg, logged),
        data=result.data_brief(),
        init_from=result.extra.get("init_from"),
    )
    version = logged.model_version and f"{tracking.registered_model_name(cfg)} version {logged.model_version}"
    shown = {k: v for k, v in paths.items() if k not in ("plots", "review_reports")}  # lists: in summary.json
    lineage = finetune.summary_line(result.extra)  # where the starting weights came from, when model.init_from
    _print_result(result.metrics, {**shown, "registered": version, "init_from": lineage}, summary)
    if args.parent_run_id is None:  # under dlforge run, the pipeline prints its own run
        _print_run_link(cfg, result.run_id, args.items)
    return 0


def _review_paths(cfg: Config) -> dict[str, Any]:
    from pipelines.run import review_paths

    return review_paths(Path(cfg.output_dir).absolute())


def _unused_tune_keys(cfg: Config) -> list[str]:
    from pipelines.run import unused_tune_keys

    return unused_tune_keys(cfg)


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines import run
    from pipelines.guards import sigterm_exits
    from pipelines.preflight import check_data, check_warm_start
    from pipelines.train import check_resources

    started = time.perf_counter()
    cfg = config_from(args, preset=run.quick_overrides() if args.quick else None)
    cfg = cfg.with_overrides({"tune.enabled": False}) if args.no_sweep else cfg
    check_writable(cfg.output_dir)
    check_data(cfg)  # bad data: exit 2 before pipeline_state.json, a stage folder or a run exist
    if cfg.tune.enabled:
        check_warm_start(cfg)  # a tune.warm_start that names nothing: exit 2 now, not once the sweep starts
    lock_output_dir(cfg.output_dir)
    check_resources(cfg)
    run.check_pipeline(cfg)
    if not cfg.tune.enabled and (unused := run.unused_tune_keys(cfg)):
        print(f"dlforge: {', '.join(unused)} unused: the sweep is off (tune.enabled=false or --no-sweep)", flush=True)
    with sigterm_exits():  # SIGTERM outside a fit (sweep, compress, waiting on the train child) closes runs KILLED
        result = run.run_pipeline(cfg, force=args.force)
    compressed, sweep = result.stages.compress, result.stages.sweep
    champion = run.champion_of(result, cfg.tracking.enabled)
    summary = write_summary(
        cfg,
        "run",
        started,
        metrics=result.stages.train.result.metrics,
        champion=champion,
        registry=result.champion.to_dict() if result.champion else None,
        gates=compressed.to_dict()["gates"],
        passed=compressed.passed,
        skipped_stages=result.skipped,
        importance=sweep.importance if sweep else {},
        stage_seconds=result.timings,
        paths=run.pipeline_paths(result),
        models=run.registered_models(result),
        mlflow_run_id=result.run_id,
    )
    _print_pipeline(cfg, result, summary, args.items)
    failed = [dataclasses.asdict(g) for g in compressed.failed]
    _print_failed_gates(failed, champion)
    return run.exit_code(champion is not None, failed, strict=args.strict)


def _print_failed_gates(failed: list[dict[str, Any]], champion: str | None) -> None:
    for gate in failed:
        print(f"dlforge: gate failed: {gate['name']} ({gate['detail']})", file=sys.stderr)
    if champion is None:
        print("dlforge: no artifact passed its own gates; nothing registered", file=sys.stderr)


def _print_pipeline(cfg: Config, result: Any, summary: Path, items: list[str]) -> None:
    promoted, chosen = result.champion, result.stages.compress.champion
    if promoted and promoted.champion:
        print(f"  champion           {promoted.name} version {promoted.champion} ({promoted.model})")
    elif cfg.tracking.enabled:
        print("  champion           none: no artifact has passed its own gates")
    elif chosen:
        print(f"  champion           {chosen} (tracking off: not registered)")
    _print_result(result.stages.train.result.metrics, {"report": result.report_html}, summary)
    _print_run_link(cfg, result.run_id, items)


def _print_run_link(cfg: Config, run_id: str | None, items: list[str]) -> None:
    """The job's MLflow run id, its page and its experiment's runs table (in the headline columns once a pipeline
    set them); for a local store, the ``dlforge ui`` command (the job's config file and ``tracking.*`` overrides,
    ``items``) that serves them."""
    if run_id is None:  # tracking off, or a rank other than 0
        return
    from pipelines import tracking

    url = tracking.run_url(cfg, run_id)
    if url.startswith(tracking.LOCAL_DASHBOARD + "/"):  # a local store: shown once `dlforge ui` serves it
        shown = tracking.redact_argv(items)
        extra = " ".join(a for a in shown if a.endswith((".yaml", ".yml")) or a.startswith("tracking."))
        url += f"  (serve it: dlforge ui {extra}".rstrip() + ")"
    print(f"  {'mlflow_run':<18} {run_id}\n  {'dashboard':<18} {url}", flush=True)
    print(f"  {'runs_table':<18} {tracking.runs_table_url(cfg, run_id)}", flush=True)


def cmd_tune(args: argparse.Namespace) -> int:
    from pipelines.guards import sigterm_exits
    from pipelines.preflight import check_data, check_warm_start
    from pipelines.run import sweep_paths
    from pipelines.sweep import format_table, load_sweep_config, sweep
    from pipelines.train import check_resources

    started = time.perf_counter()
    if args.resume and args.items:
        raise InputError("--resume continues a sweep with its saved config; drop the config file and overrides")
    cfg = load_sweep_config(args.resume) if args.resume else config_from(args)
    check_writable(cfg.output_dir)
    check_data(cfg)  # before the lock, Ray and the sweep's run
    if not args.resume:  # a resumed sweep keeps its first trials' points
        check_warm_start(cfg)
    lock_output_dir(cfg.output_dir)
    check_resources(cfg)  # before Ray starts
    with sigterm_exits():  # exit 143 with the sweep's runs closed KILLED, not Ray's abort (134)
        result = sweep(cfg, resume=args.resume)
    print(format_table(result))
    best = {"metric": result.metric, "mode": result.mode, "value": result.best_metric, "trial": result.best_trial}
    summary = write_summary(
        cfg,
        "tune",
        started,
        best=best,
        best_overrides=result.best_overrides,
        best_config=result.best_config,
        num_trials=len(result.trials),
        stopped_early=result.stopped_early,
        errored=result.errored,
        trials=result.trials,
        importance=result.importance,
        paths=sweep_paths(result),
        timing=result.timing,
        mlflow_run_id=result.run_id,
    )
    paths = {"best_config": result.best_config, "results": result.results_csv, "resume_with": result.experiment_path}
    _print_result(
        {f"best {result.metric}": result.best_metric} if result.best_metric is not None else {}, paths, summary
    )
    _print_run_link(cfg, result.run_id, args.items)
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from pipelines.tracking.ui import serve_ui

    return serve_ui(config_from(args), host=args.host, port=args.port)


def _resume_path(cfg: Config, resume: str | None) -> str | None:
    """``--resume auto`` continues from ``checkpoints/last.ckpt`` or a SLURM requeue save, the newer, if any."""
    if resume is None:
        return None
    if resume == "auto":
        from pipelines.guards import newest_checkpoint

        path = newest_checkpoint(Path(cfg.output_dir) / "checkpoints", cfg.output_dir) or Path("")
    else:
        path = Path(resume)
    if path.is_file():
        return str(path.absolute())
    if resume == "auto":
        return None
    raise InputError(f"checkpoint {resume!r} not found; pass an existing .ckpt file or --resume auto")


def _print_result(metrics: dict[str, float], paths: dict[str, Any], summary: Path) -> None:
    for name, value in sorted(metrics.items()):
        print(f"  {name:<18} {value:.4f}")
    for name, value in paths.items():
        if value:
            print(f"  {name:<18} {value}")
    print(f"  {'summary':<18} {summary}")


EXIT_GATE_FAILED = 1


def cmd_compress(args: argparse.Namespace) -> int:
    from pipelines.compression.stage import compress_stage
    from pipelines.compression.tables import print_report
    from pipelines.guards import sigterm_exits
    from pipelines.run import compress_paths, exit_code
    from pipelines.stage_results import Upstream
    from pipelines.train import load_data

    started = time.perf_counter()
    cfg = config_from(args)
    if not args.teacher:
        raise InputError("dlforge compress needs --teacher CKPT|RUN_ID|models:/<name>@<alias>")
    check_writable(cfg.output_dir)
    # bad data: exit 2 before a teacher is downloaded into output_dir or a run is opened; read as the teacher's
    # family reads it, where the teacher is a local file (a 2-D array is a table to an mlp, signals to an rnn)
    load_data(cfg.with_overrides({"model.family": _local_teacher_family(args.teacher, cfg)}))
    lock_output_dir(cfg.output_dir)
    with sigterm_exits():  # SIGTERM outside the distillation fit also closes the runs KILLED
        result = compress_stage(cfg, Upstream(model=args.teacher))
    print_report(result)
    summary = write_summary(
        cfg,
        "compress",
        started,
        metric=result.metric,
        rows=[dataclasses.asdict(r) for r in result.rows],
        gates=[dataclasses.asdict(g) for g in result.gates],
        passed=result.passed,
        champion=result.champion,
        paths=compress_paths(result),
        models=(result.registered or {}).get("models", {}),
        student=result.student,
        teacher_run_id=result.teacher_run_id,
        mlflow_run_id=result.run_id,
        registered=result.registered,
    )
    if result.registered and "uri" in result.registered:
        print(f"  {'registered':<18} {result.registered['uri']} (version {result.registered['version']})")
    print(f"  {'report':<18} {result.report_md}\n  {'summary':<18} {summary}")
    _print_failed_gates([dataclasses.asdict(g) for g in result.failed], result.champion)
    return exit_code(result.champion is not None, result.failed, strict=args.strict)


def _local_teacher_family(ref: str, cfg) -> str:
    """The family of a teacher checkpoint on disk (read with ``weights_only``, nothing imported), else the config's."""
    if not Path(ref).expanduser().is_file():
        return cfg.model.family
    import torch

    from dl_lightning.registry import checkpoint_family

    try:
        checkpoint = torch.load(Path(ref).expanduser(), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a checkpoint at all: the compress stage says so in its own words
        return cfg.model.family
    if not isinstance(checkpoint, dict):
        return cfg.model.family
    return checkpoint_family(checkpoint, ref, allowed=cfg.model.family)


def cmd_predict(args: argparse.Namespace) -> int:
    from pipelines.predict import predict_stage  # ONNX Runtime only: torch is not imported on this path
    from pipelines.stage_results import Upstream

    positional = [item for item in args.items if "=" not in item]
    if len(positional) != 2:
        raise InputError("usage: dlforge predict MODEL.onnx|models:/NAME@ALIAS INPUT [key=value ...] [--output F]")
    model, source = positional
    cfg = load_config(None, [item for item in args.items if "=" in item])  # tracking.* finds a registry model
    output = args.output or str(Path(source).with_suffix("")) + ".predictions.csv"
    check_writable(Path(output).absolute().parent, what="--output")  # before the model runs: write nothing
    result = predict_stage(cfg, Upstream(model=model), source=source, output=output)
    print(f"  {result.rows} predictions → {result.output}")
    return 0


PROMOTE_USAGE = (
    "usage: dlforge promote models:/NAME/VERSION|models:/NAME@ALIAS|OUTPUT_DIR [CONFIG.yaml] [key=value ...]"
)


def cmd_promote(args: argparse.Namespace) -> int:
    from pipelines.preflight import missing_sqlite_store
    from pipelines.promote import promote_stage, upstream_of
    from pipelines.stage_results import Upstream

    target, cfg = _promote_target(args.items)
    if not cfg.tracking.enabled:
        raise InputError("dlforge promote moves an alias in the model registry; drop tracking.enabled=false")
    if target.startswith("models:/") and missing_sqlite_store(cfg):  # looking must not create an empty store
        from pipelines.tracking import tracking_uri

        raise InputError(f"{target}: the tracking store {tracking_uri(cfg)} does not exist; name the store it is in")
    upstream = Upstream(model=target) if target.startswith("models:/") else upstream_of(target)
    if not upstream.model:
        from pipelines import tracking

        tracking.connect(cfg)  # a model version names its store through cfg itself; a job's results do not
    result = promote_stage(cfg, upstream)
    for promoted in (result, result and result.trained):
        if promoted and promoted.champion:
            label = f" ({promoted.model})" if promoted.model else " (pytorch)"
            print(f"  {'champion':<18} {promoted.name} version {promoted.champion}{label}")
    if result is None or result.champion is None:
        print("dlforge: no registered version has passed its own gates; champion was not moved", file=sys.stderr)
        return EXIT_GATE_FAILED
    print(f"  {'uri':<18} models:/{result.name}@champion")
    return 0


def _promote_target(items: list[str]) -> tuple[str, Config]:
    """The version or folder to promote, and the config naming the store: ``CONFIG.yaml`` if given, else a
    ``dlforge run`` folder's own ``train/config.yaml`` (its model's name and store), then the overrides."""
    files = [item for item in items if "=" not in item]
    configs = [item for item in files if item.endswith((".yaml", ".yml"))]
    targets = [item for item in files if item not in configs]
    if len(targets) != 1 or len(configs) > 1:
        raise InputError(PROMOTE_USAGE)
    own = Path(targets[0]) / "train" / "config.yaml"
    base = configs[0] if configs else (str(own) if own.is_file() else None)
    return targets[0], load_config(base, [item for item in items if "=" in item])


def _quiet_libraries(command: str) -> None:
    """Keep the terminal for dlforge's own lines; libraries' info chatter goes to debug logs."""
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # inherited by DDP child processes
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # "Creating initial database tables", "Registered…"
    # A download bar per file of a model (predict models:/…, compress --teacher models:/…): eight bars for one model
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    warnings.filterwarnings("ignore")
    if command == "predict":  # ONNX Runtime only: importing Lightning would import torch
        return
    # Lightning sets its loggers to INFO when first imported, so set them after importing it.
    import lightning.pytorch  # noqa: F401

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[Handler, str, dict[str, dict[str, Any]]]] = {
    "bench": (cmd_bench, BENCH_HELP, BENCH_FLAGS),
    "train": (
        cmd_train,
        "train one model family on a dataset (one process or DDP)",
        {
            "--resume": {"metavar": "CKPT|auto", "help": "continue from a checkpoint (auto: the last one)"},
            "--parent-run-id": {"help": argparse.SUPPRESS},  # set by `dlforge run`: nest under its MLflow run
        },
    ),
    "run": (
        cmd_run,
        "the main job: sweep → train (DDP) → test → register → distill → ONNX → INT8 → gates → champion → report",
        {
            "--quick": {"action": "store_true", "help": "shrink the job to minutes (configs/quick.yaml overlay)"},
            "--force": {"action": "store_true", "help": "rerun stages already done with the same inputs"},
            "--no-sweep": {"action": "store_true", "help": "skip the sweep (as tune.enabled=false): train the config"},
            "--strict": {"action": "store_true", "help": "exit 1 when any gate failed, even with a champion"},
        },
    ),
    "show": (cmd_show, "print the resolved config", {}),
    "compress": (
        cmd_compress,
        "distill a smaller student, export to ONNX, quantize to INT8, measure, gate and report",
        {
            "--teacher": {"metavar": "CKPT|RUN_ID|models:/NAME@ALIAS", "help": "the trained model to compress"},
            "--strict": {"action": "store_true", "help": "exit 1 when any gate failed, even with a champion"},
        },
    ),
    "predict": (
        cmd_predict,
        "predict with an ONNX model (ONNX Runtime only): dlforge predict MODEL.onnx|models:/NAME@ALIAS INPUT",
        {"--output": {"metavar": "FILE.csv", "help": "where to write predictions (default: INPUT.predictions.csv)"}},
    ),
    "promote": (
        cmd_promote,
        "move the registry's champion alias: dlforge promote models:/NAME/VERSION|models:/NAME@ALIAS|OUTPUT_DIR — "
        "to the named version (refused when its own gates failed), or to the best registered version of the "
        "artifact a dlforge compress or dlforge run output folder chose; exit 1 when nothing could be promoted",
        {},
    ),
    "tune": (
        cmd_tune,
        "sweep hyperparameters with Ray Tune (tune.space) and write the best config",
        {"--resume": {"metavar": "DIR", "help": "continue an interrupted sweep (its experiment_path)"}},
    ),
    "ui": (
        cmd_ui,
        "serve the MLflow dashboard of the configured tracking store (127.0.0.1 unless --host says otherwise)",
        {
            "--host": {"default": "127.0.0.1", "help": "interface to bind (default 127.0.0.1: this machine only)"},
            "--port": {"type": int, "default": 5000, "help": "port to serve on (default 5000)"},
        },
    ),
}
