"""Guards shared by every module's training step."""

from __future__ import annotations

import torch
from lightning import LightningModule, Trainer

from gendisc.errors import GendiscError


class NonFiniteLossError(GendiscError):
    """A loss became NaN or infinite: training stops, earlier checkpoints are kept."""


def last_checkpoint_path(trainer: Trainer | None) -> str:
    """The newest checkpoint the trainer's ModelCheckpoint callbacks wrote ('' if none yet).

    That is a callback's ``last_model_path`` (``save_last``) or, for a callback without a
    monitor (``conf/callbacks/last_checkpoint.yaml``: ``last.ckpt`` every epoch), its latest file.
    """
    if trainer is None:
        return ""
    for callback in trainer.checkpoint_callbacks:
        path = getattr(callback, "last_model_path", "") or (
            callback.best_model_path if getattr(callback, "monitor", "x") is None else ""
        )
        if path:
            return path
    return ""


def raise_if_not_finite(loss: torch.Tensor, name: str, module: LightningModule) -> None:
    """Stop the run with a clear message when ``loss`` is NaN/inf (the last checkpoint stays)."""
    if torch.isfinite(loss).all():
        return
    trainer = module._trainer
    where = f"epoch {trainer.current_epoch}, step {trainer.global_step}" if trainer else "training"
    checkpoint = last_checkpoint_path(trainer)
    kept = f" The last good checkpoint is {checkpoint}." if checkpoint else ""
    raise NonFiniteLossError(
        f"The {name} became {loss.detach().float().cpu().flatten()[0].item()} at {where}.{kept} "
        "Lower the learning rate (model.*optimizer.lr), enable gradient clipping "
        "(trainer.gradient_clip_val, automatic optimisation only) or check the data; resume "
        "with ckpt_path=<checkpoint>."
    )
