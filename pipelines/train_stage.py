"""The train stage: one fit in one tracking run, and what the run keeps of it.

``train_stage(cfg, upstream)`` is what ``dlforge train`` does around ``train()``: it checks a checkpoint to resume
from, opens the job's run (continuing the checkpoint's run), fits with tracking's callbacks, and logs the result and
the weights' lineage. ``dlforge run`` reaches the same function through ``dlforge train`` in a child process
(:func:`train_in_child`), which DDP's relaunch needs, and reads the child's ``summary.json`` back in one place
(:meth:`TrainStageResult.from_summary`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dl_lightning.errors import clip
from pipelines import finetune, guards, review, tracking
from pipelines.config import Config, dump_yaml
from pipelines.outputs import write_text_atomic
from pipelines.processes import run_child
from pipelines.stage_results import NO_UPSTREAM, StageFailed, Upstream

if TYPE_CHECKING:
    from dl_lightning.data import Splits
    from pipelines.train import TrainResult

log = logging.getLogger(__name__)

OUTPUTS_TAG = "dlforge.train_outputs"  # what log_train_result logged, and after how many epochs
HISTORY_PREFIXES, HISTORY_SKIP = ("train/", "val/"), ("train/lr",)  # the learning curves' metrics


@dataclass(frozen=True)
class LoggedOutputs:
    """What ``log_train_result`` put in the run."""

    model_uri: str | None = None
    model_version: str | None = None
    artifacts: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainStageResult:
    """A fit and what its run holds; ``logged`` is empty on ranks other than 0 and with tracking off."""

    result: TrainResult
    logged: LoggedOutputs

    @classmethod
    def from_summary(cls, summary: dict[str, Any]) -> TrainStageResult:
        """The fit as ``dlforge train``'s ``summary.json`` (or :meth:`to_dict`) records it: the one reader of it.

        Holds what the summary keeps: the data's brief (not the vocabulary), and 0 epochs where it has none.
        """
        from pipelines.train import TrainResult  # the fit's own record; importing this stage needs no torch

        paths, tracked = summary.get("paths") or {}, summary.get("tracking") or {}
        result = TrainResult(
            output_dir=summary["config"]["output_dir"],
            best_checkpoint=paths.get("best_checkpoint"),
            last_checkpoint=paths.get("last_checkpoint"),
            metrics=summary["metrics"],
            data=summary.get("data") or {},
            run_id=summary.get("mlflow_run_id"),
            epochs=summary.get("epochs", 0),
            extra={"init_from": summary["init_from"]} if summary.get("init_from") else {},
        )
        return cls(result, LoggedOutputs(tracked.get("model_uri"), tracked.get("model_version")))

    from_dict = from_summary  # to_dict writes the summary's shape

    def to_dict(self) -> dict[str, Any]:
        """The summary's keys that :meth:`from_summary` reads, as JSON values."""
        r, logged = self.result, self.logged
        return {
            "metrics": r.metrics,
            "paths": {"best_checkpoint": r.best_checkpoint, "last_checkpoint": r.last_checkpoint},
            "mlflow_run_id": r.run_id,
            "tracking": {"model_uri": logged.model_uri, "model_version": logged.model_version},
            "data": r.data,
            "init_from": r.extra.get("init_from"),
            "config": {"output_dir": r.output_dir},
            "epochs": r.epochs,
        }


def train_stage(
    cfg: Config, upstream: Upstream = NO_UPSTREAM, *, resume: str | None = None, splits: Splits | None = None
) -> TrainStageResult:
    """The train stage: fit ``cfg`` in its own run and log the result; the run ends FINISHED, FAILED or KILLED with
    the fit.

    Args:
        upstream: its ``parent_run_id`` (the pipeline's run) nests this run; the config already holds the sweep's
            choice, so nothing else is read.
        resume: a checkpoint to continue from: refused when it unpickles code or does not fit the config; its run
            (when it records one) is continued.
        splits: the config's data, already loaded and checked (``pipelines.preflight.check_data``).
    """
    from pipelines.preflight import check_resume_fits
    from pipelines.train import train  # looked up per call: importing this stage needs no torch

    parent_run_id = upstream.parent_run_id
    if resume:
        guards.check_checkpoint(resume)  # weights_only: a hostile pickle is refused before anything loads it
        check_resume_fits(cfg, splits, resume)  # another architecture or data: one line, not a size-mismatch trace
    continued = tracking.run_id_from_checkpoint(resume) if cfg.tracking.enabled else None
    # The run opens on a thread while the fit starts: importing mlflow and opening its store take seconds.
    run = tracking.job_run(cfg, kind="train", run_id=continued, parent_run_id=parent_run_id, background=True)
    with guards.sigterm_exits(), run as opening:
        callbacks = tracking.lightning_callbacks(cfg, opening)
        result = train(cfg, resume=resume, callbacks=callbacks, splits=splits)
        run_id = opening.run_id() if opening is not None else None  # raises when the run could not be opened
        result = dataclasses.replace(result, run_id=run_id)
        _log_dataset(run_id, cfg, splits)
        history = tracking.fit_history(callbacks, HISTORY_PREFIXES, HISTORY_SKIP)
        logged = log_train_result(run_id, cfg, result, splits=splits, history=history)
        if result.is_global_zero:
            finetune.log_lineage(cfg, run_id, result.extra, logged.model_version)  # where the weights came from
    return TrainStageResult(result, logged)


def train_in_child(cfg: Config, upstream: Upstream = NO_UPSTREAM, *, resume: bool = False) -> TrainStageResult:
    """The train stage in a child ``dlforge train``: under DDP Lightning re-launches *that* command per rank, not
    the pipeline. Its config is written to ``<output_dir>/config.yaml``; the model is registered when tracked.

    ``resume``: this stage was interrupted with the same config, so its last checkpoint is continued.

    Raises:
        StageFailed: the child exited non-zero or wrote no ``summary.json``.
    """
    out = Path(cfg.output_dir)
    staged = cfg.with_overrides({"tracking.register": cfg.tracking.enabled})
    config_file = write_text_atomic(out / "config.yaml", dump_yaml(staged))
    command = [sys.executable, "-m", "pipelines", "train", str(config_file)]
    command += ["--parent-run-id", upstream.parent_run_id] if upstream.parent_run_id else []
    command += ["--resume", "auto"] if resume else []
    if run_child(command) != 0:  # the child dies with this process; SIGTERM here is forwarded to it and waited for
        raise StageFailed(f"training failed; its output is above and in {out}")
    summary = out / "summary.json"
    if not summary.is_file():
        raise StageFailed(f"{summary} was not written; the stage did not finish")
    return TrainStageResult.from_summary(json.loads(summary.read_text()))  # the child's outcome, read here only


def log_train_result(
    run_id: str | None,
    cfg: Config,
    result: TrainResult,
    *,
    splits: Splits | None = None,
    history: review.History | None = None,
) -> LoggedOutputs:
    """On rank 0 after a fit: test metrics, review plots, GAN samples, the best checkpoint, the model, registry.

    A review plot that fails is a warning and a ``dlforge.review_error`` tag, not a failed job: the model was
    trained. Failing to log the model or register it raises — later stages depend on them. Once per run and
    epoch count: a resumed job whose fit was already done (tag ``dlforge.train_outputs``) gets the earlier outputs.

    Args:
        splits: the data the fit used (else it is loaded again for the test-split plots and the model card).
        history: the fit's ``train/*`` and ``val/*`` history (``tracking.fit_history``); None: read from the run.
    """
    if run_id is None or not result.is_global_zero:
        return LoggedOutputs()
    previous = _logged_before(run_id, result.epochs)
    if previous is not None:  # a resumed job that found the fit already done: test/* and the version exist
        return previous
    tracking.log_metrics(run_id, result.metrics, step=result.epochs)
    tracking.set_tags(run_id, _data_tags(result.data))
    checkpoint = result.best_checkpoint or result.last_checkpoint
    module = review.load_module(checkpoint, cfg.model.family) if checkpoint else None
    folder = Path(cfg.output_dir).absolute() / "review"  # kept beside the checkpoints: reports embed them
    folder.mkdir(parents=True, exist_ok=True)
    files = _review_files(run_id, cfg, module, result, folder, splits, history)
    for path in files:
        tracking.log_artifact(run_id, path, "review")
    tracking.log_artifacts(run_id, Path(cfg.output_dir) / "samples", "samples")
    if checkpoint:
        tracking.log_artifact(run_id, checkpoint, "checkpoints")
    if module is None:
        return LoggedOutputs(artifacts=tuple(p.name for p in files))
    return _log_model(run_id, cfg, result, module, tuple(p.name for p in files), splits)


def _log_model(
    run_id: str, cfg: Config, result: TrainResult, module: Any, artifacts: tuple[str, ...], splits: Splits | None
) -> LoggedOutputs:
    """With ``tracking.register``, the MLflow model and its registry version; recorded on the run as logged.

    Without it the run keeps the best checkpoint only (the model is exported when it is registered: the pt2 export
    costs seconds per job, which every unregistered training job used to pay).
    """
    model_uri = version = None
    if cfg.tracking.register:
        from pipelines import export, predict  # onnx and pandas only on this branch

        net, example = module.export_net()
        meta = export.model_metadata(result.data, family=cfg.model.family, role="trained", source_run_id=run_id)
        model_uri, serves = predict.log_trained_model(run_id, net, example, meta)  # pyfunc: as dlforge predict
        name = tracking.registered_model_name(cfg)
        text = _version_description(run_id, cfg, result, name, serves)
        text += _model_card(run_id, cfg, result, module, splits)
        version = tracking.register_model(
            model_uri, name=name, run_id=run_id, tags=_version_tags(result), description=text
        )
    outputs = {"epochs": result.epochs, "model_uri": model_uri, "model_version": version, "artifacts": artifacts}
    tracking.set_tags_safely(run_id, {OUTPUTS_TAG: json.dumps(outputs)})
    return LoggedOutputs(model_uri, version, artifacts)


def _model_card(run_id: str, cfg: Config, result: TrainResult, module: Any, splits: Splits | None) -> str:
    """``model_card.md`` logged to the run; returned (after a rule) for the version's description. A card that
    cannot be made is a warning and an empty string: the model was trained and is registered without it."""
    from pipelines.model_card import train_card
    from pipelines.train import load_data

    try:
        lineage = {"training run": run_id, "init_from": cfg.model.init_from}
        card = train_card(cfg, result, module, splits if splits is not None else load_data(cfg), lineage)
        path = Path(cfg.output_dir).absolute() / "model_card.md"
        path.write_text(card)
        tracking.log_artifact(run_id, path)
    except Exception as exc:  # the card describes the model; it must not keep it from the registry
        log.warning("model card failed: %s: %s", type(exc).__name__, exc)
        return ""
    return "\n\n---\n\n" + card


def _logged_before(run_id: str, epochs: int) -> LoggedOutputs | None:
    """What an earlier job of this run logged after the same number of epochs; None when it has not.

    Resuming a finished fit retrains nothing; this keeps it from logging test/* a second time and registering a
    second version of the same model. A fit continued to more epochs is a new model and is logged again.
    """
    try:
        done = json.loads(tracking.run_tag(run_id, OUTPUTS_TAG) or "null")
    except (ValueError, TypeError):
        return None
    if not isinstance(done, dict) or done.get("epochs") != epochs:
        return None
    return LoggedOutputs(done.get("model_uri"), done.get("model_version"), tuple(done.get("artifacts") or ()))


def _review_files(
    run_id: str,
    cfg: Config,
    module: Any,
    result: TrainResult,
    folder: Path,
    splits: Splits | None,
    history: review.History | None,
) -> list[Path]:
    try:
        if history is None:  # a resumed fit: the earlier epochs' curves are in the run only
            history = tracking.metric_history(run_id, HISTORY_PREFIXES, skip=HISTORY_SKIP)
        return review.review_files(cfg, module, result, folder, history, splits=splits)
    except Exception as exc:  # the model was trained: a plot must not fail the job
        log.warning("review plots failed: %s: %s", type(exc).__name__, exc)
        tracking.set_tags_safely(run_id, {"dlforge.review_error": clip(f"{type(exc).__name__}: {exc}", 2000)})
        return []


def _log_dataset(run_id: str | None, cfg: Config, splits: Splits | None) -> None:
    """The data as the run's dataset inputs (one per split); a failure is a warning: the fit does not need it."""
    if run_id is None or not hasattr(splits, "train"):  # None, or a user's DataModule: it streams, no split sizes
        return
    sizes = {name: len(getattr(splits, name)[0]) for name in ("train", "val", "test")}
    try:
        tracking.log_dataset(
            run_id,
            name=tracking.dataset_name(cfg.data.source),
            source=cfg.data.source,
            digest=splits.spec.fingerprint or "unknown",
            input_shape=splits.spec.input_shape,
            dtype=str(splits.train[0].dtype),
            sizes=sizes,
        )
    except Exception as exc:
        log.warning("logging the dataset failed: %s: %s", type(exc).__name__, exc)


def _data_tags(data: dict[str, Any]) -> dict[str, str]:
    tags = {"dlforge.data_fingerprint": data.get("fingerprint"), "dlforge.data_kind": data.get("kind")}
    return {k: str(v) for k, v in tags.items() if v}


def _version_description(run_id: str, cfg: Config, result: TrainResult, name: str, serves: bool = False) -> str:
    """Markdown for the registered PyTorch version: what it is, its test metrics, what its pyfunc returns
    (``serves``: labels and probabilities or values, as ``dlforge predict``), where it came from."""
    tests = ", ".join(f"{k} {v:.4g}" for k, v in sorted(result.metrics.items()) if k.startswith("test/")) or "none"
    link = tracking.run_page(run_id)
    source = f"[its training run]({link})" if link else "its training run"
    return (
        f"**{cfg.model.family}**: the trained PyTorch model (fp32, `torch.export` pt2) of {source}, "
        f"{result.epochs} epochs on `{cfg.data.source}`.\n\nTest: {tests}. {_serves_text(name, serves)} "
        "`dlforge run` records the teacher's gates on it (tag `dlforge.gates`)."
    )


def _serves_text(name: str, serves: bool) -> str:
    if serves:
        return (
            f'`mlflow.pyfunc.load_model("models:/{name}/<version>").predict(df)` returns labels and class '
            "probabilities (values for regression), as `dlforge predict` does for its ONNX file; it needs torch."
        )
    return f"Its `mlflow.pyfunc` returns the raw outputs; `models:/{name}-onnx@champion` serves predictions."


def _version_tags(result: TrainResult) -> dict[str, str]:
    tags = {f"metric.{k}": f"{v:.6g}" for k, v in result.metrics.items()}
    return tags | _data_tags(result.data)
