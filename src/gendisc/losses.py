"""Loss functions (Salimans et al. 2016, standard GAN / VAE losses, Bad GAN, FixMatch).

Semi-supervised GAN losses take the K class logits l of the discriminator; the fake class
has its logit fixed at 0, so with Z(x) = sum_k exp(l_k(x)) and lse = log Z,
D(x) = Z / (Z + 1) (probability of "real"), log D = lse - softplus(lse) and
log(1 - D) = -softplus(lse).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gendisc.errors import ConfigError

__all__ = [
    "HistoricalAverage",
    "conditional_entropy",
    "discriminator_loss",
    "feature_matching_loss",
    "fixmatch_unlabeled_loss",
    "gaussian_kl",
    "gaussian_noise_nll",
    "generator_loss",
    "low_density_loss",
    "pull_away_term",
    "ssl_generator_minimax_loss",
    "ssl_generator_nonsaturating_loss",
    "ssl_supervised_loss",
    "ssl_unsupervised_loss",
]

GAN_KINDS = ("non_saturating", "minimax", "hinge")


def ssl_supervised_loss(logits_lab: Tensor, labels: Tensor) -> Tensor:
    """L_lab = -mean(l_y) + mean(lse(l)): cross-entropy over the K real classes."""
    l_y = logits_lab.gather(1, labels.long().view(-1, 1)).squeeze(1)
    return -l_y.mean() + torch.logsumexp(logits_lab, dim=1).mean()


def ssl_unsupervised_loss(logits_unl: Tensor, logits_fake: Tensor) -> Tensor:
    """L_unl = -0.5 mean(lse(unl)) + 0.5 mean(softplus(lse(unl))) + 0.5 mean(softplus(lse(fake)))
    = -0.5 [mean log D(x_unl) + mean log(1 - D(G(z)))]."""
    lse_unl = torch.logsumexp(logits_unl, dim=1)
    lse_fake = torch.logsumexp(logits_fake, dim=1)
    return (
        -0.5 * lse_unl.mean() + 0.5 * F.softplus(lse_unl).mean() + 0.5 * F.softplus(lse_fake).mean()
    )


def ssl_generator_minimax_loss(logits_fake: Tensor) -> Tensor:
    """Exact minimax generator loss: minus the fake term of L_unl,
    -0.5 mean(softplus(lse(fake))) = 0.5 mean log(1 - D(G(z))) (G maximises D's loss)."""
    return -0.5 * F.softplus(torch.logsumexp(logits_fake, dim=1)).mean()


def ssl_generator_nonsaturating_loss(logits_fake: Tensor) -> Tensor:
    """Non-saturating generator loss -mean log D(G(z)) = -mean(lse(fake)) + mean(softplus(lse(fake)))."""
    lse = torch.logsumexp(logits_fake, dim=1)
    return -lse.mean() + F.softplus(lse).mean()


def feature_matching_loss(
    fake_features: Tensor, real_features: Tensor, norm: str = "l2", reduction: str = "mean"
) -> Tensor:
    """Feature matching on batch means, d = mean_batch f(G(z)) - mean_batch f(x).

    ``norm="l2"``: reduce(d^2), ``norm="l1"``: reduce(|d|), with ``reduction="mean"`` over
    features (default: the authors' code, T.mean(T.square(d)) on MNIST and T.mean(abs(d)) on
    CIFAR-10) or ``"sum"`` (l2: the paper's ||d||_2^2). Features are (N, ...) tensors; detach
    ``real_features`` if D must not receive gradients from this loss.
    """
    d = fake_features.flatten(1).mean(dim=0) - real_features.flatten(1).mean(dim=0)
    if norm == "l2":
        per_feature = d.square()
    elif norm == "l1":
        per_feature = d.abs()
    else:
        raise ConfigError(f"feature matching norm must be 'l2' or 'l1', got {norm!r}")
    if reduction == "mean":
        return per_feature.mean()
    if reduction == "sum":
        return per_feature.sum()
    raise ConfigError(f"feature matching reduction must be 'mean' or 'sum', got {reduction!r}")


def _check_kind(kind: str) -> None:
    if kind not in GAN_KINDS:
        raise ConfigError(f"GAN loss kind must be one of {GAN_KINDS}, got {kind!r}")


def discriminator_loss(
    real_logits: Tensor, fake_logits: Tensor, kind: str = "non_saturating", real_target: float = 1.0
) -> Tensor:
    """Loss of a 1-output discriminator (logits of shape (N,) or (N, 1)).

    non_saturating / minimax (same D loss): BCE(real, real_target) + BCE(fake, 0), with BCE
    the mean binary cross-entropy with logits; ``real_target`` < 1 is one-sided label
    smoothing (the fake target stays 0). hinge: mean(relu(1 - real)) + mean(relu(1 + fake));
    label smoothing does not apply to it (``real_target`` must be 1).
    """
    _check_kind(kind)
    real, fake = real_logits.flatten(), fake_logits.flatten()
    if kind == "hinge":
        if real_target != 1.0:
            raise ConfigError(
                "one-sided label smoothing (real_target != 1) needs a BCE loss, not hinge"
            )
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    real_loss = F.binary_cross_entropy_with_logits(real, torch.full_like(real, real_target))
    fake_loss = F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    return real_loss + fake_loss


def generator_loss(fake_logits: Tensor, kind: str = "non_saturating") -> Tensor:
    """Generator loss for a 1-output discriminator.

    non_saturating: BCE(fake, 1) = -mean log sigmoid(fake);
    minimax: -BCE(fake, 0) = mean log(1 - sigmoid(fake)) = -mean softplus(fake);
    hinge: -mean(fake).
    """
    _check_kind(kind)
    fake = fake_logits.flatten()
    if kind == "non_saturating":
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    if kind == "minimax":
        return -F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    return -fake.mean()


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) = -0.5 sum(1 + logvar - mu^2 - exp(logvar)),
    summed over the latent dimensions and averaged over the batch (dim 0)."""
    kl = -0.5 * (1.0 + logvar - mu.square() - logvar.exp())
    return kl.flatten(1).sum(dim=1).mean()


class HistoricalAverage(nn.Module):
    """Historical averaging (Salimans et al. 2016, section 3.3).

    Keeps the running mean of ``module``'s trainable parameters; call ``update(module)`` after
    each optimiser step (t <- t + 1, avg <- avg + (p - avg) / t; the first update sets
    avg = p, before it avg is the parameters at construction). ``penalty(module)`` =
    sum over parameters of ||theta - avg||^2, differentiable in theta; add it, weighted, to
    the player's cost. An ``nn.Module`` so its buffers follow the device and checkpoint.
    """

    num_updates: Tensor

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._names: dict[str, str] = {}
        for name, p in module.named_parameters():
            if p.requires_grad:
                key = "avg__" + name.replace(".", "__")
                self._names[name] = key
                self.register_buffer(key, p.detach().clone())
        self.register_buffer("num_updates", torch.tensor(0, dtype=torch.long))

    def _pairs(self, module: nn.Module) -> list[tuple[Tensor, Tensor]]:
        params = dict(module.named_parameters())
        missing = [n for n in self._names if n not in params]
        if missing:
            raise ValueError(f"HistoricalAverage: module lacks parameters {missing}")
        return [(params[n], getattr(self, key)) for n, key in self._names.items()]

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Fold the current parameters into the running mean."""
        self.num_updates += 1
        for p, avg in self._pairs(module):
            avg.add_((p.detach() - avg) / self.num_updates)  # stays on device: no sync

    def penalty(self, module: nn.Module) -> Tensor:
        """sum_params ||theta - avg||^2."""
        terms = [(p - avg).square().sum() for p, avg in self._pairs(module)]
        if not terms:
            return torch.zeros(())
        return torch.stack(terms).sum()


def fixmatch_unlabeled_loss(
    logits_weak: Tensor, logits_strong: Tensor, threshold: float
) -> tuple[Tensor, Tensor, Tensor]:
    """FixMatch's unlabeled term (Sohn et al. 2020): the class the weak view is predicted as,
    kept where its probability is at least ``threshold``, is the target of the strong view.

    ``l_u = mean_b 1[max q_b >= threshold] CE(logits_strong_b, argmax q_b)``, q = softmax of the
    weak view's logits taken without gradient (only the strong view is trained on it); the mean
    is over every unlabeled image, masked or not, as in the paper. Returns (l_u, the mask, the
    pseudo-labels).
    """
    probs = torch.softmax(logits_weak.detach(), dim=1)
    confidence, pseudo_labels = probs.max(dim=1)
    mask = (confidence >= threshold).to(logits_strong.dtype)
    per_image = F.cross_entropy(logits_strong, pseudo_labels, reduction="none")
    return (per_image * mask).mean(), mask, pseudo_labels


# ------------------------------------------------------------------ Bad GAN (Dai et al. 2017)
def conditional_entropy(logits: Tensor) -> Tensor:
    """mean_b H(softmax(l_b)) over the K classes: D's term on unlabeled data that makes its
    predictions confident."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()


def pull_away_term(features: Tensor) -> Tensor:
    """Mean squared cosine similarity over the ordered pairs i != j of a batch's features
    (N, D): G's term that spreads its samples (Zhao et al. 2017, used by Bad GAN)."""
    n = features.shape[0]
    if n < 2:
        return features.sum() * 0.0
    unit = F.normalize(features.flatten(1), dim=1)
    cosine = unit @ unit.t()
    off_diagonal = cosine.square().sum() - cosine.diagonal().square().sum()
    return off_diagonal / (n * (n - 1))


def gaussian_noise_nll(mu: Tensor, logvar: Tensor, z: Tensor) -> Tensor:
    """-log N(z; mu, diag(exp(logvar))) per example without the constant, averaged over the
    batch: Bad GAN's variational entropy term, where an encoder predicts the noise z that made
    each generated image (minimised by G and the encoder together)."""
    per_dim = 0.5 * logvar + 0.5 * (z - mu).square() * torch.exp(-logvar)
    return per_dim.flatten(1).sum(dim=1).mean()


def low_density_loss(log_density: Tensor, threshold: Tensor | float) -> Tensor:
    """Bad GAN's low-density term: the mean of ``log p(x) - threshold`` over the generated
    images whose log density is above the threshold (0 when none is): G is pushed towards
    regions that the density model finds unlikely."""
    excess = (log_density - threshold).clamp_min(0.0)
    count = (excess > 0).sum()
    return excess.sum() / count.clamp_min(1)
