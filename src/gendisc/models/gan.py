"""Generative adversarial network, unconditional or class-conditional, with the techniques of
Salimans et al. 2016 ("Improved Techniques for Training GANs") as independent switches.

The discriminator is a classifier net of ``gendisc.nets`` built with one output (the real/fake
logit), so its backbone (``discriminator.body.*``) transfers to a classifier with
``model.init_from``. Class conditioning of D is either by projection (Miyato & Koyama 2018:
``logit(x, y) = head(phi(x)) + <embed(y), phi(x)>``, phi = the input of D's head) or by
concatenating one-hot label planes to the image; the generator receives ``y`` as a one-hot code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from gendisc.errors import ConfigError
from gendisc.losses import GAN_KINDS, HistoricalAverage, discriminator_loss, generator_loss
from gendisc.models.adversarial import AdversarialModule
from gendisc.models.contract import Batch
from gendisc.nets.layers import data_dependent_init

Conditioning = Literal["projection", "concat"]


def label_planes(y: Tensor, num_classes: int, like: Tensor) -> Tensor:
    """One-hot labels as constant (N, K, H, W) planes shaped like the images ``like``."""
    n, _, h, w = like.shape
    return (
        F.one_hot(y.long(), num_classes)
        .to(like.dtype)
        .view(n, num_classes, 1, 1)
        .expand(n, num_classes, h, w)
    )


def annealed_sigma(sigma: float, anneal_epochs: float, progress: float) -> float:
    """Instance-noise level after ``progress`` epochs: ``sigma`` decayed linearly to 0 over
    ``anneal_epochs`` (constant when ``anneal_epochs`` is 0)."""
    if anneal_epochs <= 0:
        return sigma
    return sigma * max(0.0, 1.0 - progress / anneal_epochs)


@dataclass
class GANRegularizers:
    """``model.regularizers`` of ``model=gan`` (Salimans et al. 2016, section 3; 0 / 1: off).

    Args:
        historical_averaging: weight of the penalty ||theta - mean of past theta||^2 of both
            players.
        real_target: target of real images in D's loss; < 1 is one-sided label smoothing (the
            paper: 0.9).
        instance_noise: sigma of Gaussian noise added to every image D sees, decayed linearly to
            0 over ``instance_noise_anneal_epochs`` (0: constant).
    """

    historical_averaging: float = 0.0
    real_target: float = 1.0
    instance_noise: float = 0.0
    instance_noise_anneal_epochs: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.real_target <= 1.0:
            raise ConfigError(
                f"model.regularizers.real_target={self.real_target}: must be in (0, 1]"
            )
        for name in ("historical_averaging", "real_target", "instance_noise"):
            setattr(self, name, float(getattr(self, name)))
        self.instance_noise_anneal_epochs = float(self.instance_noise_anneal_epochs)


class GANModule(AdversarialModule):
    """GAN on the adversarial core: one D update per batch, G updated every
    ``d_steps_per_g_step`` batches, ``g_steps_per_d_step`` times (see ``AdversarialModule`` for
    the options it shares with every adversarial module).

    Args:
        discriminator: partial of a classifier net (``in_shape``, ``num_classes``); built with
            one output. Its config holds minibatch discrimination, weight / spectral norm.
        generator: partial of a generator net (``latent_dim``, ``out_shape``, ``num_classes``);
            its config holds virtual batch norm and weight norm.
        d_optimizer, g_optimizer: partials of torch optimizers.
        conditional: class-conditional G and D, trained on the labeled batch; otherwise the
            GAN is trained on the unlabeled pool (every training image).
        conditioning: how D sees the label: ``projection`` or ``concat``.
        loss: D's adversarial loss: non_saturating, minimax or hinge (``gendisc.losses``).
        generator_objective: G's loss: feature_matching (the batch means of D's hidden layer
            ``feature_layer``, norm ``feature_norm``), or an adversarial loss (non_saturating,
            minimax, hinge); None: the adversarial loss named by ``loss``.
        regularizers: the game's regularizers (:class:`GANRegularizers`: historical averaging,
            one-sided label smoothing, instance noise); null: all off.
        adversarial: the adversarial core's options (``AdversarialOptions``: update ratio,
            feature layer and norm, data-dependent init, the moving average of G used for
            samples and metrics, learning-rate decay, the concatenated D pass; a GAN evaluates
            no D, so ``d_ema_decay`` stays null).
    """

    # no validation metric selects a GAN's weights (the last ones are tested); sample grids and
    # generative metrics on (gendisc.models.contract)
    selection_metric = None
    generative_callbacks = True

    def __init__(
        self,
        discriminator: Callable[..., nn.Module],
        generator: Callable[..., nn.Module],
        d_optimizer: Callable[..., Optimizer],
        g_optimizer: Callable[..., Optimizer],
        in_shape: Sequence[int],
        num_classes: int,
        class_names: list[str] | None = None,
        conditional: bool = True,
        conditioning: Conditioning = "projection",
        loss: str = "non_saturating",
        generator_objective: str | None = None,
        regularizers: dict[str, float] | None = None,
        adversarial: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(num_classes, class_names, adversarial)
        if self.adversarial.d_ema_decay:
            raise ConfigError(
                "model.adversarial.d_ema_decay: a GAN evaluates no discriminator; keep it null "
                "(model.adversarial.g_ema_decay averages G for samples and metrics)"
            )
        self.save_hyperparameters(
            ignore=["discriminator", "generator", "d_optimizer", "g_optimizer"]
        )
        if loss not in GAN_KINDS:
            raise ConfigError(f"model.loss={loss!r}: choose one of {GAN_KINDS}")
        objective = loss if generator_objective is None else generator_objective
        if objective not in ("feature_matching", *GAN_KINDS):
            raise ConfigError(
                f"model.generator_objective={objective!r}: choose feature_matching or one of "
                f"{GAN_KINDS}"
            )
        if conditioning not in ("projection", "concat"):
            raise ConfigError(f"model.conditioning={conditioning!r}: choose projection or concat")
        reg = GANRegularizers(**(regularizers or {}))
        self.in_shape = tuple(int(v) for v in in_shape)
        self.conditional = bool(conditional)
        self.conditioning = conditioning
        k = num_classes if self.conditional else 0
        d_shape = self.in_shape
        if self.conditional and conditioning == "concat":
            d_shape = (self.in_shape[0] + num_classes, *self.in_shape[1:])
        self.discriminator = discriminator(in_shape=d_shape, num_classes=1)
        self.projection: nn.Embedding | None = None
        if self.conditional and conditioning == "projection":
            mbd = self.discriminator.minibatch_disc
            width = mbd.out_features if mbd is not None else self.discriminator.feature_dim
            self.projection = nn.Embedding(num_classes, width)
            nn.init.normal_(self.projection.weight, std=0.02)
        self.generator = generator(out_shape=self.in_shape, num_classes=k)
        self.d_optimizer_factory = d_optimizer
        self.g_optimizer_factory = g_optimizer
        self.loss = loss
        self.generator_objective = objective
        self.historical_averaging = reg.historical_averaging
        self.real_target = reg.real_target
        self.instance_noise = reg.instance_noise
        self.instance_noise_anneal_epochs = reg.instance_noise_anneal_epochs
        self.build_emas()
        if self.historical_averaging > 0:
            self.d_history = HistoricalAverage(self.discriminator)
            self.p_history = HistoricalAverage(self.projection) if self.projection else None
            self.g_history = HistoricalAverage(self.generator)
        # the conditional GAN learns from the labeled batch, the unconditional one from the pool
        self.unlabeled_streams = 0 if self.conditional else 1

    # -------------------------------------------------------------------------- discriminator
    def discriminate(
        self, x: Tensor, y: Tensor | None = None, noise: float = 0.0
    ) -> tuple[Tensor, list[Tensor]]:
        """D's real/fake logit (N,) and its hidden features for images ``x`` (labels ``y``)."""
        if noise > 0:
            x = x + noise * torch.randn_like(x)
        if self.conditional and self.conditioning == "concat":
            x = torch.cat([x, label_planes(y, self.num_classes, x)], dim=1)
        net = self.discriminator
        h, features = net.embed(x)
        logit = net.head(h).squeeze(1)
        if self.projection is not None:
            logit = logit + (self.projection(y) * h).sum(dim=1)
        return logit, features

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.discriminate(x, y)[0]

    def classify(self, x: Tensor) -> Tensor:
        """Class scores of a conditional D: ``logit(x, k)`` for every class k (the generative
        classifier ``argmax_k D(x, k)``)."""
        if not self.conditional:
            raise ConfigError("an unconditional GAN has no class scores")
        if self.projection is not None:
            h, _ = self.discriminator.embed(x)
            return self.discriminator.head(h) + h @ self.projection.weight.t()
        n = x.shape[0]
        scores = [self(x, torch.full((n,), k, device=x.device)) for k in range(self.num_classes)]
        return torch.stack(scores, dim=1)

    # ------------------------------------------------------------------------------ sampling
    def _fake_labels(self, n: int) -> Tensor | None:
        if not self.conditional:
            return None
        return torch.randint(self.num_classes, (n,), device=self.device)

    def _generate(self, n: int) -> tuple[Tensor, Tensor | None]:
        y = self._fake_labels(n)
        z = self.generator.sample_latent(n, device=self.device)
        return self.generator(z, y), y

    # ------------------------------------------------------------------------------- training
    def current_instance_noise(self, batch_idx: int = 0) -> float:
        """The instance-noise sigma at this point of training."""
        if self.instance_noise <= 0:
            return 0.0
        trainer = self._trainer
        progress = 0.0
        if trainer is not None:
            steps = trainer.num_training_batches
            steps = int(steps) if isinstance(steps, int) and steps > 0 else 1
            progress = trainer.current_epoch + batch_idx / steps
        return annealed_sigma(self.instance_noise, self.instance_noise_anneal_epochs, progress)

    def data_init(self, count: int) -> None:
        """D's layers from ``count`` unlabeled images (a fixed draw; random labels for a
        conditional D), G's from ``count`` latents (and labels)."""
        images = self.trainer.datamodule.unlabeled_sample(count, seed=0).to(self.device)
        labels = self._fake_labels(len(images))
        d_input = images
        if self.conditional and self.conditioning == "concat":
            d_input = torch.cat([images, label_planes(labels, self.num_classes, images)], dim=1)
        data_dependent_init(self.discriminator, d_input)
        z = self.generator.sample_latent(len(images), device=self.device)
        data_dependent_init(self.generator, z, labels)

    def minibatch_reference_input(self, images: Tensor) -> Tensor:
        """With concat conditioning D's input carries label planes: fixed labels 0..K-1."""
        if self.conditional and self.conditioning == "concat":
            labels = torch.arange(len(images), device=images.device) % self.num_classes
            return torch.cat([images, label_planes(labels, self.num_classes, images)], dim=1)
        return images

    def _players(self) -> tuple[list[nn.Module], list[nn.Module]]:
        d = [self.discriminator] + ([self.projection] if self.projection is not None else [])
        return d, [self.generator]

    def _history_penalty(self, which: str) -> Tensor:
        if which == "d":
            pairs = [(self.d_history, self.discriminator)]
            if self.projection is not None:
                pairs.append((self.p_history, self.projection))
        else:
            pairs = [(self.g_history, self.generator)]
        return sum(history.penalty(module) for history, module in pairs)

    def _update_history(self, which: str) -> None:
        if which == "d":
            self.d_history.update(self.discriminator)
            if self.projection is not None:
                self.p_history.update(self.projection)
        else:
            self.g_history.update(self.generator)

    def _real_batch(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """The conditional GAN learns from the labeled batch, the unconditional from the pool."""
        if self.conditional:
            return batch["x"], batch["y"]
        return batch["x_unl"], None

    def discriminator_loss(self, batch: Batch, batch_idx: int) -> tuple[Tensor, dict]:
        """D's adversarial loss on the real batch and a generated one (+ historical averaging)."""
        real, labels = self._real_batch(batch)
        sigma = self.current_instance_noise(batch_idx)
        with torch.no_grad():
            fake, fake_labels = self._generate(real.shape[0])
        real_logit, fake_logit = self.discriminate_batches(
            lambda x, y: self.discriminate(x, y, sigma)[0],
            [(real, labels), (fake, fake_labels)],
        )
        d_loss = discriminator_loss(real_logit, fake_logit, self.loss, self.real_target)
        if self.historical_averaging > 0:
            d_loss = d_loss + self.historical_averaging * self._history_penalty("d")
        with torch.no_grad():
            stats = {
                "train/d_real": torch.sigmoid(real_logit).mean(),
                "train/d_fake": torch.sigmoid(fake_logit).mean(),
            }
            if self.instance_noise > 0:
                stats["train/instance_noise"] = torch.tensor(sigma, device=real.device)
        return d_loss, stats

    def generator_loss(self, batch: Batch, batch_idx: int) -> Tensor:
        real, labels = self._real_batch(batch)
        return self.generator_loss_on(
            real, labels, real.shape[0], self.current_instance_noise(batch_idx)
        )

    def after_discriminator_update(self) -> None:
        super().after_discriminator_update()
        if self.historical_averaging > 0:
            self._update_history("d")

    def after_generator_update(self) -> None:
        if self.historical_averaging > 0:
            self._update_history("g")
        super().after_generator_update()

    def generator_loss_on(
        self, real: Tensor, labels: Tensor | None, n: int, sigma: float = 0.0
    ) -> Tensor:
        """G's loss (``generator_objective``) on a fresh generated batch of ``n``: feature
        matching against ``real`` or an adversarial loss, plus the historical-averaging
        penalty."""
        fake, fake_labels = self._generate(n)
        if self.generator_objective == "feature_matching":
            loss = self.feature_matching(
                lambda x, y: self.discriminate(x, y, sigma)[1],
                (fake, fake_labels),
                (real, labels),
            )
        else:
            fake_logit, _ = self.discriminate(fake, fake_labels, sigma)
            loss = generator_loss(fake_logit, self.generator_objective)
        if self.historical_averaging > 0:
            loss = loss + self.historical_averaging * self._history_penalty("g")
        return loss

    def configure_optimizers(self) -> Any:
        d_players, g_players = self._players()
        d_params = [p for m in d_players for p in m.parameters() if p.requires_grad]
        g_params = [p for m in g_players for p in m.parameters() if p.requires_grad]
        return self.with_lr_decay(
            [self.d_optimizer_factory(params=d_params), self.g_optimizer_factory(params=g_params)]
        )

    # ----------------------------------------------------------------------------- evaluation
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        images, labels = batch["x"], batch["y"]
        real_logit = self(images, labels if self.conditional else None)
        self.log("val/d_real", torch.sigmoid(real_logit).mean(), batch_size=len(images))
        if self.conditional:
            super().validation_step(batch, batch_idx)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        if self.conditional:
            super().test_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        if self.conditional:
            super().on_test_epoch_end()
