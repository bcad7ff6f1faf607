"""The joint adversarial module: a semi-supervised GAN whose discriminator is the classifier.

Salimans et al. 2016, section 5 and the authors' MNIST code: D has K logits and an implicit
"generated" logit fixed at 0; it minimises ``L_lab + w * L_unl`` on a labeled, an unlabeled and a
generated batch each step; G minimises feature matching (or a minimax / non-saturating loss).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics.classification import MulticlassAccuracy

from gendisc.errors import ConfigError
from gendisc.losses import (
    ssl_generator_minimax_loss,
    ssl_generator_nonsaturating_loss,
    ssl_supervised_loss,
    ssl_unsupervised_loss,
)
from gendisc.models.adversarial import AdversarialModule
from gendisc.models.bad_gan import BadGANTerms
from gendisc.models.contract import Batch
from gendisc.models.finetune import FineTuned, FineTuning
from gendisc.nets.layers import data_dependent_init

GeneratorObjective = Literal["feature_matching", "minimax", "non_saturating"]
GENERATOR_OBJECTIVES = ("feature_matching", "minimax", "non_saturating")


class SSLGANModule(FineTuned, AdversarialModule):
    """K+1-class semi-supervised GAN on the adversarial core (one D step, then G steps; see
    ``AdversarialModule`` for the options it shares with every adversarial module).

    Args:
        discriminator: partial of a classifier net (``in_shape``, ``num_classes``) exposing
            ``forward_with_features``; its techniques (minibatch discrimination, noise) are
            options of its config.
        generator: partial of a generator net (``out_shape``).
        d_optimizer, g_optimizer: partials of torch optimizers.
        in_shape, num_classes, class_names: from the data (``gendisc.models.contract``).
        generator_objective: G's loss: feature_matching (the paper's SSL choice), minimax or
            non_saturating (the K+1-class forms of the GAN's losses of those names).
        unlabeled_weight: w in ``L_lab + w * L_unl``.
        separate_feature_batch: take the real feature statistics from a second unlabeled batch.
        adversarial: the adversarial core's options (``AdversarialOptions``: update ratio,
            feature layer and norm, data-dependent init, moving averages of D and G, learning
            rate decay, the concatenated D pass).
        bad_gan: null, or the Bad GAN terms' options (``gendisc.models.bad_gan.BadGANTerms``):
            a complement generator (Dai et al. 2017).
        finetune: how D's backbone trains beside its head (``gendisc.models.finetune``: a
            pretrained D frozen, unfrozen at an epoch, or at a smaller rate); null: all of it.
    """

    finetuned_net = "discriminator"  # model.finetune applies to D (FineTuned)

    def __init__(
        self,
        discriminator: Callable[..., nn.Module],
        generator: Callable[..., nn.Module],
        d_optimizer: Callable[..., Optimizer],
        g_optimizer: Callable[..., Optimizer],
        in_shape: Sequence[int],
        num_classes: int,
        class_names: list[str] | None = None,
        generator_objective: GeneratorObjective = "feature_matching",
        unlabeled_weight: float = 1.0,
        separate_feature_batch: bool = True,
        adversarial: dict[str, Any] | None = None,
        bad_gan: dict[str, Any] | None = None,
        finetune: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(num_classes, class_names, adversarial)
        if generator_objective not in GENERATOR_OBJECTIVES:
            raise ConfigError(
                f"model.generator_objective={generator_objective!r}: choose one of "
                f"{GENERATOR_OBJECTIVES}"
            )
        self.save_hyperparameters(
            ignore=["discriminator", "generator", "d_optimizer", "g_optimizer", "bad_gan"]
        )
        self.discriminator = discriminator(in_shape=tuple(in_shape), num_classes=num_classes)
        self.finetune = FineTuning(**(finetune or {}))
        self.finetune.start(self.discriminator)
        self.generator = generator(out_shape=tuple(in_shape))
        self.bad_gan = (
            BadGANTerms(tuple(in_shape), self.generator.latent_dim, **bad_gan) if bad_gan else None
        )
        self.d_optimizer_factory = d_optimizer
        self.g_optimizer_factory = g_optimizer
        self.generator_objective = generator_objective
        self.unlabeled_weight = unlabeled_weight
        self.build_emas()
        # the raw D's validation accuracy, beside the EMA's (only when the EMA is evaluated)
        self.val_acc_raw = (
            MulticlassAccuracy(num_classes, average="micro") if self.d_ema is not None else None
        )
        uses_feature_batch = generator_objective == "feature_matching" and separate_feature_batch
        # the datamodule yields this many unlabeled batches per step (x_unl, x_unl2)
        self.unlabeled_streams = 2 if uses_feature_batch else 1

    # ----------------------------------------------------------------------------- evaluation
    def forward(self, x: Tensor) -> Tensor:
        return self.discriminator(x)

    def classify(self, x: Tensor) -> Tensor:
        """K class logits from the EMA discriminator when enabled (noise off in eval mode)."""
        return self.d_ema.shadow(x) if self.d_ema is not None else self.discriminator(x)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Validation metrics of the evaluated D (EMA when enabled); with the EMA on, also the
        accuracy of the raw D as ``val/acc_raw`` (how far the average lags or smooths)."""
        super().validation_step(batch, batch_idx)
        if self.val_acc_raw is not None:
            images, labels = batch["x"], batch["y"]
            self.val_acc_raw.update(self.discriminator(images), labels)
            self.log("val/acc_raw", self.val_acc_raw, on_epoch=True)

    def sample(self, count: int) -> Tensor:
        """``count`` images in [-1, 1] from the trained generator (the one D plays against)."""
        return self.generator(self.generator.sample_latent(count, device=self.device))

    # ------------------------------------------------------------------------------- training
    def on_fit_start(self) -> None:
        """The core's data-dependent init, then Bad GAN's density model and threshold."""
        super().on_fit_start()
        if self.bad_gan is not None:
            datamodule = self.trainer.datamodule
            self.bad_gan.load_density(lambda n: datamodule.unlabeled_sample(n, seed=2), self.device)

    def data_init(self, count: int) -> None:
        """D's layers from ``count`` unlabeled images (a fixed draw), G's from ``count`` latents."""
        images = self.trainer.datamodule.unlabeled_sample(count, seed=0)
        data_dependent_init(self.discriminator, images.to(self.device))
        data_dependent_init(self.generator, self.generator.sample_latent(count, device=self.device))

    def discriminator_loss(self, batch: Batch, batch_idx: int) -> tuple[Tensor, dict]:
        """``L_lab + w * L_unl`` on the labeled, unlabeled and a generated batch."""
        x_lab, y_lab, x_unl = batch["x"], batch["y"], batch["x_unl"]
        with torch.no_grad():
            fake = self.sample(len(x_unl))
        # one pass over the three batches when D has no batch-dependent layer; otherwise
        # separate passes, as in the authors' code (minibatch discrimination must not mix
        # real and generated images)
        logits_lab, logits_unl, logits_fake = (
            logits.float()  # the losses in float32 also under bf16 autocast
            for logits in self.discriminate_batches(
                self.discriminator, [(x_lab,), (x_unl,), (fake,)]
            )
        )
        loss_lab = ssl_supervised_loss(logits_lab, y_lab)
        loss_unl = ssl_unsupervised_loss(logits_unl, logits_fake)
        d_loss = loss_lab + self.unlabeled_weight * loss_unl
        bad_gan_stats = {}
        if self.bad_gan is not None:
            extra, bad_gan_stats = self.bad_gan.discriminator_term(logits_unl)
            d_loss = d_loss + extra
        with torch.no_grad():
            stats = {
                "train/loss_lab": loss_lab,
                "train/loss_unl": loss_unl,
                "train/acc": (logits_lab.argmax(1) == y_lab).float().mean(),
                "train/d_real": torch.sigmoid(torch.logsumexp(logits_unl, 1)).mean(),
                "train/d_fake": torch.sigmoid(torch.logsumexp(logits_fake, 1)).mean(),
                **bad_gan_stats,
            }
        return d_loss, stats

    def generator_loss(self, batch: Batch, batch_idx: int) -> Tensor:
        """The configured generator objective on a fresh generated batch (plus the Bad GAN
        terms when ``bad_gan`` is set)."""
        x_real = batch.get("x_unl2", batch["x_unl"])
        z = self.generator.sample_latent(len(batch["x_unl"]), device=self.device)
        fake = self.generator(z)
        if self.generator_objective == "feature_matching":
            loss = self.feature_matching(
                lambda x: self.discriminator.forward_with_features(x)[1], (fake,), (x_real,)
            )
        else:
            logits_fake = self.discriminator(fake).float()
            loss = (
                ssl_generator_minimax_loss(logits_fake)
                if self.generator_objective == "minimax"
                else ssl_generator_nonsaturating_loss(logits_fake)
            )
        if self.bad_gan is None:
            return loss
        return loss + self.bad_gan.generator_term(
            fake,
            z,
            features=lambda x: self.discriminator.forward_with_features(x)[1][self.feature_layer],
            sample=self.sample,
            epoch=self.current_epoch,
        )

    def configure_optimizers(self) -> Any:
        d_optimizer = self.d_optimizer_factory(
            params=self.finetune.parameter_groups(self.discriminator)
        )
        self.finetune.scale_backbone_lr(d_optimizer)
        g_parameters = list(self.generator.parameters())
        if self.bad_gan is not None and self.bad_gan.encoder is not None:
            g_parameters += list(self.bad_gan.encoder.parameters())  # trained with G
        g_optimizer = self.g_optimizer_factory(params=g_parameters)
        return self.with_lr_decay([d_optimizer, g_optimizer])
