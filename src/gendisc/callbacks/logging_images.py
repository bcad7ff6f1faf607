"""Send a figure or image to every logger the trainer has (CSV, TensorBoard, wandb, ...)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from lightning import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from matplotlib.figure import Figure


def figure_to_array(figure: Figure) -> np.ndarray:
    """RGB uint8 array (H, W, 3) of a rendered matplotlib figure."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def log_image(
    trainer: Trainer, key: str, image: np.ndarray | Figure, step: int | None = None
) -> None:
    """Log ``image`` (RGB uint8 HxWx3, or a figure) under ``key`` with every active logger.

    Loggers without image support (CSV) get a PNG in their log directory.
    """
    step = trainer.global_step if step is None else step
    array = figure_to_array(image) if isinstance(image, Figure) else image
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, array, global_step=step, dataformats="HWC")
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[array], step=None)
        elif isinstance(logger, CSVLogger):
            folder = Path(logger.log_dir) / "images"
            folder.mkdir(parents=True, exist_ok=True)
            from PIL import Image

            Image.fromarray(array).save(folder / f"{key.replace('/', '_')}_step{step}.png")
        elif hasattr(logger, "log_image"):
            logger.log_image(key=key, images=[array], step=step)
