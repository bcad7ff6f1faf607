"""Guards shared by every module's training step."""

from __future__ import annotations

import torch
from lightning import LightningModule

from gendisc.errors import GendiscError


class NonFiniteLossError(GendiscError):
    """A loss became NaN or infinite: training stops, earlier checkpoints are kept."""


def raise_if_not_finite(loss: torch.Tensor, name: str, module: LightningModule) -> None:
    """Stop the run with a clear message when ``loss`` is NaN/inf (the last checkpoint stays)."""
    if torch.isfinite(loss).all():
        return
    trainer = module._trainer
    where = f"epoch {trainer.current_epoch}, step {trainer.global_step}" if trainer else "training"
    checkpoint = getattr(trainer.checkpoint_callback, "last_model_path", "") if trainer else ""
    kept = f" The last good checkpoint is {checkpoint}." if checkpoint else ""
    raise NonFiniteLossError(
        f"The {name} became {loss.detach().float().cpu().flatten()[0].item()} at {where}.{kept} "
        "Lower the learning rate (model.*optimizer.lr), enable gradient clipping "
        "(trainer.gradient_clip_val, automatic optimisation only) or check the data; resume "
        "with ckpt_path=<checkpoint>."
    )
