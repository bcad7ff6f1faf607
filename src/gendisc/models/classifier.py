"""The discriminative baseline: a classifier trained on the labeled examples only."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from gendisc.errors import ConfigError
from gendisc.guards import raise_if_not_finite
from gendisc.models.evaluation import ClassifierEvaluation
from gendisc.models.transfer import HEAD_PREFIXES, TransferReport, load_backbone_weights


class ClassifierModule(ClassifierEvaluation):
    """Supervised classifier on the labeled batch ``x, y`` of each step.

    Args:
        net: partial of a classifier net, called with ``in_shape`` and ``num_classes``.
        optimizer: partial of a torch optimizer, called with the trainable parameters.
        scheduler: optional partial of a torch lr scheduler (stepped each epoch).
        in_shape, num_classes, class_names: filled in from the datamodule by
            ``gendisc.utils.build.build``.
        init_from: checkpoint to copy matching backbone weights from (transfer learning).
        freeze_backbone: train only the head (and minibatch-discrimination layer, if any);
            the backbone's batch-norm statistics and dropout stay in eval mode meanwhile.
        unfreeze_epoch: with ``freeze_backbone``, train the whole net from this epoch on (null:
            frozen throughout).
        backbone_lr_scale: the backbone's learning rate relative to the head's (e.g. 0.1 for a
            pretrained trunk).
        label_smoothing: cross-entropy label smoothing.
    """

    unlabeled_streams = 0

    def __init__(
        self,
        net: Callable[..., nn.Module],
        optimizer: Callable[..., Optimizer],
        in_shape: Sequence[int],
        num_classes: int,
        class_names: list[str] | None = None,
        scheduler: Callable[..., Any] | None = None,
        init_from: str | None = None,
        freeze_backbone: bool = False,
        label_smoothing: float = 0.0,
        unfreeze_epoch: int | None = None,
        backbone_lr_scale: float = 1.0,
    ) -> None:
        super().__init__(num_classes, class_names)
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net(in_shape=tuple(in_shape), num_classes=num_classes)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        if unfreeze_epoch is not None and (not freeze_backbone or unfreeze_epoch < 1):
            raise ConfigError(
                f"model.unfreeze_epoch={unfreeze_epoch}: unfreezes a frozen backbone, so it needs "
                "model.freeze_backbone=true and an epoch >= 1."
            )
        if backbone_lr_scale < 0:
            raise ConfigError(f"model.backbone_lr_scale={backbone_lr_scale}: must be >= 0.")
        self.unfreeze_epoch = unfreeze_epoch
        self.backbone_lr_scale = float(backbone_lr_scale)
        self.backbone_frozen = False
        self.label_smoothing = label_smoothing
        self.transfer_report: TransferReport | None = None
        if init_from:
            self.transfer_report = load_backbone_weights(self.net, init_from)
        if freeze_backbone:
            self.set_backbone_frozen(True)

    def set_backbone_frozen(self, frozen: bool) -> None:
        """Freeze (or unfreeze) every net parameter outside the head."""
        self.backbone_frozen = frozen
        for name, parameter in self.net.named_parameters():
            parameter.requires_grad_(not frozen or name.startswith(HEAD_PREFIXES))
        self.train(self.training)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def on_fit_start(self) -> None:
        """A net with minibatch discrimination gets its eval-mode reference batch from the
        labeled images (the only ones a supervised classifier trains on), unless restored."""
        datamodule = self.trainer.datamodule
        self.ensure_minibatch_reference(self.net, lambda n: datamodule.labeled_sample(n, seed=1))

    def on_train_epoch_start(self) -> None:
        """Unfreeze the backbone at ``unfreeze_epoch`` (also when resuming past it)."""
        unfreeze = self.unfreeze_epoch
        if self.backbone_frozen and unfreeze is not None and self.current_epoch >= unfreeze:
            self.set_backbone_frozen(False)

    def train(self, mode: bool = True) -> ClassifierModule:
        """A frozen backbone also keeps its batch-norm statistics and dropout in eval mode."""
        super().train(mode)
        if mode and getattr(self, "backbone_frozen", False):
            for name, module in self.net.named_children():
                if not f"{name}.".startswith(HEAD_PREFIXES):
                    module.eval()
        return self

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self(batch["x"])
        loss = F.cross_entropy(logits, batch["y"], label_smoothing=self.label_smoothing)
        raise_if_not_finite(loss, "classifier loss", self)
        accuracy = (logits.argmax(1) == batch["y"]).float().mean()
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True)
        self.log("train/acc", accuracy, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> Any:
        """One optimiser over the head and the backbone; with ``backbone_lr_scale`` != 1 the
        backbone is a second parameter group at that multiple of the rate. A backbone frozen
        until ``unfreeze_epoch`` is in it from the start: its parameters have no gradient (so
        no update) until then."""
        head, backbone = [], []
        for name, parameter in self.net.named_parameters():
            if name.startswith(HEAD_PREFIXES):
                head.append(parameter)
            elif not self.backbone_frozen or self.unfreeze_epoch is not None:
                backbone.append(parameter)
        if self.backbone_lr_scale == 1.0:
            kept = {id(p) for p in (*head, *backbone)}
            groups: list[Any] = [p for p in self.net.parameters() if id(p) in kept]
        else:
            groups = [{"params": head}, {"params": backbone}]
        optimizer = self.optimizer_factory(params=groups)
        if self.backbone_lr_scale != 1.0:
            optimizer.param_groups[1]["lr"] *= self.backbone_lr_scale
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer=optimizer)}
