"""The semi-supervised VAE M2 (Kingma, Rezende, Mohamed & Welling 2014), a joint module: the
classifier q(y | x) is part of the generative model.

Generative model p(y) p(z) p(x | y, z), with p(y) uniform over the K classes and p(z) = N(0, I);
inference model q(y | x) (the classifier) and q(z | x, y). All bounds are in nats per image:

- labeled: ``L(x, y) = log p(x | y, z) + log p(y) - KL(q(z | x, y) || p(z))``, z ~ q(z | x, y);
- unlabeled: ``U(x) = sum_y q(y | x) L(x, y) + H(q(y | x))``, the sum over ALL K classes computed
  exactly (the K copies of the batch in one pass; y is never sampled);
- training loss per step: ``-mean_l L(x_l, y_l) - mean_u U(x_u) + alpha * mean_l CE(q(y | x_l), y_l)``
  with ``alpha = alpha_scale * N_total / N_labeled`` (0.1 in the authors' code; N_total: the
  unlabeled pool, labeled images included) unless ``alpha`` is given.

Evaluation (``val/acc``, ``test/acc``, the report, checkpoint selection) classifies with
q(y | x); ``val/elbo`` / ``test/elbo`` are the unlabeled bound U(x), a lower bound on log p(x).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from gendisc.errors import ConfigError
from gendisc.guards import raise_if_not_finite
from gendisc.models.evaluation import ClassifierEvaluation
from gendisc.models.sampling import Sampler
from gendisc.models.vae import (
    Likelihood,
    image_nll,
    kl_per_example,
    log_sigma_parameter,
    mean_image,
)

__all__ = [
    "SSLVAEModule",
    "classification_weight",
    "dynamic_binarize",
    "labeled_bound",
    "unlabeled_bound",
]


def labeled_bound(recon_nll: Tensor, kl: Tensor, num_classes: int) -> Tensor:
    """L(x, y) = -recon_nll - kl + log p(y), with p(y) = 1 / K uniform: per example."""
    return -recon_nll - kl - math.log(num_classes)


def unlabeled_bound(bounds: Tensor, logits: Tensor) -> Tensor:
    """U(x) = sum_y q(y | x) L(x, y) + H(q(y | x)) per example, from the labeled bounds of
    every class ``bounds`` (N, K) and the classifier's logits (N, K)."""
    log_q = F.log_softmax(logits, dim=1)
    q = log_q.exp()
    entropy = -(q * log_q).sum(dim=1)
    return (q * bounds).sum(dim=1) + entropy


def classification_weight(n_total: int, n_labeled: int, scale: float = 0.1) -> float:
    """alpha = scale * N_total / N_labeled: the weight of the labeled cross-entropy per labeled
    point in the authors' code (scale 0.1)."""
    if n_labeled < 1 or n_total < 1:
        raise ConfigError(
            f"the classification weight needs labeled and training images, got "
            f"N_total={n_total}, N_labeled={n_labeled}: check data.labels_per_class"
        )
    return float(scale) * n_total / n_labeled


def dynamic_binarize(x: Tensor) -> Tensor:
    """Pixels in [-1, 1] redrawn as {-1, 1} with P(1) = (x + 1) / 2 (a fresh draw each call)."""
    return torch.bernoulli((x + 1.0) / 2.0) * 2.0 - 1.0


class SSLVAEModule(ClassifierEvaluation):
    """M2 trained on a labeled and an unlabeled batch each step.

    Args:
        encoder: partial of an encoder net (``in_shape``, ``latent_dim``, ``num_classes``):
            q(z | x, y).
        decoder: partial of a decoder net (``latent_dim``, ``out_shape``, ``num_classes``):
            p(x | y, z).
        classifier: partial of a classifier net (``in_shape``, ``num_classes``): q(y | x).
        optimizer: partial of a torch optimizer (all three nets).
        latent_dim: size of z.
        likelihood: bernoulli (pixels mapped to [0, 1]) or gaussian.
        binarize: redraw binary training images each step (Bernoulli only; for binary-like
            images such as MNIST).
        gaussian_sigma: fixed sigma of the Gaussian likelihood; null: learned.
        alpha_scale: alpha = alpha_scale * N_total / N_labeled (the authors' 0.1).
        alpha: a fixed weight of the classification term instead (null: from alpha_scale).
        scheduler: optional partial of a torch lr scheduler (stepped each epoch).
    """

    unlabeled_streams = 1
    conditional = True

    def __init__(
        self,
        encoder: Callable[..., nn.Module],
        decoder: Callable[..., nn.Module],
        classifier: Callable[..., nn.Module],
        optimizer: Callable[..., Optimizer],
        in_shape: Sequence[int],
        num_classes: int,
        class_names: list[str] | None = None,
        latent_dim: int = 16,
        likelihood: Likelihood = "bernoulli",
        binarize: bool = False,
        gaussian_sigma: float | None = None,
        alpha_scale: float = 0.1,
        alpha: float | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if num_classes < 2:
            raise ConfigError(f"M2 needs at least 2 classes, the data have {num_classes}")
        super().__init__(num_classes, class_names)
        self.save_hyperparameters(
            ignore=["encoder", "decoder", "classifier", "optimizer", "scheduler"]
        )
        if likelihood not in ("bernoulli", "gaussian"):
            raise ConfigError(f"model.likelihood={likelihood!r}: choose bernoulli or gaussian")
        if binarize and likelihood != "bernoulli":
            raise ConfigError("model.binarize=true needs model.likelihood=bernoulli")
        if alpha_scale < 0 or (alpha is not None and alpha < 0):
            raise ConfigError(
                f"model.alpha_scale={alpha_scale}, model.alpha={alpha}: the classification "
                "weight must be >= 0"
            )
        self.in_shape = tuple(int(v) for v in in_shape)
        self.latent_dim = int(latent_dim)
        k = int(num_classes)
        self.encoder = encoder(in_shape=self.in_shape, latent_dim=self.latent_dim, num_classes=k)
        self.decoder = decoder(latent_dim=self.latent_dim, out_shape=self.in_shape, num_classes=k)
        self.classifier = classifier(in_shape=self.in_shape, num_classes=k)
        self.likelihood = likelihood
        self.binarize = bool(binarize)
        if likelihood == "gaussian":
            self.log_sigma = log_sigma_parameter(gaussian_sigma)
        self.alpha_scale = float(alpha_scale)
        self.alpha = float(alpha) if alpha is not None else None
        self.alpha_value: float | None = None  # resolved at fit start
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

    # ---------------------------------------------------------------------------- the model
    def forward(self, x: Tensor) -> Tensor:
        """Logits of q(y | x)."""
        return self.classifier(x)

    def encode(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance of q(z | x, y)."""
        return self.encoder(x, y)

    def decode_params(self, z: Tensor, y: Tensor) -> Tensor:
        """Decoder output: Bernoulli logits or Gaussian means, shaped like the images."""
        return self.decoder(z, y)

    def decode(self, z: Tensor, y: Tensor) -> Tensor:
        """Mean image of p(x | y, z) in [-1, 1]."""
        return mean_image(self.decode_params(z, y), self.likelihood)

    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Mean image decoded from the posterior mean of q(z | x, y); y: q(y | x)'s argmax
        when not given."""
        if y is None:
            y = self.classifier(x).argmax(dim=1)
        mu, _ = self.encode(x, y)
        return self.decode(mu, y)

    def nll(self, params: Tensor, x: Tensor) -> Tensor:
        """-log p(x | y, z) per example."""
        return image_nll(params, x, self.likelihood, getattr(self, "log_sigma", None))

    def bound(self, x: Tensor, y: Tensor, sample: bool = True) -> Tensor:
        """The labeled bound L(x, y) per example (z ~ q(z | x, y), or its mean)."""
        mu, logvar = self.encode(x, y)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        recon = self.nll(self.decode_params(z, y), x)
        return labeled_bound(recon, kl_per_example(mu, logvar), self.num_classes)

    def class_bounds(self, x: Tensor, sample: bool = True) -> Tensor:
        """L(x, y) for every class y: (N, K), the K copies of the batch in one pass."""
        n, k = x.shape[0], self.num_classes
        x_all = x.repeat(k, *([1] * (x.dim() - 1)))
        y_all = torch.arange(k, device=x.device).repeat_interleave(n)
        return self.bound(x_all, y_all, sample=sample).view(k, n).t()

    def unlabeled(self, x: Tensor, sample: bool = True) -> tuple[Tensor, Tensor]:
        """U(x) per example and the classifier's logits on x."""
        logits = self.classifier(x)
        return unlabeled_bound(self.class_bounds(x, sample=sample), logits), logits

    def sampler(self) -> Sampler:
        """Class-conditional mean images decoded from prior samples z ~ N(0, I)."""

        def latent(n: int, rng: torch.Generator | None, device: torch.device) -> Tensor:
            return torch.randn((n, self.latent_dim), generator=rng, device=device)

        return Sampler(self.decode, latent, [self.decoder], self.num_classes, self.device)

    # ------------------------------------------------------------------------------ training
    def classification_weight(self) -> float:
        """alpha: the fixed ``alpha``, else ``alpha_scale * N_total / N_labeled`` from the
        training datamodule's label protocol."""
        if self.alpha is not None:
            return self.alpha
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        if datamodule is None or not hasattr(datamodule, "labeled_index"):
            raise ConfigError(
                "model.alpha=null derives the classification weight from the datamodule's "
                "labeled and unlabeled sets, and there is none: train through gendisc-train "
                "or set model.alpha"
            )
        n_total, n_labeled = len(datamodule.unlabeled_index), len(datamodule.labeled_index)
        return classification_weight(n_total, n_labeled, self.alpha_scale)

    def on_fit_start(self) -> None:
        self.alpha_value = self.classification_weight()

    def _inputs(self, x: Tensor) -> Tensor:
        return dynamic_binarize(x) if self.binarize else x

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        x_lab, y_lab = self._inputs(batch["x"]), batch["y"]
        x_unl = self._inputs(batch["x_unl"])
        bound_lab = self.bound(x_lab, y_lab)
        bound_unl, _ = self.unlabeled(x_unl)
        logits_lab = self.classifier(x_lab)
        ce = F.cross_entropy(logits_lab, y_lab)
        alpha = self.alpha_value
        if alpha is None:
            alpha = self.alpha_value = self.classification_weight()
        loss = -bound_lab.mean() - bound_unl.mean() + alpha * ce
        raise_if_not_finite(loss, "M2 loss", self)
        with torch.no_grad():
            stats = {
                "train/loss": loss,
                "train/bound_lab": bound_lab.mean(),
                "train/elbo": bound_unl.mean(),
                "train/ce": ce,
                "train/acc": (logits_lab.argmax(1) == y_lab).float().mean(),
                "train/alpha": torch.tensor(float(alpha)),
            }
        self.log_dict(stats, on_step=False, on_epoch=True)
        return loss

    def _log_bound(self, x: Tensor, stage: str) -> None:
        bound, _ = self.unlabeled(x)
        self.log(f"{stage}/elbo", bound.mean(), on_epoch=True, sync_dist=True, batch_size=len(x))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self._log_bound(batch[0], "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        self._log_bound(batch[0], "test")

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer=optimizer)}
