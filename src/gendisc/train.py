"""Train a model from the composed Hydra config: fit, test and return the optimized metric.

Resuming lives in ``utils/resume.py``, multi-process launches in ``utils/distributed.py`` and
failure records in ``utils/failures.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from gendisc.callbacks.random_state import RandomStateCheckpoint
from gendisc.callbacks.run_config import StoreRunConfig
from gendisc.callbacks.run_report import EvaluationReport
from gendisc.errors import ConfigError
from gendisc.utils import distributed, resume
from gendisc.utils.build import build
from gendisc.utils.config import (
    PROJECT_ROOT,
    instantiate_list,
    print_config_tree,
    register_resolvers,
    renamed_override,
)
from gendisc.utils.failures import handle_failure, set_aside_old_failure

register_resolvers()


def _plain_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test the configured model; return every logged metric plus the report's.

    The returned dict also holds ``<optimized_metric>_best``, the best validation score, which
    is written into metrics.json with the final ``val/*`` values.
    """
    finished = resume.finished_run(cfg)
    if finished is not None:
        print(f"{cfg.paths.output_dir}: finished ({finished['epochs']} epochs), left as it is")
        return finished
    if cfg.get("threads") is not None:  # 1 when several jobs share a CPU
        torch.set_num_threads(cfg.threads)
    seed = distributed.resolve_seed(cfg)  # chosen by rank 0 when null; recorded in cfg.seed
    L.seed_everything(seed, workers=True)
    datamodule, model = build(cfg)
    ckpt_path = resume.resolve_ckpt_path(cfg) if cfg.get("train") else None
    resolved = OmegaConf.to_container(cfg, resolve=True)
    callbacks = [
        *instantiate_list(cfg.get("callbacks"), "callbacks"),
        StoreRunConfig(resolved),
        RandomStateCheckpoint(seed),  # each rank's own random stream, kept in checkpoints
    ]
    loggers = resume.instantiate_loggers(cfg, ckpt_path)
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers, **distributed.strategy_for(cfg, model)
    )
    reports = [callback for callback in callbacks if isinstance(callback, EvaluationReport)]
    for report in reports:  # which weights test/* holds (the default depends on the model)
        report.extra["test_ckpt"] = cfg.get("test_ckpt")
    for logger in loggers:
        logger.log_hyperparams(resolved)

    metrics: dict[str, Any] = {}
    with distributed.distributed_scope():
        distributed.check_multiprocess_launch(cfg, trainer)
        try:
            if cfg.get("train"):
                trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
                metrics.update(_plain_metrics(trainer.callback_metrics))
                metrics.update(resume.best_validation(trainer))
                validation = {k: v for k, v in metrics.items() if k.startswith("val/")}
                for report in reports:
                    report.extra.update(validation)
            if cfg.get("test"):
                for prefix, test_ckpt in resume.checkpoints_to_test(cfg, trainer):
                    trainer.test(
                        model, datamodule=datamodule, ckpt_path=test_ckpt, weights_only=True
                    )
                    tested = _plain_metrics(trainer.callback_metrics)
                    if prefix != "test/":  # an extra test: kept under its own prefix
                        tested = {
                            prefix + key.removeprefix("test/"): value
                            for key, value in tested.items()
                            if key.startswith("test/") and not isinstance(value, list)
                        }
                        for report in reports:
                            report.extra.update(tested)
                    metrics.update(tested)
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


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    """Hydra entry point: print the config, run, and keep a sweep going past a failed job."""
    output_dir = Path(cfg.paths.output_dir)
    worker = distributed.is_ddp_worker()
    if cfg.extras.get("print_config") and not worker:
        print_config_tree(cfg, save_to=output_dir / "config_tree.log")
    if distributed.global_rank() == 0:
        set_aside_old_failure(output_dir)
    try:
        return optimized_value(cfg, train(cfg))
    except Exception as error:
        return handle_failure(
            output_dir, error, worker=worker, last=resume.last_checkpoint_file(cfg)
        )


def main() -> None:
    """Console script ``gendisc-train``."""
    renamed = renamed_override(sys.argv[1:])
    if renamed:
        raise SystemExit(f"Error: {renamed}")
    sys.argv = distributed.ddp_worker_argv(sys.argv, dict(os.environ))
    hydra_main()


if __name__ == "__main__":
    main()
