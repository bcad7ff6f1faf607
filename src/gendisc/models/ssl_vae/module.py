"""SSLVAEModule: the LightningModule that wires M2's bound (:mod:`.bound`), the M1 front end
(:mod:`.m1`) and the auxiliary variable (:mod:`.auxiliary`) into training and evaluation; the
package docstring (:mod:`gendisc.models.ssl_vae`) states the models and the loss."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from gendisc.errors import ConfigError
from gendisc.guards import raise_if_not_finite
from gendisc.models.contract import Batch
from gendisc.models.evaluation import ClassifierEvaluation
from gendisc.models.sampling import Sampler
from gendisc.models.ssl_vae.auxiliary import AuxiliaryDraw, AuxiliaryVariable
from gendisc.models.ssl_vae.bound import (
    classification_weight,
    draw_gaussian,
    dynamic_binarize,
    labeled_bound,
    split_decoded_variance,
    unlabeled_bound,
)
from gendisc.models.ssl_vae.m1 import M1FrontEnd
from gendisc.models.ssl_vae.options import AuxiliaryOptions, read_options
from gendisc.models.vae import image_nll, kl_per_example, log_sigma_parameter, mean_image
from gendisc.nets.classifiers import MLPClassifier
from gendisc.nets.vae import MLPDecoder, MLPEncoder
from gendisc.utils.config import RENAMED_SSL_VAE_STATE_PREFIXES, migrate_state_dict

__all__ = ["SSLVAEModule"]

_DENSE_ONLY = (
    "model.auxiliary and model.m1 feed vectors (concatenated, or M1's code) to the nets: use "
    "the dense ones (model/encoder=mlp model/decoder=mlp model/net@model.classifier=mlp)"
)


class SSLVAEModule(ClassifierEvaluation):
    """M2, M1+M2, ADGM or SDGM trained on a labeled and an unlabeled batch each step.

    The methods on ``h`` take M2's data: the images, or M1's code z1 (:meth:`features`); those
    on ``x`` take images. ``drawn``: a drawn auxiliary variable and its log q(a | h)
    (:meth:`draw_auxiliary`), or None (drawn when the model has one).

    Args:
        encoder: partial of an encoder net (``in_shape``, ``latent_dim``, ``num_classes``):
            q(z | x, y) (and, for the auxiliary models, q(a | x) and p(a | .)).
        decoder: partial of a decoder net (``latent_dim``, ``out_shape``, ``num_classes``):
            p(x | y, z).
        classifier: partial of a classifier net (``in_shape``, ``num_classes``): q(y | x).
        optimizer: partial of a torch optimizer (all trained nets).
        in_shape, num_classes, class_names: of the data (given by the build).
        m2: ``model.m2``: latent_dim, likelihood {kind, binarize, sigma, variance}, alpha
            {scale, value}, mc_samples.
        m1: ``model.m1``: ckpt (null: no M1), features.
        auxiliary: ``model.auxiliary``: kind (none, adgm, sdgm), dim, eval_samples.
        scheduler: optional partial of a torch lr scheduler (stepped each epoch).

    conf/model/ssl_vae.yaml documents every option; :mod:`.options` reads and checks them.
    """

    unlabeled_streams = 1
    conditional = True
    # class-conditional sample grids, reconstructions and generative metrics on; checkpoints
    # selected on val/acc, the default (gendisc.models.contract)
    generative_callbacks = True

    def __init__(
        self,
        encoder: Callable[..., nn.Module],
        decoder: Callable[..., nn.Module],
        classifier: Callable[..., nn.Module],
        optimizer: Callable[..., Optimizer],
        in_shape: Sequence[int],
        num_classes: int,
        class_names: list[str] | None = None,
        m2: Mapping[str, Any] | None = None,
        m1: Mapping[str, Any] | None = None,
        auxiliary: Mapping[str, Any] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if num_classes < 2:
            raise ConfigError(f"M2 needs at least 2 classes, the data have {num_classes}")
        super().__init__(num_classes, class_names)
        self.save_hyperparameters(
            ignore=["encoder", "decoder", "classifier", "optimizer", "scheduler"]
        )
        self.m2_options, m1_options, auxiliary_options = read_options(m2, m1, auxiliary)
        self.in_shape = tuple(int(v) for v in in_shape)
        self.latent_dim = self.m2_options.latent_dim
        self.likelihood = self.m2_options.likelihood
        self.mc_samples = self.m2_options.mc_samples
        # M1+M2: M2's data is M1's code, shaped (1, 1, D) for the dense nets
        self.m1 = M1FrontEnd(m1_options.ckpt, self.in_shape) if m1_options.ckpt else None
        self.sample_m1_features = m1_options.features == "sample"
        self.data_shape = self.m1.code_shape if self.m1 is not None else self.in_shape
        uses_vectors = auxiliary_options.enabled or self.m1 is not None
        try:
            self._build_nets(encoder, decoder, classifier, auxiliary_options)
        except (ValueError, RuntimeError, TypeError, ConfigError) as error:
            if uses_vectors:
                raise ConfigError(f"{_DENSE_ONLY} ({error})") from error
            raise
        if uses_vectors and not (
            isinstance(self.encoder, MLPEncoder)
            and isinstance(self.classifier, MLPClassifier)
            and (isinstance(self.decoder, MLPDecoder) or self.m1 is None)
        ):
            raise ConfigError(_DENSE_ONLY)
        if self.likelihood.kind == "gaussian" and not self.likelihood.decoded_variance:
            self.log_sigma = log_sigma_parameter(self.likelihood.sigma)
        self.alpha_value: float | None = None  # resolved at fit start
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

    def _build_nets(
        self,
        encoder: Callable[..., nn.Module],
        decoder: Callable[..., nn.Module],
        classifier: Callable[..., nn.Module],
        auxiliary: AuxiliaryOptions,
    ) -> None:
        """q(z | h, y) or q(z | a, y, h); p(h | y, z) or p(h | a, y, z) (SDGM); q(y | h) or
        q(y | a, h); with an auxiliary variable q(a | h) and p(a | h, y, z) or p(a | z, y)."""
        k, flat = self.num_classes, math.prod(self.data_shape)
        aux_dim = auxiliary.dim if auxiliary.enabled else 0
        joint_shape = (flat + aux_dim,) if auxiliary.enabled else self.data_shape
        self.encoder = encoder(in_shape=joint_shape, latent_dim=self.latent_dim, num_classes=k)
        decoder_latent = self.latent_dim + (aux_dim if auxiliary.kind == "sdgm" else 0)
        # decoded variance: twice the channels, the means then the log-variances
        channels, *size = self.data_shape
        decoded = self.likelihood.decoded_variance
        out_shape = (2 * channels, *size) if decoded else self.data_shape
        self.decoder = decoder(latent_dim=decoder_latent, out_shape=out_shape, num_classes=k)
        self.classifier = classifier(in_shape=joint_shape, num_classes=k)
        self.auxiliary = (
            AuxiliaryVariable(auxiliary, encoder, self.data_shape, self.latent_dim, k)
            if auxiliary.enabled
            else None
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Read a checkpoint written before the options were grouped: its weight names
        (``aux_encoder.*`` -> ``auxiliary.posterior.*``, ...) renamed before Lightning loads
        them (the module itself is built from the run config that ``checkpoints.run_config``
        migrates)."""
        if isinstance(checkpoint.get("state_dict"), dict):
            migrate_state_dict(checkpoint["state_dict"], RENAMED_SSL_VAE_STATE_PREFIXES)
        super().on_load_checkpoint(checkpoint)

    # ------------------------------------------------------------- the model on M2's data h
    def features(self, x: Tensor, sample: bool = False) -> Tensor:
        """M2's data h for images x: x itself, or M1's z1 ~ q(z1 | x) (its mean unless
        ``sample``)."""
        return x if self.m1 is None else self.m1.features(x, sample)

    def draw_auxiliary(self, h: Tensor, sample: bool = True) -> AuxiliaryDraw | None:
        """a ~ q(a | h) (its mean unless ``sample``) and log q(a | h); None without one."""
        return None if self.auxiliary is None else self.auxiliary.draw(h, sample)

    def _with_auxiliary(self, h: Tensor, drawn: AuxiliaryDraw | None) -> Tensor:
        """The input of q(y | .) and q(z | .): h, or [flat h, a] with an auxiliary variable."""
        return h if drawn is None else AuxiliaryVariable.joint(h, drawn[0])

    def class_logits(self, h: Tensor, drawn: AuxiliaryDraw | None = None) -> Tensor:
        """Logits of q(y | h) or q(y | a, h)."""
        return self.classifier(self._with_auxiliary(h, drawn))

    def _decoder_output(self, z: Tensor, y: Tensor, a: Tensor | None) -> Tensor:
        """The decoder's output for z (SDGM: [z, a]); see :meth:`_likelihood_params`."""
        if self.auxiliary is not None and self.auxiliary.skips_to_decoder:
            z = torch.cat([z, a], dim=1)
        return self.decoder(z, y)

    def _likelihood_params(self, output: Tensor) -> tuple[Tensor, Tensor | None]:
        """(likelihood parameters, log sigma) of a decoder output: with a decoded variance the
        means and the log sigma per dimension, else the output and the shared log sigma (None
        for the Bernoulli)."""
        if self.likelihood.decoded_variance:
            return split_decoded_variance(output)
        return output, getattr(self, "log_sigma", None)

    def nll(self, output: Tensor, h: Tensor) -> Tensor:
        """-log p(h | y, z) per example from the decoder's ``output``."""
        params, log_sigma = self._likelihood_params(output)
        return image_nll(params, h, self.likelihood.kind, log_sigma)

    def bound(
        self, h: Tensor, y: Tensor, drawn: AuxiliaryDraw | None = None, sample: bool = True
    ) -> Tensor:
        """The labeled bound L(h, y) per example (z ~ q(z | .), or its mean); with an auxiliary
        variable plus log p(a | .) - log q(a | h)."""
        if drawn is None:
            drawn = self.draw_auxiliary(h, sample)
        mu, logvar = self.encoder(self._with_auxiliary(h, drawn), y)
        z = draw_gaussian(mu, logvar, sample)
        output = self._decoder_output(z, y, None if drawn is None else drawn[0])
        bound = labeled_bound(self.nll(output, h), kl_per_example(mu, logvar), self.num_classes)
        return bound if drawn is None else self.auxiliary.bound(bound, h, y, z, drawn)

    def class_bounds(
        self, h: Tensor, drawn: AuxiliaryDraw | None = None, sample: bool = True
    ) -> Tensor:
        """L(h, y) for every class y: (N, K), the K copies of the batch in one pass (one a per
        example, shared by its K copies)."""
        if drawn is None:
            drawn = self.draw_auxiliary(h, sample)
        n, k = h.shape[0], self.num_classes
        h_all = h.repeat(k, *([1] * (h.dim() - 1)))
        y_all = torch.arange(k, device=h.device).repeat_interleave(n)
        drawn_all = None if drawn is None else AuxiliaryVariable.repeat(drawn, k)
        return self.bound(h_all, y_all, drawn_all, sample).view(k, n).t()

    def unlabeled(self, h: Tensor, sample: bool = True) -> tuple[Tensor, Tensor]:
        """U(h) per example and the classifier's logits (a ~ q(a | h) drawn once per example)."""
        drawn = self.draw_auxiliary(h, sample)
        logits = self.class_logits(h, drawn)
        return unlabeled_bound(self.class_bounds(h, drawn, sample), logits), logits

    # ---------------------------------------------------------------------- on images x
    def forward(self, x: Tensor) -> Tensor:
        """Logits of q(y | x): for the auxiliary models the log of q(y | a, x) averaged over
        ``model.auxiliary.eval_samples`` draws a ~ q(a | x) (a at its mean when 0)."""
        h = self.features(x)
        if self.auxiliary is None:
            return self.class_logits(h)
        s, n = self.auxiliary.eval_samples, len(h)
        if s == 0:
            return self.class_logits(h, self.auxiliary.draw(h, sample=False))
        h_all = h.repeat(s, *([1] * (h.dim() - 1)))
        probs = self.class_logits(h_all, self.auxiliary.draw(h_all)).softmax(dim=1)
        return probs.view(s, n, -1).mean(dim=0).clamp_min(1e-30).log()

    def encode(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance of q(z | x, y) (a and z1 at their means)."""
        h = self.features(x)
        return self.encoder(self._with_auxiliary(h, self.draw_auxiliary(h, sample=False)), y)

    def decode_params(self, z: Tensor, y: Tensor, a: Tensor | None = None) -> Tensor:
        """Bernoulli logits or Gaussian means of M2's data given z and y (SDGM: and a, by
        default the mean of p(a | z, y))."""
        if a is None and self.auxiliary is not None and self.auxiliary.skips_to_decoder:
            a = self.auxiliary.prior_params(y, z)[0]
        return self._likelihood_params(self._decoder_output(z, y, a))[0]

    def to_image(self, params: Tensor) -> Tensor:
        """The mean image of M2's likelihood parameters (M1+M2: z1's mean decoded by M1)."""
        if self.m1 is None:
            return mean_image(params, self.likelihood.kind)
        return self.m1.to_image(params)

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

    def sampler(self) -> Sampler:
        """Class-conditional mean images decoded from prior samples z ~ N(0, I) (SDGM: and
        a ~ p(a | z, y), its noise part of the latent)."""
        sdgm = self.auxiliary is not None and self.auxiliary.skips_to_decoder
        width = self.latent_dim + (self.auxiliary.dim if sdgm else 0)

        def latent(n: int, rng: torch.Generator | None, device: torch.device) -> Tensor:
            return torch.randn((n, width), generator=rng, device=device)

        def decode(latents: Tensor, y: Tensor | None) -> Tensor:
            if not sdgm:
                return self.decode(latents, y)
            z, noise = latents[:, : self.latent_dim], latents[:, self.latent_dim :]
            mu, logvar = self.auxiliary.prior_params(y, z)
            return self.to_image(self.decode_params(z, y, mu + noise * torch.exp(0.5 * logvar)))

        nets = [
            self.decoder,
            None if self.auxiliary is None else self.auxiliary.prior,
            None if self.m1 is None else self.m1.decoder,
        ]
        return Sampler(
            decode, latent, [n for n in nets if n is not None], self.num_classes, self.device
        )

    # ------------------------------------------------------------------------------ training
    def resolve_alpha(self) -> float:
        """alpha: ``model.m2.alpha.value``, else ``model.m2.alpha.scale * N_total /
        N_labeled`` from the training datamodule's label protocol."""
        alpha = self.m2_options.alpha
        if alpha.value is not None:
            return float(alpha.value)
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        if datamodule is None or not hasattr(datamodule, "labeled_index"):
            raise ConfigError(
                "model.m2.alpha.value=null derives the classification weight from the "
                "datamodule's labeled and unlabeled sets, and there is none: train through "
                "gendisc-train or set model.m2.alpha.value"
            )
        n_total, n_labeled = len(datamodule.unlabeled_index), len(datamodule.labeled_index)
        return classification_weight(n_total, n_labeled, alpha.scale)

    def on_fit_start(self) -> None:
        self.alpha_value = self.resolve_alpha()

    def training_images(self, x: Tensor) -> Tensor:
        """Training images, binarised afresh, repeated for the Monte Carlo samples."""
        x = dynamic_binarize(x) if self.likelihood.binarize else x
        return x.repeat(self.mc_samples, *([1] * (x.dim() - 1))) if self.mc_samples > 1 else x

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        sample = self.sample_m1_features
        h_lab = self.features(self.training_images(batch["x"]), sample)
        h_unl = self.features(self.training_images(batch["x_unl"]), sample)
        y_lab = batch["y"].repeat(self.mc_samples)
        drawn_lab = self.draw_auxiliary(h_lab)
        bound_lab = self.bound(h_lab, y_lab, drawn_lab)
        bound_unl, _ = self.unlabeled(h_unl)
        logits_lab = self.class_logits(h_lab, drawn_lab)
        ce = F.cross_entropy(logits_lab, y_lab)
        alpha = self.alpha_value
        if alpha is None:
            alpha = self.alpha_value = self.resolve_alpha()
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
        bound, _ = self.unlabeled(self.features(x, sample=True))
        self.log(f"{stage}/elbo", bound.mean(), on_epoch=True, sync_dist=True, batch_size=len(x))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self._log_bound(batch["x"], "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        self._log_bound(batch["x"], "test")

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer=optimizer)}
