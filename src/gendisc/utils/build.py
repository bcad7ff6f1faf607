"""Build a run's datamodule and model from its composed config (shared by the entry points)."""

from __future__ import annotations

import hydra
import lightning as L
from omegaconf import DictConfig

from gendisc.errors import ConfigError
from gendisc.models.contract import missing_parts
from gendisc.utils.config import check_renamed_keys


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule]:
    """The datamodule (data read, label protocol applied) and the model sized for its data;
    the datamodule serves as many unlabeled streams per step as the model asks for and applies
    ``cfg.augment`` (absent from configs stored before it existed: no augmentation). A model
    option that was renamed is refused with the name to use instead."""
    check_renamed_keys(cfg.model)
    augment = hydra.utils.instantiate(cfg.augment) if cfg.get("augment") else None
    datamodule = hydra.utils.instantiate(cfg.data, augment=augment, _convert_="all")
    datamodule.load()
    model = hydra.utils.instantiate(
        cfg.model,
        in_shape=list(datamodule.image_shape),
        num_classes=datamodule.num_classes,
        class_names=datamodule.class_names,
        _convert_="all",
    )
    missing = missing_parts(model)
    if missing:
        raise ConfigError(
            f"model._target_={cfg.model.get('_target_')} is not a gendisc model: it lacks "
            f"{', '.join(missing)} (the model contract: gendisc/models/contract.py; README "
            "'Add a model'). Subclass gendisc.models.evaluation.ClassifierEvaluation and set "
            "unlabeled_streams."
        )
    datamodule.unlabeled_streams = int(model.unlabeled_streams)
    return datamodule, model
