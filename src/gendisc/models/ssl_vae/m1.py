"""The M1 front end of M1+M2 (Kingma et al. 2014): a frozen unconditional VAE M1 whose latent
code z1 is M2's data: z1 ~ q(z1 | x) in training (``model.m1.features=sample``, as in the
paper) or its mean; M2's samples and reconstructions of z1 decoded back to images by M1."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gendisc.checkpoints import load_module
from gendisc.errors import ConfigError
from gendisc.models.ssl_vae.bound import draw_gaussian
from gendisc.models.vae import VAEModule, mean_image

__all__ = ["M1FrontEnd"]


class M1FrontEnd(nn.Module):
    """M1's frozen ``encoder`` and ``decoder``, read from the checkpoint ``ckpt`` of a
    gendisc-train model=vae model.conditional=false run on images of ``in_shape``; always in
    eval mode. ``code_shape``: the shape (1, 1, D) of one z1 for M2's dense nets."""

    def __init__(self, ckpt: str, in_shape: tuple[int, ...]) -> None:
        super().__init__()
        vae = load_module(ckpt, "cpu", "model.m1.ckpt")
        if not isinstance(vae, VAEModule) or vae.conditional:
            raise ConfigError(
                f"model.m1.ckpt={ckpt}: M1 must be an unconditional VAE, the checkpoint of a "
                f"gendisc-train model=vae model.conditional=false run (got "
                f"{type(vae).__name__}{' conditional' if getattr(vae, 'conditional', 0) else ''})"
            )
        if tuple(vae.in_shape) != in_shape:
            raise ConfigError(
                f"model.m1.ckpt={ckpt}: M1 was trained on {tuple(vae.in_shape)} images, the "
                f"data are {in_shape}"
            )
        vae.requires_grad_(False)
        self.encoder, self.decoder = vae.encoder.eval(), vae.decoder.eval()
        self.likelihood = vae.likelihood
        self.code_shape = (1, 1, vae.latent_dim)

    def train(self, mode: bool = True) -> M1FrontEnd:
        """M1 is frozen: always in eval mode."""
        return super().train(False)

    def features(self, x: Tensor, sample: bool) -> Tensor:
        """z1 ~ q(z1 | x) (its mean unless ``sample``) shaped (N, 1, 1, D), without gradient."""
        with torch.no_grad():
            mu, logvar = self.encoder(x, None)
            return draw_gaussian(mu, logvar, sample).view(len(x), *self.code_shape)

    def to_image(self, code: Tensor) -> Tensor:
        """The mean image in [-1, 1] that M1 decodes from z1."""
        return mean_image(self.decoder(code.flatten(1), None), self.likelihood)
