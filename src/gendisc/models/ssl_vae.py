"""The semi-supervised VAEs of Kingma, Rezende, Mohamed & Welling 2014 (M2, M1+M2) and of
Maaløe, Sønderby, Sønderby & Winther 2016 (the auxiliary ADGM and SDGM), one joint module: the
classifier q(y | .) is part of the generative model.

M2: generative model p(y) p(z) p(x | y, z), p(y) uniform over the K classes, p(z) = N(0, I);
inference model q(y | x) (the classifier) and q(z | x, y). All bounds are in nats per image:

- labeled: ``L(x, y) = log p(x | y, z) + log p(y) - KL(q(z | x, y) || p(z))``, z ~ q(z | x, y);
- unlabeled: ``U(x) = sum_y q(y | x) L(x, y) + H(q(y | x))``, the sum over ALL K classes computed
  exactly (the K copies of the batch in one pass; y is never sampled);
- training loss per step: ``-mean_l L(x_l, y_l) - mean_u U(x_u) + alpha * mean_l CE(q(y | x_l), y_l)``
  with ``alpha = alpha_scale * N_total / N_labeled`` (0.1 in the authors' code; N_total: the
  unlabeled pool, labeled images included) unless ``alpha`` is given.

M1+M2 (``m1=<checkpoint of an unconditional model=vae run>``): M2 on the latent code z1 of a
frozen VAE M1 instead of the pixels, z1 ~ q(z1 | x) redrawn each step (``m1_features=sample``,
as in the paper) or its mean; evaluation classifies the posterior mean of z1. M2's likelihood of
z1 is Gaussian, with one learned sigma (``gaussian_variance=shared``) or, as in the authors'
code, a variance per dimension and example that the decoder outputs beside the mean
(``gaussian_variance=decoded``). Its samples and reconstructions are decoded back to images by
M1's decoder.

Auxiliary models (``auxiliary=adgm|sdgm``): an auxiliary variable a with inference model
q(a | x) q(y | a, x) q(z | a, y, x); generative model p(y) p(z) p(x | y, z) p(a | x, y, z) (ADGM)
or p(y) p(z) p(a | z, y) p(x | a, y, z) (SDGM). With a ~ q(a | x) the labeled bound gains
``log p(a | .) - log q(a | x)``, the unlabeled bound is M2's with q(y | a, x) and the classifier
term is ``alpha * CE(q(y | a, x_l), y_l)``. At evaluation q(y | x) = E_q(a|x)[q(y | a, x)],
averaged over ``eval_samples`` draws of a (0: a at its posterior mean).

``mc_samples`` S: every training bound and the classifier term are averaged over S draws of the
latent variables (each batch repeated S times). Evaluation (``val/acc``, ``test/acc``, the
report, checkpoint selection) classifies with q(y | x); ``val/elbo`` / ``test/elbo`` are the
unlabeled bound U (for M1+M2 a bound on log p(z1), not on log p(x)).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from gendisc.checkpoints import load_module
from gendisc.errors import ConfigError
from gendisc.guards import raise_if_not_finite
from gendisc.models.evaluation import ClassifierEvaluation
from gendisc.models.sampling import Sampler
from gendisc.models.vae import (
    Likelihood,
    VAEModule,
    image_nll,
    kl_per_example,
    log_sigma_parameter,
    mean_image,
)
from gendisc.nets.classifiers import MLPClassifier
from gendisc.nets.vae import MLPDecoder, MLPEncoder

__all__ = [
    "AUXILIARY",
    "SSLVAEModule",
    "auxiliary_bound",
    "classification_weight",
    "dynamic_binarize",
    "gaussian_log_density",
    "labeled_bound",
    "unlabeled_bound",
]

Auxiliary = Literal["none", "adgm", "sdgm"]
AUXILIARY = ("none", "adgm", "sdgm")
_LOG_2PI = math.log(2.0 * math.pi)


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


def gaussian_log_density(v: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(v; mu, diag(exp(logvar))) per example, summed over dimensions: (N,)."""
    terms = -0.5 * (_LOG_2PI + logvar + (v - mu).square() * torch.exp(-logvar))
    return terms.flatten(1).sum(dim=1)


def auxiliary_bound(bound: Tensor, log_p_a: Tensor, log_q_a: Tensor) -> Tensor:
    """The auxiliary models' labeled bound: M2's bound plus log p(a | .) - log q(a | x)."""
    return bound + log_p_a - log_q_a


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


def _draw(mu: Tensor, logvar: Tensor, sample: bool) -> Tensor:
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu


class SSLVAEModule(ClassifierEvaluation):
    """M2, M1+M2, ADGM or SDGM trained on a labeled and an unlabeled batch each step.

    Args:
        encoder: partial of an encoder net (``in_shape``, ``latent_dim``, ``num_classes``):
            q(z | x, y) (and, for the auxiliary models, q(a | x) and p(a | .)).
        decoder: partial of a decoder net (``latent_dim``, ``out_shape``, ``num_classes``):
            p(x | y, z).
        classifier: partial of a classifier net (``in_shape``, ``num_classes``): q(y | x).
        optimizer: partial of a torch optimizer (all trained nets).
        latent_dim: size of z.
        likelihood: bernoulli (pixels mapped to [0, 1]) or gaussian (M1+M2: gaussian).
        binarize: redraw binary training images each step (for binary-like images such as
            MNIST; Bernoulli likelihood, or M1+M2, where M1 encodes the redrawn images).
        gaussian_sigma: fixed sigma of the Gaussian likelihood; null: learned.
        gaussian_variance: ``shared`` (one sigma: ``gaussian_sigma`` or learned) or
            ``decoded`` (the decoder outputs a log-variance per dimension beside the mean).
        alpha_scale: alpha = alpha_scale * N_total / N_labeled (the authors' 0.1).
        alpha: a fixed weight of the classification term instead (null: from alpha_scale).
        scheduler: optional partial of a torch lr scheduler (stepped each epoch).
        m1: checkpoint of an unconditional ``model=vae`` run: M2 on its latent code (M1+M2).
        m1_features: ``sample`` (z1 ~ q(z1 | x), redrawn each step) or ``mean`` for training.
        auxiliary: ``none`` (M2), ``adgm`` or ``sdgm``.
        aux_dim: size of the auxiliary variable a.
        mc_samples: draws of the latent variables per training example.
        eval_samples: draws of a averaged in q(y | x) at evaluation (0: a at its mean).
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
        gaussian_variance: Literal["shared", "decoded"] = "shared",
        alpha_scale: float = 0.1,
        alpha: float | None = None,
        scheduler: Callable[..., Any] | None = None,
        m1: str | None = None,
        m1_features: Literal["sample", "mean"] = "sample",
        auxiliary: Auxiliary = "none",
        aux_dim: int = 16,
        mc_samples: int = 1,
        eval_samples: int = 0,
    ) -> None:
        if num_classes < 2:
            raise ConfigError(f"M2 needs at least 2 classes, the data have {num_classes}")
        super().__init__(num_classes, class_names)
        self.save_hyperparameters(
            ignore=["encoder", "decoder", "classifier", "optimizer", "scheduler"]
        )
        if likelihood not in ("bernoulli", "gaussian"):
            raise ConfigError(f"model.likelihood={likelihood!r}: choose bernoulli or gaussian")
        if gaussian_variance not in ("shared", "decoded"):
            raise ConfigError(
                f"model.gaussian_variance={gaussian_variance!r}: choose shared or decoded"
            )
        if gaussian_variance == "decoded" and (likelihood != "gaussian" or gaussian_sigma):
            raise ConfigError(
                "model.gaussian_variance=decoded needs model.likelihood=gaussian and "
                "model.gaussian_sigma=null (the decoder outputs the variance)"
            )
        if binarize and likelihood != "bernoulli" and not m1:
            raise ConfigError("model.binarize=true needs model.likelihood=bernoulli (or model.m1)")
        if alpha_scale < 0 or (alpha is not None and alpha < 0):
            raise ConfigError(
                f"model.alpha_scale={alpha_scale}, model.alpha={alpha}: the classification "
                "weight must be >= 0"
            )
        if auxiliary not in AUXILIARY:
            raise ConfigError(f"model.auxiliary={auxiliary!r}: choose one of {list(AUXILIARY)}")
        if m1_features not in ("sample", "mean"):
            raise ConfigError(f"model.m1_features={m1_features!r}: choose sample or mean")
        if mc_samples < 1 or eval_samples < 0 or aux_dim < 1:
            raise ConfigError(
                f"model.mc_samples={mc_samples}, model.eval_samples={eval_samples}, "
                f"model.aux_dim={aux_dim}: need mc_samples >= 1, eval_samples >= 0, aux_dim >= 1"
            )
        self.in_shape = tuple(int(v) for v in in_shape)
        self.latent_dim = int(latent_dim)
        self.auxiliary = auxiliary
        self.aux_dim = int(aux_dim)
        self.mc_samples = int(mc_samples)
        self.eval_samples = int(eval_samples)
        self.m1_features = m1_features
        self.decoded_variance = gaussian_variance == "decoded"
        self.m1_likelihood: Likelihood = "bernoulli"
        self.m1_encoder: nn.Module | None = None
        self.m1_decoder: nn.Module | None = None
        # M2's data: the images, or M1's latent code shaped (1, 1, D) for the dense nets
        self.data_shape = self.in_shape
        if m1:
            if likelihood != "gaussian":
                raise ConfigError(
                    "model.m1 (M1+M2) models M1's continuous latent code: set "
                    "model.likelihood=gaussian"
                )
            self._load_m1(m1)
        k = int(num_classes)
        flat = math.prod(self.data_shape)
        aux = auxiliary != "none"
        dense = (
            "model.auxiliary and model.m1 feed vectors (concatenated, or M1's code) to the nets: "
            "use the dense ones (model/encoder=mlp model/decoder=mlp model/net@model.classifier=mlp)"
        )
        try:
            self._build_nets(encoder, decoder, classifier, flat, k)
        except (ValueError, RuntimeError, TypeError, ConfigError) as error:
            if aux or m1:
                raise ConfigError(f"{dense} ({error})") from error
            raise
        if (aux or m1) and not (
            isinstance(self.encoder, MLPEncoder)
            and isinstance(self.classifier, MLPClassifier)
            and (isinstance(self.decoder, MLPDecoder) or not m1)
        ):
            raise ConfigError(dense)
        self.likelihood = likelihood
        self.binarize = bool(binarize)
        if likelihood == "gaussian" and not self.decoded_variance:
            self.log_sigma = log_sigma_parameter(gaussian_sigma)
        self.alpha_scale = float(alpha_scale)
        self.alpha = float(alpha) if alpha is not None else None
        self.alpha_value: float | None = None  # resolved at fit start
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

    def _build_nets(
        self,
        encoder: Callable[..., nn.Module],
        decoder: Callable[..., nn.Module],
        classifier: Callable[..., nn.Module],
        flat: int,
        k: int,
    ) -> None:
        """q(z | x, y) or q(z | a, y, x); p(x | y, z) or p(x | a, y, z) (SDGM); q(y | x) or
        q(y | a, x); with an auxiliary variable q(a | x) and p(a | x, y, z) or p(a | z, y)."""
        aux = self.auxiliary != "none"
        joint_shape = (flat + self.aux_dim,) if aux else self.data_shape
        self.encoder = encoder(in_shape=joint_shape, latent_dim=self.latent_dim, num_classes=k)
        decoder_latent = self.latent_dim + (self.aux_dim if self.auxiliary == "sdgm" else 0)
        # decoded variance: twice the channels, the means then the log-variances
        channels, *size = self.data_shape
        out_shape = (2 * channels, *size) if self.decoded_variance else self.data_shape
        self.decoder = decoder(latent_dim=decoder_latent, out_shape=out_shape, num_classes=k)
        self.classifier = classifier(in_shape=joint_shape, num_classes=k)
        self.aux_encoder: nn.Module | None = None
        self.aux_decoder: nn.Module | None = None
        if aux:
            self.aux_encoder = encoder(
                in_shape=self.data_shape, latent_dim=self.aux_dim, num_classes=0
            )
            prior_in = self.latent_dim + (flat if self.auxiliary == "adgm" else 0)
            self.aux_decoder = encoder(in_shape=(prior_in,), latent_dim=self.aux_dim, num_classes=k)

    def _load_m1(self, path: str) -> None:
        """M1's frozen encoder and decoder from an unconditional model=vae checkpoint."""
        vae = load_module(path, "cpu", "model.m1")
        if not isinstance(vae, VAEModule) or vae.conditional:
            raise ConfigError(
                f"model.m1={path}: M1 must be an unconditional VAE, the checkpoint of a "
                f"gendisc-train model=vae model.conditional=false run (got "
                f"{type(vae).__name__}{' conditional' if getattr(vae, 'conditional', 0) else ''})"
            )
        if tuple(vae.in_shape) != self.in_shape:
            raise ConfigError(
                f"model.m1={path}: M1 was trained on {tuple(vae.in_shape)} images, the data "
                f"are {self.in_shape}"
            )
        vae.requires_grad_(False)
        self.m1_encoder, self.m1_decoder = vae.encoder.eval(), vae.decoder.eval()
        self.m1_likelihood = vae.likelihood
        self.data_shape = (1, 1, vae.latent_dim)

    def train(self, mode: bool = True) -> SSLVAEModule:
        """Train mode for the trained nets; M1 (frozen) always in eval mode."""
        super().train(mode)
        for net in (self.m1_encoder, self.m1_decoder):
            if net is not None:
                net.eval()
        return self

    # --------------------------------------------------------------- the model on M2's data h
    def features(self, x: Tensor, sample: bool = False) -> Tensor:
        """M2's data h for images x: x itself, or M1's z1 ~ q(z1 | x) (its mean unless
        ``sample``) shaped (N, 1, 1, D)."""
        if self.m1_encoder is None:
            return x
        with torch.no_grad():
            mu, logvar = self.m1_encoder(x, None)
            return _draw(mu, logvar, sample).view(len(x), *self.data_shape)

    def _joint(self, h: Tensor, a: Tensor | None) -> Tensor:
        """The input of q(y | .) and q(z | .): h, or [flat h, a] with an auxiliary variable."""
        return h if a is None else torch.cat([h.flatten(1), a], dim=1)

    def draw_aux(self, h: Tensor, sample: bool = True) -> tuple[Tensor, Tensor]:
        """a ~ q(a | h) (its mean unless ``sample``) and log q(a | h) per example."""
        mu, logvar = self.aux_encoder(h, None)
        a = _draw(mu, logvar, sample)
        return a, gaussian_log_density(a, mu, logvar)

    def aux_prior(self, h: Tensor, y: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of p(a | x, y, z) (ADGM) or p(a | z, y) (SDGM)."""
        inputs = torch.cat([h.flatten(1), z], dim=1) if self.auxiliary == "adgm" else z
        return self.aux_decoder(inputs, y)

    def class_logits(self, h: Tensor, a: Tensor | None = None) -> Tensor:
        """Logits of q(y | h) or q(y | a, h)."""
        return self.classifier(self._joint(h, a))

    def _decoder_params(self, z: Tensor, y: Tensor, a: Tensor | None) -> Tensor:
        return self.decoder(torch.cat([z, a], dim=1) if self.auxiliary == "sdgm" else z, y)

    def data_bound(
        self,
        h: Tensor,
        y: Tensor,
        a: Tensor | None = None,
        log_q_a: Tensor | None = None,
        sample: bool = True,
    ) -> Tensor:
        """The labeled bound L(h, y) per example (z ~ q(z | .), or its mean); with an auxiliary
        variable ``a`` (drawn from q(a | h) with density ``log_q_a``) plus log p(a | .) -
        log q(a | h)."""
        mu, logvar = self.encoder(self._joint(h, a), y)
        z = _draw(mu, logvar, sample)
        recon = self.nll(self._decoder_params(z, y, a), h)
        bound = labeled_bound(recon, kl_per_example(mu, logvar), self.num_classes)
        if a is None:
            return bound
        return auxiliary_bound(bound, gaussian_log_density(a, *self.aux_prior(h, y, z)), log_q_a)

    def data_class_bounds(
        self, h: Tensor, a: Tensor | None = None, log_q_a: Tensor | None = None, sample: bool = True
    ) -> Tensor:
        """L(h, y) for every class y: (N, K), the K copies of the batch in one pass (one a per
        example, shared by its K copies)."""
        n, k = h.shape[0], self.num_classes
        h_all = h.repeat(k, *([1] * (h.dim() - 1)))
        y_all = torch.arange(k, device=h.device).repeat_interleave(n)
        if a is None:
            return self.data_bound(h_all, y_all, sample=sample).view(k, n).t()
        bounds = self.data_bound(h_all, y_all, a.repeat(k, 1), log_q_a.repeat(k), sample)
        return bounds.view(k, n).t()

    def data_unlabeled(self, h: Tensor, sample: bool = True) -> tuple[Tensor, Tensor]:
        """U(h) per example and the classifier's logits (a ~ q(a | h) drawn once per example)."""
        a, log_q_a = self.draw_aux(h, sample) if self.aux_encoder is not None else (None, None)
        logits = self.class_logits(h, a)
        return unlabeled_bound(self.data_class_bounds(h, a, log_q_a, sample), logits), logits

    # ---------------------------------------------------------------------- on images x
    def forward(self, x: Tensor) -> Tensor:
        """Logits of q(y | x): for the auxiliary models the log of q(y | a, x) averaged over
        ``eval_samples`` draws a ~ q(a | x) (a at its mean when 0)."""
        h = self.features(x)
        if self.aux_encoder is None:
            return self.class_logits(h)
        if self.eval_samples == 0:
            return self.class_logits(h, self.draw_aux(h, sample=False)[0])
        s, n = self.eval_samples, len(h)
        h_all = h.repeat(s, *([1] * (h.dim() - 1)))
        probs = self.class_logits(h_all, self.draw_aux(h_all)[0]).softmax(dim=1)
        return probs.view(s, n, -1).mean(dim=0).clamp_min(1e-30).log()

    def encode(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance of q(z | x, y) (a and z1 at their means)."""
        h = self.features(x)
        a = self.draw_aux(h, sample=False)[0] if self.aux_encoder is not None else None
        return self.encoder(self._joint(h, a), y)

    def decode_params(self, z: Tensor, y: Tensor) -> Tensor:
        """Decoder output: Bernoulli logits or Gaussian means of M2's data (SDGM: a at the mean
        of p(a | z, y))."""
        a = self.aux_prior(z, y, z)[0] if self.auxiliary == "sdgm" else None
        return self._split(self._decoder_params(z, y, a))[0]

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor | None]:
        """(likelihood parameters, log sigma per dimension or None) of a decoder output."""
        if not self.decoded_variance:
            return params, None
        mean, logvar = params.chunk(2, dim=1)
        return mean, 0.5 * logvar

    def to_image(self, params: Tensor) -> Tensor:
        """The mean image of M2's likelihood parameters (M1+M2: z1's mean decoded by M1)."""
        if self.m1_decoder is None:
            return mean_image(params, self.likelihood)
        return mean_image(self.m1_decoder(params.flatten(1), None), self.m1_likelihood)

    def decode(self, z: Tensor, y: Tensor) -> Tensor:
        """Mean image of p(x | y, z) in [-1, 1]."""
        return self.to_image(self.decode_params(z, y))

    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Mean image decoded from the posterior mean of q(z | x, y); y: q(y | x)'s argmax
        when not given."""
        if y is None:
            y = self(x).argmax(dim=1)
        mu, _ = self.encode(x, y)
        return self.decode(mu, y)

    def nll(self, params: Tensor, h: Tensor) -> Tensor:
        """-log p(h | y, z) per example (the decoder's output: with a decoded variance, the
        means then the log-variances along dim 1)."""
        params, log_sigma = self._split(params)
        if log_sigma is None:
            log_sigma = getattr(self, "log_sigma", None)
        return image_nll(params, h, self.likelihood, log_sigma)

    def _aux_draw(self, h: Tensor, sample: bool) -> tuple[Tensor | None, Tensor | None]:
        return self.draw_aux(h, sample) if self.aux_encoder is not None else (None, None)

    def bound(self, x: Tensor, y: Tensor, sample: bool = True) -> Tensor:
        """The labeled bound L(x, y) per example (z, a and z1 drawn, or at their means)."""
        h = self.features(x, sample)
        return self.data_bound(h, y, *self._aux_draw(h, sample), sample=sample)

    def class_bounds(self, x: Tensor, sample: bool = True) -> Tensor:
        """L(x, y) for every class y: (N, K)."""
        h = self.features(x, sample)
        return self.data_class_bounds(h, *self._aux_draw(h, sample), sample=sample)

    def unlabeled(self, x: Tensor, sample: bool = True) -> tuple[Tensor, Tensor]:
        """U(x) per example and the classifier's logits on x (for one draw of a)."""
        return self.data_unlabeled(self.features(x, sample), sample)

    def sampler(self) -> Sampler:
        """Class-conditional mean images decoded from prior samples z ~ N(0, I) (SDGM: and
        a ~ p(a | z, y), its noise part of the latent)."""
        sdgm = self.auxiliary == "sdgm"
        width = self.latent_dim + (self.aux_dim if sdgm else 0)

        def latent(n: int, rng: torch.Generator | None, device: torch.device) -> Tensor:
            return torch.randn((n, width), generator=rng, device=device)

        def decode(latents: Tensor, y: Tensor | None) -> Tensor:
            if not sdgm:
                return self.decode(latents, y)
            z, noise = latents[:, : self.latent_dim], latents[:, self.latent_dim :]
            mu, logvar = self.aux_prior(z, y, z)
            a = mu + noise * torch.exp(0.5 * logvar)
            return self.to_image(self._split(self._decoder_params(z, y, a))[0])

        nets = [self.decoder, self.aux_decoder, self.m1_decoder]
        return Sampler(
            decode, latent, [n for n in nets if n is not None], self.num_classes, self.device
        )

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
        """Training images, binarised afresh, repeated for the Monte Carlo samples."""
        x = dynamic_binarize(x) if self.binarize else x
        return x.repeat(self.mc_samples, *([1] * (x.dim() - 1))) if self.mc_samples > 1 else x

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        sample = self.m1_features == "sample"
        h_lab = self.features(self._inputs(batch["x"]), sample)
        h_unl = self.features(self._inputs(batch["x_unl"]), sample)
        y_lab = batch["y"].repeat(self.mc_samples)
        a_lab, log_q_a = self._aux_draw(h_lab, True)
        bound_lab = self.data_bound(h_lab, y_lab, a_lab, log_q_a)
        bound_unl, _ = self.data_unlabeled(h_unl)
        logits_lab = self.class_logits(h_lab, a_lab)
        ce = F.cross_entropy(logits_lab, y_lab)
        alpha = self.alpha_value
        if alpha is None:
            alpha = self.alpha_value = self.classification_weight()
        loss = -bound_lab.mean() - bound_unl.mean() + alpha * ce
        raise_if_not_finite(loss, "semi-supervised VAE loss", self)
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

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self._log_bound(batch["x"], "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        self._log_bound(batch["x"], "test")

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer=optimizer)}
