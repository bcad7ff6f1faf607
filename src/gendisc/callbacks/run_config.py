"""Store the composed run config in every checkpoint, so a checkpoint alone rebuilds its run."""

from __future__ import annotations

from typing import Any

from lightning import Callback, LightningModule, Trainer

from gendisc.checkpoints import CONFIG_KEY


class StoreRunConfig(Callback):
    """Adds the resolved config (a plain dict) to each checkpoint under ``gendisc_config``."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CONFIG_KEY] = self.config
