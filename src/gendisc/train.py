"""Train a model from the composed Hydra config: fit, test and return the optimized metric.

Besides fitting, this module owns what makes long studies safe to run: resuming a killed run in
its own directory (``ckpt_path=last``), recording a failed job in ``failure.json`` while the rest
of a multirun goes on, and re-launching the other ranks of a multi-process (DDP) job from the
job's own saved config, so DDP also works inside Hydra multiruns.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from omegaconf import DictConfig, OmegaConf, open_dict

from gendisc.callbacks.random_state import RandomStateCheckpoint
from gendisc.callbacks.report import EvaluationReport
from gendisc.callbacks.run_config import StoreRunConfig
from gendisc.errors import ConfigError, GendiscError
from gendisc.training import last_checkpoint_path
from gendisc.utils.config import (
    PROJECT_ROOT,
    instantiate_list,
    print_config_tree,
    register_resolvers,
)

log = logging.getLogger(__name__)
register_resolvers()

# Set by rank 0 while it fits: the run directory whose saved config the other ranks compose.
DDP_RUN_DIR_ENV = "GENDISC_DDP_RUN_DIR"
# Set with it when the job belongs to a multirun: a failing worker rank then exits quietly.
DDP_MULTIRUN_ENV = "GENDISC_DDP_MULTIRUN"
# Environment that a multi-process launch leaves behind in rank 0; cleared after each job.
_DISTRIBUTED_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def _slurm_gpus(accelerator: str, devices: Any) -> int:
    """GPUs per node for the SLURM launcher: ``trainer.devices`` on GPUs, none on CPU."""
    if str(accelerator) not in ("gpu", "cuda", "auto"):
        return 0
    if isinstance(devices, int) and devices > 0:
        return devices
    raise ConfigError(
        f"trainer.devices={devices}: with hydra/launcher=slurm give a GPU count per node "
        "(e.g. trainer.devices=4), so SLURM can reserve them."
    )


def _slurm_tasks(devices: Any) -> int:
    """Tasks per node for the SLURM launcher: one per device (Lightning uses SLURM's ranks)."""
    if isinstance(devices, int) and devices > 0:
        return devices
    raise ConfigError(
        f"trainer.devices={devices}: with hydra/launcher=slurm give a device count per node "
        "(e.g. trainer.devices=4): SLURM starts one task per device."
    )


if not OmegaConf.has_resolver("slurm_gpus"):
    OmegaConf.register_new_resolver("slurm_gpus", _slurm_gpus)
    OmegaConf.register_new_resolver("slurm_tasks", _slurm_tasks)


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule]:
    """The datamodule (data read, label protocol applied) and the model sized for its data."""
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    datamodule.load()
    model = hydra.utils.instantiate(
        cfg.model,
        in_shape=list(datamodule.image_shape),
        num_classes=datamodule.num_classes,
        class_names=datamodule.class_names,
        _convert_="all",
    )
    return datamodule, model


def _last_checkpoint(cfg: DictConfig) -> str:
    """``<run dir>/checkpoints/last.ckpt`` (callbacks.last_checkpoint) when it exists."""
    path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    return str(path) if path.is_file() else ""


def _test_checkpoint(cfg: DictConfig, trainer: L.Trainer) -> str | None:
    """``test_ckpt``: 'best' (on the validation metric), 'last', or None for the weights in memory."""
    choice = cfg.get("test_ckpt")
    if choice not in ("best", "last") or not cfg.get("train"):
        return None
    if choice == "last":
        path = last_checkpoint_path(trainer) or _last_checkpoint(cfg)
    else:  # the callback that monitors the validation metric
        monitors = [cb for cb in trainer.checkpoint_callbacks if getattr(cb, "monitor", None)]
        path = monitors[0].best_model_path if monitors else ""
    if not path:
        log.warning("No %s checkpoint was written; testing the weights in memory.", choice)
        return None
    return path


# ------------------------------------------------------------------------------------ resuming
def is_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun."""
    if not HydraConfig.initialized():
        return False
    return HydraConfig.get().mode == RunMode.MULTIRUN


def checkpoint_dir(cfg: DictConfig) -> Path:
    """Where this run's ModelCheckpoint writes (``<run dir>/checkpoints`` by default)."""
    dirpath = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath")
    return Path(dirpath) if dirpath else Path(cfg.paths.output_dir) / "checkpoints"


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """The checkpoint ``trainer.fit`` resumes from.

    ``ckpt_path=last`` means this run directory's ``checkpoints/last.ckpt``: resume a killed run
    with its own directory, ``gendisc-train <its overrides> hydra.run.dir=<run dir>
    ckpt_path=last``. In a multirun a job without a checkpoint starts afresh, so a whole sweep
    resumes with ``hydra.sweep.dir=<sweep dir> ckpt_path=last``.
    """
    value = cfg.get("ckpt_path")
    if value is None:
        return None
    if str(value) in ("best", "hpc") or str(value).startswith("registry"):
        return str(value)  # Lightning's own names
    if str(value) != "last":
        path = Path(str(value)).expanduser()
        if not path.is_file():
            raise ConfigError(f"ckpt_path={value}: no such checkpoint file.")
        return str(path)
    path = checkpoint_dir(cfg) / "last.ckpt"
    if path.is_file():
        return str(path)
    if is_multirun():
        log.warning("ckpt_path=last: no %s yet; this job starts from scratch.", path)
        return None
    raise ConfigError(
        f"ckpt_path=last: there is no checkpoint {path}. To resume a run, give its directory: "
        "gendisc-train <the run's overrides> hydra.run.dir=<run dir> ckpt_path=last "
        "(a sweep: hydra.sweep.dir=<sweep dir> ckpt_path=last)."
    )


def _latest_version(root: Path) -> int | None:
    versions = [
        int(match.group(1))
        for child in root.glob("version_*")
        if (match := re.fullmatch(r"version_(\d+)", child.name))
    ]
    return max(versions) if versions else None


def _wandb_run_id(save_dir: Path) -> str | None:
    """The id of the newest wandb run (online or offline) kept under ``<save_dir>/wandb``."""
    runs = sorted(
        (match.group(1), match.group(2))
        for child in (save_dir / "wandb").glob("*run-*")
        if (match := re.fullmatch(r"(?:offline-)?run-(\d{8}_\d{6})-(\w+)", child.name))
    )
    return runs[-1][1] if runs else None


def resume_logger_config(loggers: DictConfig | None) -> DictConfig | None:
    """Logger configs that continue the run's earlier logs when it resumes in its own directory.

    CSV and TensorBoard loggers write to their latest ``version_N`` folder again; a wandb logger
    resumes the run id found under ``<save_dir>/wandb``.
    """
    if not loggers:
        return loggers
    loggers = loggers.copy()
    for name, entry in loggers.items():
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            continue
        target = str(entry._target_).rsplit(".", 1)[-1]
        save_dir = Path(str(entry.get("save_dir") or "."))
        with open_dict(entry):
            if target in ("CSVLogger", "TensorBoardLogger") and entry.get("version") is None:
                default_name = "lightning_logs" if target == "CSVLogger" else ""
                log_name = entry.get("name", default_name) or ""
                version = _latest_version(save_dir / log_name)
                if version is not None:
                    entry.version = version
                    log.info("Resuming logger %s in version_%d.", name, version)
            elif target == "WandbLogger" and not entry.get("id"):
                run_id = _wandb_run_id(save_dir)
                if run_id:
                    entry.id = run_id
                    entry.resume = "allow"
                    log.info("Resuming wandb run %s.", run_id)
    return loggers


def _read_csv_rows(path: Path, last_epoch: int) -> list[dict[str, str]]:
    """Rows of an earlier metrics.csv up to the checkpoint's epoch (later ones are redone)."""
    if not path.is_file():
        return []
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))

    def keep(row: dict[str, str]) -> bool:
        epoch = row.get("epoch") or ""
        try:
            return float(epoch) <= last_epoch
        except ValueError:
            return True

    return [row for row in rows if keep(row)]


def _continue_csv_logs(loggers: list[Any], checkpoint: str) -> None:
    """Lightning's CSV writer deletes an existing metrics.csv: write its earlier rows back."""
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.utilities import rank_zero_only

    csv_loggers = [logger for logger in loggers if isinstance(logger, CSVLogger)]
    if not csv_loggers or rank_zero_only.rank != 0:
        return
    last_epoch = torch.load(checkpoint, map_location="cpu", weights_only=False).get("epoch", -1)
    for logger in csv_loggers:
        path = Path(logger.log_dir) / "metrics.csv"
        rows = _read_csv_rows(path, last_epoch)
        writer = logger.experiment  # created now: this removes the old file
        if rows:
            writer.metrics = [{k: v for k, v in row.items() if v != ""} for row in rows]
            writer.save()


# ------------------------------------------------------------------------------ multi-process
def _check_multiprocess_launch(cfg: DictConfig, trainer: L.Trainer) -> None:
    """DDP re-runs this program for ranks > 0: they need the run's saved ``.hydra/config.yaml``."""
    if not isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher) or _global_rank() > 0:
        return  # nothing to launch, or a worker: keep the environment rank 0 gave it
    saved = Path(cfg.paths.output_dir) / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise ConfigError(
            f"trainer.strategy={cfg.trainer.get('strategy')} starts ranks 1..N-1 as new processes "
            "that read the run's .hydra/config.yaml: run it with gendisc-train (python -m "
            "gendisc.train), not in-process (a notebook, a test)."
        )
    os.environ[DDP_RUN_DIR_ENV] = str(Path(cfg.paths.output_dir).resolve())
    os.environ[DDP_MULTIRUN_ENV] = "1" if is_multirun() else "0"


def ddp_worker_argv(argv: list[str], environ: dict[str, str]) -> list[str]:
    """The command line of a DDP worker (rank > 0) started by Lightning from rank 0's command.

    Lightning starts the other ranks by running rank 0's command again. In a multirun that
    command is the whole sweep (``-m ...``), so a worker composes its job's saved config instead:
    ``-cp <run dir>/.hydra -cn config hydra.run.dir=<run dir>``.
    """
    run_dir = environ.get(DDP_RUN_DIR_ENV)
    local_rank = int(environ.get("LOCAL_RANK", "0") or 0)
    if not run_dir or local_rank == 0:
        return argv
    return [
        argv[0],
        "--config-path",
        str(Path(run_dir) / ".hydra"),
        "--config-name",
        "config",
        f"hydra.run.dir='{run_dir}'",
        "hydra.output_subdir=null",
        f"hydra.job.name=train_ddp_rank_{local_rank}",
    ]


def _global_rank() -> int:
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(name):
            return int(os.environ[name])
    return 0


@contextlib.contextmanager
def _distributed_scope() -> Any:
    """Leave no process group or launch environment behind for the next job of a sweep."""
    before = {
        name: os.environ.get(name)
        for name in (*_DISTRIBUTED_ENV, DDP_RUN_DIR_ENV, DDP_MULTIRUN_ENV)
    }
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        if _global_rank() == 0:
            for name, value in before.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _strategy_for(cfg: DictConfig, model: L.LightningModule) -> dict[str, Any]:
    """Manually optimised modules (GANs) need DDP to look for unused parameters.

    Their steps back-propagate different losses through different parameter subsets (D's loss
    with a detached generated batch, then G's loss with D frozen), which plain DDP rejects.
    """
    if cfg.trainer.get("strategy") == "ddp" and not model.automatic_optimization:
        log.info("Manual optimisation under DDP: using ddp_find_unused_parameters_true.")
        return {"strategy": "ddp_find_unused_parameters_true"}
    return {}


# ------------------------------------------------------------------------------------ training
def _best_validation(trainer: L.Trainer) -> dict[str, float]:
    """``<monitor>_best``: the checkpoint callback's best score (the model tested as 'best')."""
    for checkpoint in trainer.checkpoint_callbacks:
        score = getattr(checkpoint, "best_model_score", None)
        if getattr(checkpoint, "monitor", None) and score is not None:
            return {f"{checkpoint.monitor}_best": float(score)}
    return {}


def _plain_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test the configured model; return every logged metric plus the report's.

    The returned dict also holds ``<optimized_metric>_best``, the best validation score, which
    is written into metrics.json with the final ``val/*`` values.
    """
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule, model = build(cfg)
    ckpt_path = resolve_ckpt_path(cfg) if cfg.get("train") else None
    # the same run, continued in its directory: its loggers continue too
    continuing = bool(ckpt_path) and Path(str(ckpt_path)).resolve().is_relative_to(
        checkpoint_dir(cfg).resolve()
    )
    logger_cfg = resume_logger_config(cfg.get("logger")) if continuing else cfg.get("logger")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    callbacks = [
        *instantiate_list(cfg.get("callbacks"), "callbacks"),
        StoreRunConfig(resolved),
        RandomStateCheckpoint(),
    ]
    loggers = instantiate_list(logger_cfg, "logger")
    if continuing:
        _continue_csv_logs(loggers, ckpt_path)
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers, **_strategy_for(cfg, model)
    )
    reports = [callback for callback in callbacks if isinstance(callback, EvaluationReport)]
    for logger in loggers:
        logger.log_hyperparams(resolved)

    metrics: dict[str, Any] = {}
    with _distributed_scope():
        _check_multiprocess_launch(cfg, trainer)
        try:
            if cfg.get("train"):
                trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
                metrics.update(_plain_metrics(trainer.callback_metrics))
                metrics.update(_best_validation(trainer))
                validation = {k: v for k, v in metrics.items() if k.startswith("val/")}
                for report in reports:
                    report.extra.update(validation)
            if cfg.get("test"):
                trainer.test(model, datamodule=datamodule, ckpt_path=_test_checkpoint(cfg, trainer))
                metrics.update(_plain_metrics(trainer.callback_metrics))
        finally:
            if any(type(logger).__name__ == "WandbLogger" for logger in loggers):
                import wandb

                wandb.finish()  # before the next multirun job starts its own run
    for report in reports:
        metrics.update(report.metrics)
    return metrics


def optimized_value(cfg: DictConfig, metrics: dict[str, Any]) -> float | None:
    """The value Hydra sweepers optimise: the best validation score of ``optimized_metric``.

    That is ``<optimized_metric>_best`` when the checkpoint callback monitors it (the score of
    the checkpoint tested with ``test_ckpt=best``), else the metric's last value. Never a test
    metric: sweeps select on validation data.
    """
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if str(name).startswith("test/"):
        raise ConfigError(f"optimized_metric={name}: select on validation metrics (val/...).")
    for key in (f"{name}_best", name):
        if key in metrics:
            return float(metrics[key])
    raise ConfigError(f"optimized_metric={name} was not logged; available: {sorted(metrics)[:20]}")


# ------------------------------------------------------------------------------------ failures
def _gendisc_cause(error: BaseException) -> GendiscError | None:
    """The GendiscError behind ``error`` (Hydra wraps errors raised while instantiating)."""
    while error is not None:
        if isinstance(error, GendiscError):
            return error
        error = error.__cause__ or error.__context__
    return None


def _job_overrides() -> list[str]:
    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def record_failure(output_dir: Path, error: BaseException, name: str = "failure.json") -> Path:
    """Write ``failure.json`` in the run directory: the error and where the run had got to."""
    output_dir.mkdir(parents=True, exist_ok=True)
    cause = _gendisc_cause(error) or error
    last = output_dir / "checkpoints" / "last.ckpt"
    record = {
        "status": "failed",
        "error_type": type(cause).__name__,
        "error": str(cause),
        "overrides": _job_overrides(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "last_checkpoint": str(last) if last.is_file() else None,
        "traceback": "".join(traceback.format_exception(error)),
    }
    path = output_dir / name
    path.write_text(json.dumps(record, indent=2))
    return path


def _set_aside_old_failure(output_dir: Path) -> None:
    """A run started again in the directory of a failed one: keep its record as history."""
    old = output_dir / "failure.json"
    if old.is_file():
        old.replace(output_dir / "failure.previous.json")


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    """Hydra entry point: print the config, run, and keep a sweep going past a failed job."""
    output_dir = Path(cfg.paths.output_dir)
    worker = bool(os.environ.get(DDP_RUN_DIR_ENV)) and _global_rank() > 0
    if cfg.extras.get("print_config") and not worker:
        print_config_tree(cfg, save_to=output_dir / "config_tree.log")
    if _global_rank() == 0:
        _set_aside_old_failure(output_dir)
    try:
        metrics = train(cfg)
        return optimized_value(cfg, metrics)
    except Exception as error:
        if worker:  # rank 0 records the job's failure; a worker keeps its own record
            record_failure(output_dir, error, name=f"failure_rank{_global_rank()}.json")
            if os.environ.get(DDP_MULTIRUN_ENV) == "1":
                return math.nan  # a non-zero exit would make Lightning kill the whole sweep
            raise
        if _global_rank() == 0:
            path = record_failure(output_dir, error)
        if is_multirun():
            log.error(
                "Job failed (%s: %s); recorded in %s; the sweep goes on.",
                type(error).__name__,
                error,
                path if _global_rank() == 0 else output_dir,
            )
            return math.nan
        cause = _gendisc_cause(error)
        if cause is not None:
            raise SystemExit(f"error: {cause}") from None
        raise


def main() -> None:
    """Console script ``gendisc-train``."""
    sys.argv = ddp_worker_argv(sys.argv, dict(os.environ))
    hydra_main()


if __name__ == "__main__":
    main()
