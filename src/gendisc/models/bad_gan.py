"""Bad GAN (Dai, Yang, Yang, Cohen, Salakhutdinov 2017): the terms that make ssl_gan's generator
a *complement* generator (samples in the low-density gaps between the classes), as options of
ssl_gan (``model.bad_gan``), not a second module.

- D: ``conditional_entropy`` x mean H(q(y | x_unl)) (confident predictions on unlabeled data;
  SVHN: 0.1);
- G: ``pull_away`` x the pull-away term of its features at ``model.adversarial.feature_layer`` (SVHN: 0.8);
- G and an encoder of the noise: ``variational_entropy`` x -log q(z | G(z)) (CIFAR-10: 0.01), a
  lower bound on G's entropy up to constants;
- G: ``low_density.weight`` x the mean excess of log p(G(z)) over a threshold, where the density
  model is a gendisc unconditional VAE checkpoint (its one-sample ELBO stands in for the authors'
  PixelCNN++ log p) and the threshold the ``percentile`` of the ELBO of real unlabeled images
  (MNIST: 1e-4, the 10th percentile, 30 samples with probability 0.1 per step after 9000 steps).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gendisc.checkpoints import check_checkpoint, load_module
from gendisc.errors import ConfigError
from gendisc.losses import (
    conditional_entropy,
    gaussian_noise_nll,
    low_density_loss,
    pull_away_term,
)

LOW_DENSITY_SETTING = "model.bad_gan.low_density.density_ckpt"


class BadGANTerms(nn.Module):
    """The Bad GAN terms of one ssl_gan module (a term with weight 0 is off).

    Args:
        in_shape: image shape; latent_dim: G's noise size (for the encoder).
        conditional_entropy: weight of D's conditional entropy on unlabeled images.
        pull_away: weight of the pull-away term on G's features.
        variational_entropy: weight of the noise encoder's Gaussian NLL (G and encoder).
        encoder: partial of an encoder net (``in_shape``, ``latent_dim``, ``num_classes``)
            predicting G's noise; needed when ``variational_entropy`` > 0.
        low_density: null (off) or a dict: ``weight``, ``density_ckpt`` (an unconditional
            model=vae checkpoint), ``percentile`` (of the real images' ELBO: the threshold),
            ``start_epoch`` (the term starts at this epoch), ``probability`` (per step),
            ``samples`` (fresh generated images per use), ``reference_images`` (real images
            for the threshold).
    """

    density_threshold: Tensor

    def __init__(
        self,
        in_shape: Sequence[int],
        latent_dim: int,
        conditional_entropy: float = 0.0,
        pull_away: float = 0.0,
        variational_entropy: float = 0.0,
        encoder: Callable[..., nn.Module] | None = None,
        low_density: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        weights = {
            "conditional_entropy": conditional_entropy,
            "pull_away": pull_away,
            "variational_entropy": variational_entropy,
        }
        bad = {name: value for name, value in weights.items() if value < 0}
        if bad:
            raise ConfigError(f"model.bad_gan: weights must be >= 0, got {bad}")
        self.conditional_entropy = float(conditional_entropy)
        self.pull_away = float(pull_away)
        self.variational_entropy = float(variational_entropy)
        self.encoder: nn.Module | None = None
        if self.variational_entropy > 0:
            if encoder is None:
                raise ConfigError(
                    "model.bad_gan.variational_entropy > 0 needs model.bad_gan.encoder (e.g. "
                    "gendisc.nets.vae.MLPEncoder): the net that predicts G's noise."
                )
            self.encoder = encoder(in_shape=tuple(in_shape), latent_dim=latent_dim, num_classes=0)
        self.low_density = _low_density_options(low_density)
        self.register_buffer("density_threshold", torch.tensor(float("nan")))
        # the density model: a plain attribute, never in the state dict (read at fit start)
        self._density: list[nn.Module] = []

    @property
    def active(self) -> bool:
        return bool(
            self.conditional_entropy
            or self.pull_away
            or self.variational_entropy
            or self.low_density
        )

    def discriminator_term(self, logits_unl: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """D's extra loss on the unlabeled batch's K logits, and its statistics."""
        if not self.conditional_entropy:
            return logits_unl.new_zeros(()), {}
        entropy = conditional_entropy(logits_unl)
        return self.conditional_entropy * entropy, {"train/cond_entropy": entropy.detach()}

    def generator_term(
        self,
        fake: Tensor,
        z: Tensor,
        features: Callable[[Tensor], Tensor],
        sample: Callable[[int], Tensor],
        epoch: int,
    ) -> Tensor:
        """G's extra loss on a generated batch ``fake`` made from the noise ``z``; ``features``
        maps images to D's features, ``sample(n)`` draws fresh images (low-density term)."""
        loss = fake.new_zeros(())
        if self.pull_away:
            loss = loss + self.pull_away * pull_away_term(features(fake).float())
        if self.encoder is not None:
            mu, logvar = self.encoder(fake)
            loss = loss + self.variational_entropy * gaussian_noise_nll(mu, logvar, z)
        options = self.low_density
        if (
            options
            and self._density
            and epoch >= options["start_epoch"]
            and float(torch.rand(())) < options["probability"]  # CPU generator: no device sync
        ):
            log_p = self._density[0](sample(options["samples"]))
            loss = loss + options["weight"] * low_density_loss(log_p, self.density_threshold)
        return loss

    def load_density(self, real_images: Callable[[int], Tensor], device: torch.device) -> None:
        """Read the density model and, unless restored with a checkpoint, set the threshold:
        the ``percentile`` of its ELBO over ``reference_images`` real unlabeled images."""
        options = self.low_density
        if not options or self._density:
            return
        path = options["density_ckpt"]
        if not Path(str(path)).expanduser().is_file():
            raise ConfigError(
                f"{LOW_DENSITY_SETTING}={path}: no such file. Train an unconditional VAE on the "
                "same data first (gendisc-train experiment=ssl_vae_m1_mnist, or model=vae "
                "model.conditional=false), or set model.bad_gan.low_density=null."
            )
        density = load_module(path, device, LOW_DENSITY_SETTING)
        if getattr(density, "conditional", True) or not hasattr(density, "terms"):
            raise ConfigError(
                f"{LOW_DENSITY_SETTING}={path}: the density model must be an unconditional "
                f"VAE (model=vae model.conditional=false), got {type(density).__name__}."
            )
        density.requires_grad_(False)
        self._density = [density]
        if torch.isnan(self.density_threshold):
            with torch.no_grad():
                log_p = density(real_images(options["reference_images"]).to(device))
            threshold = torch.quantile(log_p.float(), options["percentile"] / 100.0)
            self.density_threshold.copy_(threshold)


def _low_density_options(options: dict[str, Any] | None) -> dict[str, Any] | None:
    """The low-density term's options with their defaults, checked (None: off)."""
    if not options:
        return None
    known = {
        "weight": 1e-4,
        "density_ckpt": None,
        "percentile": 10.0,
        "start_epoch": 0,
        "probability": 1.0,
        "samples": 30,
        "reference_images": 1000,
    }
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"model.bad_gan.low_density: unknown options {unknown}; known: {known}")
    merged = {**known, **options}
    if not merged["density_ckpt"]:
        raise ConfigError(
            f"{LOW_DENSITY_SETTING} is not set: give an unconditional VAE checkpoint."
        )
    if not 0 <= merged["percentile"] <= 100 or not 0 <= merged["probability"] <= 1:
        raise ConfigError(
            "model.bad_gan.low_density: percentile in [0, 100] and probability in [0, 1]."
        )
    if merged["weight"] < 0 or merged["samples"] < 1 or merged["reference_images"] < 1:
        raise ConfigError(
            "model.bad_gan.low_density: weight >= 0, samples and reference_images >= 1."
        )
    path = Path(str(merged["density_ckpt"])).expanduser()
    if path.is_file():  # checked now, so that a refused file stops the run before it writes
        check_checkpoint(path, LOW_DENSITY_SETTING)
    return merged
