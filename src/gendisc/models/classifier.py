"""The discriminative baseline: a classifier trained on the labeled examples only."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from gendisc.guards import raise_if_not_finite
from gendisc.models.contract import Batch
from gendisc.models.evaluation import ClassifierEvaluation
from gendisc.models.finetune import FineTuned, FineTuning
from gendisc.models.transfer import TransferReport, load_backbone_weights


class ClassifierModule(FineTuned, ClassifierEvaluation):
    """Supervised classifier on the labeled batch ``x, y`` of each step.

    Args:
        net: partial of a classifier net, called with ``in_shape`` and ``num_classes``.
        optimizer: partial of a torch optimizer, called with the trainable parameters.
        scheduler: optional partial of a torch lr scheduler (stepped each epoch).
        in_shape, num_classes, class_names: filled in from the datamodule by
            ``gendisc.utils.build.build``.
        init_from: checkpoint to copy matching backbone weights from (transfer learning).
        finetune: how the backbone trains beside the head (``gendisc.models.finetune``:
            freeze_backbone, unfreeze_epoch, backbone_lr_scale); null: all of it, at the rate.
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
        finetune: dict[str, Any] | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(num_classes, class_names)
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net(in_shape=tuple(in_shape), num_classes=num_classes)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.finetune = FineTuning(**(finetune or {}))
        self.label_smoothing = label_smoothing
        self.transfer_report: TransferReport | None = None
        if init_from:
            self.transfer_report = load_backbone_weights(self.net, init_from)
        self.finetune.start(self.net)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def on_fit_start(self) -> None:
        """A net with minibatch discrimination gets its eval-mode reference batch from the
        labeled images (the only ones a supervised classifier trains on), unless restored."""
        datamodule = self.trainer.datamodule
        self.ensure_minibatch_reference(self.net, lambda n: datamodule.labeled_sample(n, seed=1))

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        logits = self(batch["x"])
        loss = F.cross_entropy(logits, batch["y"], label_smoothing=self.label_smoothing)
        raise_if_not_finite(loss, "classifier loss", self)
        accuracy = (logits.argmax(1) == batch["y"]).float().mean()
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True)
        self.log("train/acc", accuracy, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> Any:
        """One optimiser over the head and the backbone (``FineTuning.parameter_groups``)."""
        optimizer = self.optimizer_factory(params=self.finetune.parameter_groups(self.net))
        self.finetune.scale_backbone_lr(optimizer)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer=optimizer)}
