"""Train a model from the composed Hydra config: fit, test and return the optimized metric."""

from __future__ import annotations

import json
import logging
import math
import traceback
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gendisc.callbacks.report import EvaluationReport
from gendisc.callbacks.run_config import StoreRunConfig
from gendisc.errors import ConfigError, GendiscError
from gendisc.utils.config import (
    PROJECT_ROOT,
    instantiate_list,
    print_config_tree,
    register_resolvers,
)

log = logging.getLogger(__name__)
register_resolvers()


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


def _test_checkpoint(cfg: DictConfig, trainer: L.Trainer) -> str | None:
    """``test_ckpt``: 'best' (on the validation metric), 'last', or None for the weights in memory."""
    choice = cfg.get("test_ckpt")
    checkpoint = trainer.checkpoint_callback
    if choice not in ("best", "last") or checkpoint is None or not cfg.get("train"):
        return None
    path = checkpoint.best_model_path if choice == "best" else checkpoint.last_model_path
    if not path:
        log.warning("No %s checkpoint was written; testing the weights in memory.", choice)
        return None
    return path


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test the configured model; return every logged metric plus the report's."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule, model = build(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    callbacks = [*instantiate_list(cfg.get("callbacks"), "callbacks"), StoreRunConfig(resolved)]
    loggers = instantiate_list(cfg.get("logger"), "logger")
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    for logger in loggers:
        logger.log_hyperparams(resolved)

    metrics: dict[str, Any] = {}
    try:
        if cfg.get("train"):
            trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
            metrics.update(trainer.callback_metrics)
        if cfg.get("test"):
            trainer.test(model, datamodule=datamodule, ckpt_path=_test_checkpoint(cfg, trainer))
            metrics.update(trainer.callback_metrics)
    finally:
        if any(type(logger).__name__ == "WandbLogger" for logger in loggers):
            import wandb

            wandb.finish()  # before the next multirun job starts its own run
    metrics = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}
    for callback in callbacks:
        if isinstance(callback, EvaluationReport):
            metrics.update(callback.metrics)
    return metrics


def optimized_value(cfg: DictConfig, metrics: dict[str, Any]) -> float | None:
    """The value Hydra sweepers optimise (``optimized_metric``), NaN when the run produced none."""
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        raise ConfigError(
            f"optimized_metric={name} was not logged; available: {sorted(metrics)[:20]}"
        )
    return float(metrics[name])


def _gendisc_cause(error: BaseException) -> GendiscError | None:
    """The GendiscError behind ``error`` (Hydra wraps errors raised while instantiating)."""
    while error is not None:
        if isinstance(error, GendiscError):
            return error
        error = error.__cause__ or error.__context__
    return None


def _record_failure(cfg: DictConfig, error: BaseException) -> None:
    """Write failure.json in the run directory: the error, for the sweep report."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "status": "failed",
        "error_type": type(error).__name__,
        "error": str(error),
        "traceback": traceback.format_exc(),
    }
    (output_dir / "failure.json").write_text(json.dumps(record, indent=2))


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    """Hydra entry point: print the config, run, and keep a sweep going past a failed job."""
    if cfg.extras.get("print_config"):
        print_config_tree(cfg, save_to=Path(cfg.paths.output_dir) / "config_tree.log")
    try:
        metrics = train(cfg)
        return optimized_value(cfg, metrics)
    except Exception as error:
        _record_failure(cfg, error)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            log.error("Job failed (%s: %s); the sweep goes on.", type(error).__name__, error)
            return math.nan
        cause = _gendisc_cause(error)
        if cause is not None:
            raise SystemExit(f"error: {cause}") from None
        raise


def main() -> None:
    """Console script ``gendisc-train``."""
    hydra_main()


if __name__ == "__main__":
    main()
