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


class NonFiniteCheck:
    """The NaN/inf guard of a training loop without a host-device sync on every step.

    On the CPU a check costs nothing and runs on every loss. On an accelerator, reading a
    loss back stalls the launch queue, so the losses' finiteness is accumulated on the device
    and read every ``every`` steps and on the epoch's last step (before validation and the
    checkpoint): the run still stops before anything is saved after the bad step.
    """

    def __init__(self, module: LightningModule, every: int = 25) -> None:
        self.module = module
        self.every = int(every)
        self._bad: torch.Tensor | None = None
        self._first_name = ""

    def check(self, loss: torch.Tensor, name: str, batch_idx: int) -> None:
        """Raise ``NonFiniteLossError`` (now or at the next read) when ``loss`` is NaN/inf."""
        if loss.device.type == "cpu":
            raise_if_not_finite(loss, name, self.module)
            return
        bad = ~torch.isfinite(loss.detach()).all()
        if self._bad is None:
            self._bad, self._first_name = bad, name
        else:
            self._bad = self._bad | bad
        trainer = self.module._trainer
        last = trainer is not None and batch_idx + 1 >= _batches_per_epoch(trainer)
        if last or (batch_idx + 1) % self.every == 0:
            flagged, self._bad = bool(self._bad), None
            if flagged:
                raise_if_not_finite(
                    torch.tensor(float("nan")), f"{self._first_name} or a later loss", self.module
                )


def _batches_per_epoch(trainer: Trainer) -> int:
    count = trainer.num_training_batches
    return int(count) if isinstance(count, int | float) and count != float("inf") else 1 << 62
