"""Variational auto-encoder (Kingma & Welling 2014), unconditional or class-conditional
(Sohn et al. 2015: q(z | x, y), p(x | z, y)).

Likelihoods: ``bernoulli`` on pixels mapped to [0, 1] (binary cross-entropy with the decoder's
logits, the usual choice on MNIST) or ``gaussian`` on pixels in [-1, 1] with a learned (or
fixed) scalar sigma. All quantities are in nats per image: ``elbo = -(recon + kl)``, where
``recon = -log p(x | z)`` for one z ~ q(z | x) and ``kl = KL(q(z | x) || N(0, I))``; the
training loss is ``recon + beta * kl``. A conditional VAE also classifies, by the label that
maximises the ELBO (``argmax_y ELBO(x, y)``, z at the posterior mean): its ``val/acc`` /
``test/acc``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from gendisc.errors import ConfigError
from gendisc.guards import raise_if_not_finite
from gendisc.models.contract import Batch
from gendisc.models.evaluation import ClassifierEvaluation
from gendisc.models.sampling import Sampler

Likelihood = Literal["bernoulli", "gaussian"]
_LOG_2PI = math.log(2.0 * math.pi)


def kl_per_example(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per example, summed over latent dimensions: (N,)."""
    return -0.5 * (1.0 + logvar - mu.square() - logvar.exp()).flatten(1).sum(dim=1)


def bernoulli_nll(logits: Tensor, x: Tensor) -> Tensor:
    """-log p(x | logits) per example for pixels x in [-1, 1] mapped to t = (x + 1) / 2:
    sum over pixels of BCE(sigmoid(logits), t): (N,)."""
    target = (x + 1.0) / 2.0
    nll = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return nll.flatten(1).sum(dim=1)


def gaussian_nll(mean: Tensor, x: Tensor, log_sigma: Tensor) -> Tensor:
    """-log N(x; mean, sigma^2) per example, summed over pixels: (N,)."""
    z = (x - mean) * torch.exp(-log_sigma)
    nll = 0.5 * z.square() + log_sigma + 0.5 * _LOG_2PI
    return nll.flatten(1).sum(dim=1)


def image_nll(
    params: Tensor, x: Tensor, likelihood: Likelihood, log_sigma: Tensor | None
) -> Tensor:
    """-log p(x | params) per example under the configured likelihood (Bernoulli logits, or
    Gaussian means with ``log_sigma``)."""
    if likelihood == "bernoulli":
        return bernoulli_nll(params, x)
    return gaussian_nll(params, x, log_sigma)


def mean_image(params: Tensor, likelihood: Likelihood) -> Tensor:
    """The likelihood's mean in the image range [-1, 1]."""
    if likelihood == "bernoulli":
        return 2.0 * torch.sigmoid(params) - 1.0
    return params.clamp(-1.0, 1.0)


def log_sigma_parameter(gaussian_sigma: float | None) -> nn.Parameter:
    """log sigma of a Gaussian likelihood: fixed at ``gaussian_sigma``, or learned from 0."""
    start = math.log(gaussian_sigma) if gaussian_sigma else 0.0
    return nn.Parameter(torch.tensor(float(start)), requires_grad=gaussian_sigma is None)


class VAEModule(ClassifierEvaluation):
    """VAE trained on the labeled batch (conditional) or the unlabeled pool (unconditional).

    Args:
        encoder: partial of an encoder net (``in_shape``, ``latent_dim``, ``num_classes``).
        decoder: partial of a decoder net (``latent_dim``, ``out_shape``, ``num_classes``).
        optimizer: partial of a torch optimizer.
        latent_dim: size of z.
        conditional: condition encoder and decoder on the label.
        likelihood: bernoulli or gaussian.
        beta: weight of the KL term in the training loss (1: the ELBO).
        kl_warmup_epochs: raise the KL weight linearly from 0 to ``beta`` over this many epochs.
        gaussian_sigma: fixed sigma of the Gaussian likelihood; null: learned.
        scheduler: optional partial of a torch lr scheduler (stepped each epoch).
    """

    # checkpoints selected on the validation ELBO; sample, reconstruction and interpolation
    # grids and generative metrics on (gendisc.models.contract)
    selection_metric = "val/elbo"
    generative_callbacks = True

    def __init__(
        self,
        encoder: Callable[..., nn.Module],
        decoder: Callable[..., nn.Module],
        optimizer: Callable[..., Optimizer],
        in_shape: Sequence[int],
        num_classes: int,
        class_names: list[str] | None = None,
        latent_dim: int = 16,
        conditional: bool = True,
        likelihood: Likelihood = "bernoulli",
        beta: float = 1.0,
        kl_warmup_epochs: float = 0.0,
        gaussian_sigma: float | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(num_classes, class_names)
        self.save_hyperparameters(ignore=["encoder", "decoder", "optimizer", "scheduler"])
        if likelihood not in ("bernoulli", "gaussian"):
            raise ConfigError(f"model.likelihood={likelihood!r}: choose bernoulli or gaussian")
        if beta < 0:
            raise ConfigError(f"model.beta={beta}: must be >= 0")
        self.in_shape = tuple(int(v) for v in in_shape)
        self.conditional = bool(conditional)
        k = num_classes if self.conditional else 0
        self.latent_dim = int(latent_dim)
        self.encoder = encoder(in_shape=self.in_shape, latent_dim=self.latent_dim, num_classes=k)
        self.decoder = decoder(latent_dim=self.latent_dim, out_shape=self.in_shape, num_classes=k)
        self.likelihood = likelihood
        self.beta = float(beta)
        self.kl_warmup_epochs = float(kl_warmup_epochs)
        if likelihood == "gaussian":
            self.log_sigma = log_sigma_parameter(gaussian_sigma)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.unlabeled_streams = 0 if self.conditional else 1

    # ---------------------------------------------------------------------------- the model
    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance of q(z | x [, y])."""
        return self.encoder(x, y if self.conditional else None)

    def decode_params(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Decoder output: Bernoulli logits or Gaussian means, shaped like the images."""
        return self.decoder(z, y if self.conditional else None)

    def mean_image(self, params: Tensor) -> Tensor:
        """The likelihood's mean in the image range [-1, 1]."""
        return mean_image(params, self.likelihood)

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Mean image of p(x | z [, y]) in [-1, 1]."""
        return self.mean_image(self.decode_params(z, y))

    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Mean image decoded from the posterior mean."""
        mu, _ = self.encode(x, y)
        return self.decode(mu, y)

    def nll(self, params: Tensor, x: Tensor) -> Tensor:
        """-log p(x | z) per example."""
        return image_nll(params, x, self.likelihood, getattr(self, "log_sigma", None))

    def terms(
        self, x: Tensor, y: Tensor | None = None, sample: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Per-example reconstruction NLL and KL (z drawn from q, or its mean)."""
        mu, logvar = self.encode(x, y)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        return self.nll(self.decode_params(z, y), x), kl_per_example(mu, logvar)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Per-example ELBO estimate (one posterior sample)."""
        recon, kl = self.terms(x, y)
        return -(recon + kl)

    def classify(self, x: Tensor) -> Tensor:
        """Class scores ELBO(x, k) for every class k (z at the posterior mean)."""
        if not self.conditional:
            raise ConfigError("an unconditional VAE has no class scores")
        n = x.shape[0]
        scores = []
        for k in range(self.num_classes):
            recon, kl = self.terms(x, torch.full((n,), k, device=x.device), sample=False)
            scores.append(-(recon + kl))
        return torch.stack(scores, dim=1)

    def sampler(self) -> Sampler:
        """Mean images decoded from prior samples z ~ N(0, I)."""

        def latent(n: int, rng: torch.Generator | None, device: torch.device) -> Tensor:
            return torch.randn((n, self.latent_dim), generator=rng, device=device)

        k = self.num_classes if self.conditional else 0
        return Sampler(self.decode, latent, [self.decoder], k, self.device)

    # ------------------------------------------------------------------------------ training
    def kl_weight(self, batch_idx: int = 0) -> float:
        """beta, warmed up linearly from 0 over ``kl_warmup_epochs``."""
        if self.kl_warmup_epochs <= 0 or self._trainer is None:
            return self.beta
        steps = self.trainer.num_training_batches
        steps = int(steps) if isinstance(steps, int) and steps > 0 else 1
        progress = self.trainer.current_epoch + batch_idx / steps
        return self.beta * min(1.0, progress / self.kl_warmup_epochs)

    def _log_terms(self, stage: str, recon: Tensor, kl: Tensor, **kwargs: Any) -> None:
        self.log_dict(
            {
                f"{stage}/elbo": -(recon + kl).mean(),
                f"{stage}/recon": recon.mean(),
                f"{stage}/kl": kl.mean(),
            },
            **kwargs,
        )

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        if self.conditional:
            x, y = batch["x"], batch["y"]
        else:
            x, y = batch["x_unl"], None
        recon, kl = self.terms(x, y)
        loss = (recon + self.kl_weight(batch_idx) * kl).mean()
        raise_if_not_finite(loss, "VAE loss", self)
        self._log_terms("train", recon, kl, on_step=False, on_epoch=True)
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True)
        return loss

    def _eval_terms(self, batch: Batch, stage: str) -> None:
        x, y = batch["x"], batch["y"]
        recon, kl = self.terms(x, y if self.conditional else None)
        self._log_terms(stage, recon, kl, on_epoch=True, sync_dist=True, batch_size=len(x))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_terms(batch, "val")
        if self.conditional:
            super().validation_step(batch, batch_idx)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_terms(batch, "test")
        if self.conditional:
            super().test_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        if self.conditional:
            super().on_test_epoch_end()

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer=optimizer)}
