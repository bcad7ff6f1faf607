"""FixMatch (Sohn et al. 2020): the strongest simple semi-supervised baseline, on any gendisc
classifier net, to compare the generative modules with on the same net and labels.

Each step takes a labeled batch (x, y) and ``mu`` unlabeled batches of the same size. The
labeled images and the unlabeled ones get a weak view (``weak``: flip / translate), the
unlabeled ones also a strong view (``strong``: RandAugment + Cutout). One forward pass over
[weak(x), weak(u), strong(u)] (batch-norm statistics over all three, as in the authors' code);
the loss is ``CE(weak(x), y) + lambda_u * l_u``, with l_u = FixMatch's masked pseudo-label loss
(``gendisc.losses.fixmatch_unlabeled_loss``: the weak view's confident predictions, without
gradient, are the strong view's targets). Evaluation uses an exponential moving average of the
weights (``net_ema_decay``; null: the trained weights).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from gendisc.errors import ConfigError
from gendisc.guards import raise_if_not_finite
from gendisc.losses import fixmatch_unlabeled_loss
from gendisc.models.contract import Batch
from gendisc.models.evaluation import ClassifierEvaluation
from gendisc.nets.ema import ExponentialMovingAverage


class FixMatchModule(ClassifierEvaluation):
    """FixMatch on a classifier net.

    Args:
        net: partial of a classifier net (``in_shape``, ``num_classes``): the same nets as
            ``model=classifier`` (its labels-only baseline) and ssl_gan's discriminator.
        optimizer: partial of a torch optimizer (the net's parameters).
        in_shape, num_classes, class_names: filled in from the datamodule by ``build``.
        weak: the weak augmentation, a module mapping an image batch in [-1, 1] to one
            (``gendisc.data.augment.Augment``: flip and translation).
        strong: the strong augmentation (``gendisc.data.augment.RandAugmentCutout``).
        threshold: confidence above which a weak view's prediction becomes a pseudo-label.
        lambda_u: weight of the unlabeled loss.
        mu: unlabeled batches per labeled batch (each ``data.unlabeled_batch_size`` images,
            by default the labeled batch size: FixMatch's ratio mu).
        net_ema_decay: decay of the moving average of the weights evaluated (null: none).
        scheduler: optional partial of a torch lr scheduler (stepped each epoch).
    """

    def __init__(
        self,
        net: Callable[..., nn.Module],
        optimizer: Callable[..., Optimizer],
        in_shape: Sequence[int],
        num_classes: int,
        class_names: list[str] | None = None,
        weak: nn.Module | None = None,
        strong: nn.Module | None = None,
        threshold: float = 0.95,
        lambda_u: float = 1.0,
        mu: int = 7,
        net_ema_decay: float | None = 0.999,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(num_classes, class_names)
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"model.threshold={threshold}: a probability in [0, 1].")
        if lambda_u < 0 or int(mu) != mu or mu < 1:
            raise ConfigError(
                f"model.lambda_u={lambda_u}, model.mu={mu}: need lambda_u >= 0 and a whole mu >= 1."
            )
        if weak is None or strong is None:
            raise ConfigError("model.weak and model.strong: FixMatch needs both augmentations.")
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler", "weak", "strong"])
        self.net = net(in_shape=tuple(in_shape), num_classes=num_classes)
        self.weak = weak
        self.strong = strong
        self.threshold = float(threshold)
        self.lambda_u = float(lambda_u)
        self.unlabeled_streams = int(mu)  # the datamodule serves x_unl, x_unl2, ... x_unl<mu>
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.ema = ExponentialMovingAverage(self.net, net_ema_decay) if net_ema_decay else None

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def classify(self, x: Tensor) -> Tensor:
        """Class logits of the moving average of the weights when enabled."""
        return self.ema(x) if self.ema is not None else self.net(x)

    def on_fit_start(self) -> None:
        """Refuse a second augmentation on top of FixMatch's own views; give a net with
        minibatch discrimination its eval-mode reference batch (labeled images)."""
        datamodule = self.trainer.datamodule
        augment = getattr(datamodule, "augment", None)
        if augment is not None and augment.active:
            raise ConfigError(
                "model=fixmatch makes its own weak and strong views (model.weak, model.strong): "
                "use augment=none."
            )
        copies = [self.ema.shadow] if self.ema is not None else []
        self.ensure_minibatch_reference(
            self.net, lambda n: datamodule.labeled_sample(n, seed=1), copies
        )

    def unlabeled_images(self, batch: Batch) -> Tensor:
        """The step's mu unlabeled batches, as one."""
        keys = ["x_unl", *(f"x_unl{i}" for i in range(2, self.unlabeled_streams + 1))]
        missing = [key for key in keys if key not in batch]
        if missing:
            raise ConfigError(f"model=fixmatch: the training batch lacks {missing}.")
        return torch.cat([batch[key] for key in keys])

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        x, y = batch["x"], batch["y"]
        unlabeled = self.unlabeled_images(batch)
        views = torch.cat([self.weak(x), self.weak(unlabeled), self.strong(unlabeled)])
        logits = self.net(views)
        logits_x, logits_weak, logits_strong = logits.split(
            [len(x), len(unlabeled), len(unlabeled)]
        )
        supervised = F.cross_entropy(logits_x, y)
        unlabeled_loss, mask, _ = fixmatch_unlabeled_loss(
            logits_weak, logits_strong, self.threshold
        )
        loss = supervised + self.lambda_u * unlabeled_loss
        raise_if_not_finite(loss, "FixMatch loss", self)
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True)
        self.log("train/supervised_loss", supervised, on_step=False, on_epoch=True)
        self.log("train/unlabeled_loss", unlabeled_loss, on_step=False, on_epoch=True)
        # the share of unlabeled images above the threshold: how much of the pool is used
        self.log("train/mask_rate", mask.mean(), on_step=False, on_epoch=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.net)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=list(self.net.parameters()))
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer=optimizer)}
