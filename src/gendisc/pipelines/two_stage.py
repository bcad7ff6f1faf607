"""Generative data augmentation in one command: train a class-conditional generator on the
few labeled examples, then a classifier on real + synthetic images, and compare it with the
same classifier on real images only.

    gendisc-twostage experiment=augment_mnist paths.data_dir=../shared/data data.data_seed=1

The command composes the training config (``conf/train.yaml``) like ``gendisc-train``; the
experiment must have a ``two_stage`` block. Each stage is a full ``train()`` run with its own
sub-directory of the run directory:

- ``stage1_generator/``: overrides ``two_stage.generator`` (e.g. ``experiment=cgan_mnist``),
  then the command line's overrides except ``experiment`` and ``model...`` ones (data, seeds,
  trainer, paths, ... reach every stage), then the classifier's label protocol
  (``data.labels_per_class``, ``data.val_size``, ``data.val_per_class``, ``data.data_seed``,
  the default validation spelled out): the generator learns from the same labeled examples;
- ``stage2_classifier/``: the command line's config, with ``model.generator_ckpt`` set to the
  stage-1 checkpoint (the one stage 1 was tested with: best or last);
- ``baseline_classifier/`` (``two_stage.baseline=true``): the same with
  ``model.synthetic_ratio=0``, i.e. the identical classifier on real data only.

Command-line overrides must be valid for the classifier's config; settings of stage 1 alone
(e.g. its generative metrics) go into the list, e.g.
``'two_stage.generator=["experiment=cgan_mnist","trainer.max_epochs=5"]'``.

``two_stage.json`` in the run directory holds every stage's metrics and the checkpoint used;
the results are printed side by side. The stages run one after the other in this process.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from gendisc.callbacks.run_report import print_results_table
from gendisc.data.protocol import ALL_LABELS_VAL_SIZE, validation_setting
from gendisc.errors import ConfigError
from gendisc.train import train
from gendisc.utils.config import PROJECT_ROOT, print_config_tree, register_resolvers
from gendisc.utils.failures import exit_on_gendisc_error
from gendisc.utils.resume import checkpoint_dir, last_checkpoint_file

log = logging.getLogger(__name__)
register_resolvers()

GENERATOR_DIR, CLASSIFIER_DIR, BASELINE_DIR = (
    "stage1_generator",
    "stage2_classifier",
    "baseline_classifier",
)


def _key(override: str) -> str:
    """The config key an override string sets (``+model.x=1`` -> ``model.x``)."""
    return override.lstrip("+~").split("=", 1)[0].split("@", 1)[0]


def generator_overrides(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """Stage 1: ``two_stage.generator``, the shared command-line overrides, and the classifier's
    label protocol (``data.labels_per_class``, ``data.val_size``, ``data.val_per_class``,
    ``data.data_seed``; the validation as the classifier resolves it, a default spelled out), so
    that the generator learns from exactly the classifier's labeled examples and never from its
    validation images."""
    block = cfg.get("two_stage")
    if block is None or not block.get("generator"):
        raise ConfigError(
            "gendisc-twostage needs an experiment with a two_stage.generator list of overrides "
            "for the generator, e.g. experiment=augment_mnist"
        )
    shared = [
        o
        for o in overrides
        if _key(o) not in ("experiment", "model") and not _key(o).startswith(("model.", "model/"))
    ]
    data = cfg.data
    labels = data.get("labels_per_class")
    # the validation the classifier uses, spelled out (its default included): one protocol
    val_size, val_per_class = validation_setting(
        labels,
        data.get("val_size"),
        data.get("val_per_class"),
        data.get("all_labels_val_size", ALL_LABELS_VAL_SIZE),
    )
    protocol = [
        f"data.{key}={_value(value)}"
        for key, value in (
            ("labels_per_class", labels),
            ("val_size", val_size),
            ("val_per_class", val_per_class),
            ("data_seed", data.get("data_seed")),
        )
    ]
    return [str(o) for o in block.generator] + shared + protocol


def _value(value: Any) -> str:
    return "null" if value is None else str(value)


def compose_train_config(overrides: list[str]) -> DictConfig:
    """The training config for ``overrides``, composed in this process."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="train", overrides=overrides)
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def stage_checkpoint(cfg: DictConfig) -> Path:
    """The checkpoint stage 1 (run with ``cfg``) was tested with: the kept best one when
    ``test_ckpt=best`` (and one exists), else its last checkpoint."""
    folder, last = checkpoint_dir(cfg), last_checkpoint_file(cfg)
    if cfg.get("test_ckpt") in ("best", "both"):
        kept = sorted(
            (p for p in folder.glob("*.ckpt") if p.name != last.name),
            key=lambda p: p.stat().st_mtime,
        )
        if kept:
            return kept[-1]
    if last.is_file():
        return last
    raise ConfigError(
        f"stage 1 wrote no checkpoint in {folder} (trainer.fast_dev_run disables "
        "checkpointing: use small trainer.max_epochs / limit_train_batches instead)"
    )


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    """The JSON-friendly scalar entries of a metrics dict."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool | int | str) or value is None:
            out[key] = value
        elif isinstance(value, float):
            out[key] = value if math.isfinite(value) else str(value)
    return out


def quoted(path: str | Path) -> str:
    """A path as a quoted override value (safe for any character but the quote)."""
    return "'" + str(path) + "'"


def run_stage(
    overrides: list[str], output_dir: Path, print_config: bool = False
) -> tuple[DictConfig, dict[str, Any]]:
    """Compose and train one stage writing to ``output_dir``: its config and metrics."""
    cfg = compose_train_config([*overrides, f"paths.output_dir={quoted(output_dir)}"])
    output_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, output_dir / "config.yaml")
    if print_config:
        print_config_tree(cfg, save_to=output_dir / "config_tree.log")
    log.info("Stage %s: %s", output_dir.name, " ".join(overrides))
    return cfg, train(cfg)


def run_two_stage(cfg: DictConfig, overrides: list[str], output_dir: str | Path) -> dict:
    """Run the stages for the composed config ``cfg`` of the command-line ``overrides``."""
    output_dir = Path(output_dir)
    print_config = bool(cfg.get("extras", {}).get("print_config"))
    stage1 = generator_overrides(cfg, overrides)
    generator_cfg = compose_train_config(stage1)
    if generator_cfg.data.dataset != cfg.data.dataset:
        raise ConfigError(
            f"two_stage.generator trains on data {generator_cfg.data.dataset}, the classifier on "
            f"{cfg.data.dataset}: make them the same dataset"
        )
    generator_cfg, generator_metrics = run_stage(stage1, output_dir / GENERATOR_DIR, print_config)
    checkpoint = stage_checkpoint(generator_cfg)
    stage2 = [*overrides, f"model.generator_ckpt={quoted(checkpoint)}"]
    _, classifier_metrics = run_stage(stage2, output_dir / CLASSIFIER_DIR, print_config)
    result: dict[str, Any] = {
        "generator_ckpt": str(checkpoint),
        "overrides": {"stage1_generator": stage1, "stage2_classifier": stage2},
        "stage1_generator": _scalars(generator_metrics),
        "stage2_classifier": _scalars(classifier_metrics),
    }
    runs, names = [classifier_metrics], ["real+synthetic"]
    if cfg.two_stage.get("baseline", True):
        baseline = [*overrides, "model.synthetic_ratio=0", "model.generator_ckpt=null"]
        _, baseline_metrics = run_stage(baseline, output_dir / BASELINE_DIR, print_config)
        result["overrides"]["baseline_classifier"] = baseline
        result["baseline_classifier"] = _scalars(baseline_metrics)
        if "test/acc" in classifier_metrics and "test/acc" in baseline_metrics:
            result["test_acc_gain"] = classifier_metrics["test/acc"] - baseline_metrics["test/acc"]
        runs.append(baseline_metrics)
        names.append("real only")
    runs.append(generator_metrics)
    names.append("generator (stage 1)")
    (output_dir / "two_stage.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    print_results_table(*runs, names=names, title=f"Two-stage results ({output_dir})")
    return result


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    """Hydra entry point: the composed config is the classifier stage's."""
    with exit_on_gendisc_error():
        result = run_two_stage(cfg, list(HydraConfig.get().overrides.task), cfg.paths.output_dir)
    name = cfg.get("optimized_metric")
    value = result["stage2_classifier"].get(f"{name}_best", result["stage2_classifier"].get(name))
    return float(value) if isinstance(value, float) else None


def main() -> None:
    """Console script ``gendisc-twostage``."""
    hydra_main()


if __name__ == "__main__":
    main()
