"""Evaluate a checkpoint on its run's test split and write the same report as training."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from gendisc.callbacks.generative_metrics import GenerativeMetrics
from gendisc.callbacks.run_report import EvaluationReport
from gendisc.checkpoints import load_checkpoint, restore_weights, run_config
from gendisc.trusted import UntrustedConfigError
from gendisc.utils.build import build
from gendisc.utils.config import (
    PROJECT_ROOT,
    instantiate_list,
    print_config_tree,
    register_resolvers,
)
from gendisc.utils.failures import exit_on_gendisc_error

log = logging.getLogger(__name__)
register_resolvers()

GENERATIVE_METRICS = f"{GenerativeMetrics.__module__}.{GenerativeMetrics.__qualname__}"


def generative_metrics_callbacks(run_cfg: DictConfig, cfg: DictConfig) -> list[Any]:
    """The run's generative-metrics callback (FID/KID/IS/CAS of its generator) when it had one
    and ``generative_metrics`` is on: the report then matches the training run's test.

    The settings come from the checkpoint, but the class must be GenerativeMetrics and its
    evaluator cache is this machine's (``paths.cache_dir``): no callback or folder named by a
    file is attached to the trainer."""
    spec = OmegaConf.select(run_cfg, "callbacks.generative_metrics")
    if not cfg.get("generative_metrics", True) or not spec or not spec.get("enabled", True):
        return []
    if spec.get("_target_") != GENERATIVE_METRICS:
        raise UntrustedConfigError(
            f"ckpt_path={cfg.ckpt_path}: its callbacks.generative_metrics._target_ is "
            f"{spec.get('_target_')!r}, not {GENERATIVE_METRICS}; gendisc-eval attaches no other "
            "callback from a file. Evaluate with generative_metrics=false, or use a checkpoint "
            "written by gendisc-train."
        )
    spec = spec.copy()
    spec.pop("enabled", None)
    if spec.get("cache_dir"):
        spec.cache_dir = str(Path(cfg.paths.cache_dir) / "evaluators")
    return [hydra.utils.instantiate(spec)]


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Rebuild the checkpoint's datamodule and model, test them, return the report's metrics.

    The stored run config is built from only once its targets are trusted (``run_config``); the
    trainer, its loggers and the report come from this command's own config."""
    checkpoint = load_checkpoint(cfg.ckpt_path, "ckpt_path")  # the file's only read
    run_cfg = run_config(checkpoint, cfg.ckpt_path, "ckpt_path")
    overrides = {k: v for k, v in cfg.get("data", {}).items() if v is not None}
    run_cfg.data = OmegaConf.merge(run_cfg.data, overrides)
    datamodule, model = build(run_cfg)
    restore_weights(model, checkpoint, cfg.ckpt_path, "ckpt_path")
    del checkpoint
    report = EvaluationReport(
        output_dir=cfg.paths.output_dir,
        seed=run_cfg.get("seed"),
        extra={"ckpt_path": str(cfg.ckpt_path)},
    )
    callbacks = [*generative_metrics_callbacks(run_cfg, cfg), report]
    loggers = instantiate_list(cfg.get("logger"), "logger")
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    trainer.test(model, datamodule=datamodule)
    return report.metrics


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="eval")
def hydra_main(cfg: DictConfig) -> None:
    if cfg.extras.get("print_config"):
        print_config_tree(cfg)
    with exit_on_gendisc_error():
        evaluate(cfg)


def main() -> None:
    """Console script ``gendisc-eval``."""
    hydra_main()


if __name__ == "__main__":
    main()
