"""Fine-tuning a (pretrained) classifier net: its backbone frozen, unfrozen later, or slower.

One sub-config, ``model.finetune`` (``conf/model/finetune/default.yaml``), used the same way by
every module whose classifier net may start from pretrained weights: ``model=classifier`` (and
the classifier of ``augmented_classifier``) and ``model=ssl_gan``'s discriminator. The head is
what ``gendisc.nets.classifiers.HEAD_PREFIXES`` names (the task's last layer and any minibatch-discrimination layer);
everything else is the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

from torch import nn

from gendisc.errors import ConfigError
from gendisc.nets.classifiers import is_head

__all__ = ["FineTuned", "FineTuning"]


@dataclass
class FineTuning:
    """How a classifier net's backbone trains beside its head.

    Args:
        freeze_backbone: train only the head; the backbone's batch-norm statistics and dropout
            stay in eval mode meanwhile.
        unfreeze_epoch: with ``freeze_backbone``, train the whole net from this epoch on (null:
            frozen throughout).
        backbone_lr_scale: the backbone's learning rate relative to the head's (e.g. 0.1 for a
            pretrained trunk); 1: one parameter group.
    """

    freeze_backbone: bool = False
    unfreeze_epoch: int | None = None
    backbone_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.unfreeze_epoch is not None and (
            not self.freeze_backbone or self.unfreeze_epoch < 1
        ):
            raise ConfigError(
                f"model.finetune.unfreeze_epoch={self.unfreeze_epoch}: unfreezes a frozen "
                "backbone, so it needs model.finetune.freeze_backbone=true and an epoch >= 1."
            )
        if self.backbone_lr_scale < 0:
            raise ConfigError(
                f"model.finetune.backbone_lr_scale={self.backbone_lr_scale}: must be >= 0."
            )
        self.backbone_lr_scale = float(self.backbone_lr_scale)
        self.frozen = False

    def set_frozen(self, net: nn.Module, frozen: bool) -> None:
        """Freeze (or unfreeze) every parameter of ``net`` outside its head; a frozen
        backbone's layers in eval mode, an unfrozen one's in ``net``'s mode."""
        self.frozen = frozen
        for name, parameter in net.named_parameters():
            parameter.requires_grad_(not frozen or is_head(name))
        for name, child in net.named_children():
            if not is_head(name):
                child.train(net.training and not frozen)

    def start(self, net: nn.Module) -> None:
        """Freeze the backbone at the start when ``freeze_backbone``."""
        if self.freeze_backbone:
            self.set_frozen(net, True)

    def on_epoch_start(self, net: nn.Module, epoch: int) -> None:
        """Unfreeze the backbone at ``unfreeze_epoch`` (also when resuming past it)."""
        if self.frozen and self.unfreeze_epoch is not None and epoch >= self.unfreeze_epoch:
            self.set_frozen(net, False)

    def keep_frozen_in_eval(self, net: nn.Module) -> None:
        """After ``train()``: a frozen backbone's batch-norm and dropout layers back to eval."""
        if self.frozen:
            for name, child in net.named_children():
                if not is_head(name):
                    child.eval()

    def parameter_groups(self, net: nn.Module) -> list[Any]:
        """``net``'s parameters for its optimiser: the head and the backbone, the backbone as a
        second group (at ``backbone_lr_scale`` x the rate, see ``scale_backbone_lr``) when the
        scale is not 1. A backbone frozen until ``unfreeze_epoch`` is in it from the start (no
        gradient, so no update, until then); one frozen throughout is left out."""
        trains_later = not self.frozen or self.unfreeze_epoch is not None
        head = [p for n, p in net.named_parameters() if is_head(n)]
        backbone = [p for n, p in net.named_parameters() if not is_head(n) and trains_later]
        if self.backbone_lr_scale == 1.0:
            kept = {id(p) for p in (*head, *backbone)}
            return [p for p in net.parameters() if id(p) in kept]
        return [{"params": head}, {"params": backbone}]

    def scale_backbone_lr(self, optimizer: Any) -> None:
        """Set the backbone group's rate to ``backbone_lr_scale`` x the head's (after the
        optimiser is built from ``parameter_groups``)."""
        if self.backbone_lr_scale != 1.0:
            optimizer.param_groups[1]["lr"] = (
                optimizer.param_groups[0]["lr"] * self.backbone_lr_scale
            )


class FineTuned:
    """Mixin of a LightningModule whose classifier net (the attribute ``finetuned_net`` names)
    follows ``self.finetune``: unfrozen at ``unfreeze_epoch``, and a frozen backbone's batch norm
    and dropout kept in eval mode whenever the module is put in training mode."""

    finetuned_net: str = "net"
    finetune: FineTuning

    def on_train_epoch_start(self) -> None:
        self.finetune.on_epoch_start(getattr(self, self.finetuned_net), self.current_epoch)

    def train(self, mode: bool = True) -> Self:
        super().train(mode)
        if mode and hasattr(self, "finetune"):  # train() also runs inside nn.Module.__init__
            self.finetune.keep_frozen_in_eval(getattr(self, self.finetuned_net))
        return self
