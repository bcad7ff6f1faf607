"""The M2 bound (Kingma et al. 2014) as pure functions, in nats per example: the labeled bound
L(x, y), the unlabeled bound U(x) summed exactly over the classes, the weight alpha of the
labeled cross-entropy, the reparameterised Gaussian draw and the dynamic binarisation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from gendisc.errors import ConfigError

__all__ = [
    "classification_weight",
    "draw_gaussian",
    "dynamic_binarize",
    "labeled_bound",
    "split_decoded_variance",
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


def draw_gaussian(mu: Tensor, logvar: Tensor, sample: bool) -> Tensor:
    """v ~ N(mu, diag(exp(logvar))) by reparameterisation, or its mean unless ``sample``."""
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu


def split_decoded_variance(params: Tensor) -> tuple[Tensor, Tensor]:
    """(means, log sigma per dimension) of a decoder that outputs the means then the
    log-variances along dim 1 (``model.m2.likelihood.variance=decoded``)."""
    mean, logvar = params.chunk(2, dim=1)
    return mean, 0.5 * logvar
