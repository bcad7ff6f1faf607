"""The auxiliary variable a of Maaløe et al. 2016: ADGM (p(a | x, y, z)) and SDGM (p(a | z, y),
with p(x | a, y, z)), on M2's data h (the images, or M1's code).

Inference model q(a | h) q(y | a, h) q(z | a, y, h); with a ~ q(a | h) the labeled bound gains
``log p(a | .) - log q(a | h)`` (:func:`auxiliary_bound`). The classifier and q(z | .) read the
concatenation [flat h, a] (:meth:`AuxiliaryVariable.joint`); SDGM's decoder reads [z, a].
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from gendisc.models.ssl_vae.bound import draw_gaussian
from gendisc.models.ssl_vae.options import AuxiliaryOptions

__all__ = ["AuxiliaryVariable", "auxiliary_bound", "gaussian_log_density"]

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_density(v: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(v; mu, diag(exp(logvar))) per example, summed over dimensions: (N,)."""
    terms = -0.5 * (_LOG_2PI + logvar + (v - mu).square() * torch.exp(-logvar))
    return terms.flatten(1).sum(dim=1)


def auxiliary_bound(bound: Tensor, log_p_a: Tensor, log_q_a: Tensor) -> Tensor:
    """The auxiliary models' labeled bound: M2's bound plus log p(a | .) - log q(a | x)."""
    return bound + log_p_a - log_q_a


# a drawn from q(a | h) and its log-density log q(a | h), per example
AuxiliaryDraw = tuple[Tensor, Tensor]


class AuxiliaryVariable(nn.Module):
    """q(a | h) (``posterior``) and p(a | h, y, z) / p(a | z, y) (``prior``), two dense
    encoder nets built from the ``encoder`` partial.

    Args:
        options: ``model.auxiliary`` (kind adgm or sdgm, dim, eval_samples).
        encoder: partial of the dense encoder net (``in_shape``, ``latent_dim``,
            ``num_classes``).
        data_shape: shape of one h.
        latent_dim: size of z.
        num_classes: K (p(a | .) is conditioned on y).
    """

    def __init__(
        self,
        options: AuxiliaryOptions,
        encoder: Callable[..., nn.Module],
        data_shape: tuple[int, ...],
        latent_dim: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.kind = options.kind
        self.dim = int(options.dim)
        self.eval_samples = int(options.eval_samples)
        self.posterior = encoder(in_shape=data_shape, latent_dim=self.dim, num_classes=0)
        prior_in = latent_dim + (math.prod(data_shape) if self.kind == "adgm" else 0)
        self.prior = encoder(in_shape=(prior_in,), latent_dim=self.dim, num_classes=num_classes)

    @property
    def skips_to_decoder(self) -> bool:
        """SDGM: the decoder p(x | a, y, z) reads a beside z."""
        return self.kind == "sdgm"

    def draw(self, h: Tensor, sample: bool = True) -> AuxiliaryDraw:
        """a ~ q(a | h) (its mean unless ``sample``) and log q(a | h) per example."""
        mu, logvar = self.posterior(h, None)
        a = draw_gaussian(mu, logvar, sample)
        return a, gaussian_log_density(a, mu, logvar)

    def prior_params(self, y: Tensor, z: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of p(a | h, y, z) (ADGM) or p(a | z, y) (SDGM: no ``h``)."""
        inputs = torch.cat([h.flatten(1), z], dim=1) if self.kind == "adgm" else z
        return self.prior(inputs, y)

    def bound(self, bound: Tensor, h: Tensor, y: Tensor, z: Tensor, drawn: AuxiliaryDraw) -> Tensor:
        """M2's labeled bound ``bound`` plus log p(a | .) - log q(a | h) for the drawn a."""
        a, log_q_a = drawn
        log_p_a = gaussian_log_density(a, *self.prior_params(y, z, h))
        return auxiliary_bound(bound, log_p_a, log_q_a)

    @staticmethod
    def joint(h: Tensor, a: Tensor) -> Tensor:
        """The input [flat h, a] of q(y | a, h) and q(z | a, y, h)."""
        return torch.cat([h.flatten(1), a], dim=1)

    @staticmethod
    def repeat(drawn: AuxiliaryDraw, times: int) -> AuxiliaryDraw:
        """One draw per example shared by ``times`` copies of the batch (stacked copies)."""
        a, log_q_a = drawn
        return a.repeat(times, 1), log_q_a.repeat(times)
