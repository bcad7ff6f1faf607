"""Encoder and decoder nets of the variational auto-encoder.

Encoders ``(in_shape, latent_dim, num_classes=0, ...)`` return ``(mu, logvar)``; their hidden
layers are built by the classifier nets themselves (``body`` of :class:`MLPClassifier` /
:class:`ConvNet`), so a classifier started with ``model.init_from=<vae ckpt>`` loads them by
name (``encoder.body.*`` -> ``body.*``). A class-conditional encoder appends the one-hot label
to the flattened body output, so its body stays the classifier's.

Decoders ``(latent_dim, out_shape, num_classes=0, ...)`` map ``(z, y)`` to per-pixel
parameters of shape (N, *out_shape): Bernoulli logits or Gaussian means, unbounded (the VAE
module applies the likelihood). Class-conditional decoders take ``cat([z, one_hot(y)])``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gendisc.nets.classifiers import ConvNet, MLPClassifier
from gendisc.nets.generators import LatentNet, normalisation, one_hot_labels
from gendisc.nets.layers import activation_layer, as_shape

__all__ = ["ConvDecoder", "ConvEncoder", "MLPDecoder", "MLPEncoder"]


class _Encoder(nn.Module):
    """Shared logic: body -> flatten [-> cat one-hot y] -> (mu, logvar) heads."""

    body: nn.ModuleList

    def _build_heads(self, width: int, latent_dim: int, num_classes: int) -> None:
        self.latent_dim, self.num_classes = int(latent_dim), int(num_classes)
        self.feature_dim = int(width)
        self.mu = nn.Linear(width + self.num_classes, self.latent_dim)
        self.logvar = nn.Linear(width + self.num_classes, self.latent_dim)

    def _trunk(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = self._trunk(x).flatten(1)
        code = one_hot_labels(y, self.num_classes, x.shape[0], h)
        if code is not None:
            h = torch.cat([h, code], dim=1)
        return self.mu(h), self.logvar(h)


class MLPEncoder(_Encoder):
    """Dense encoder: the hidden layers of ``MLPClassifier(hidden, activation)`` (no noise or
    dropout) followed by linear ``mu`` and ``logvar`` heads."""

    def __init__(
        self,
        in_shape: Sequence[int],
        latent_dim: int,
        num_classes: int = 0,
        hidden: Sequence[int] = (512, 256),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.in_shape = as_shape(in_shape)
        backbone = MLPClassifier(self.in_shape, 1, hidden=hidden, activation=activation)
        self.body = backbone.body
        self._build_heads(backbone.feature_dim, latent_dim, num_classes)

    def _trunk(self, x: Tensor) -> Tensor:
        h = x.flatten(1)
        for block in self.body:
            h = block(h)
        return h


class ConvEncoder(_Encoder):
    """Conv encoder: the blocks of ``ConvNet(channels, batch_norm, activation)`` (no dropout);
    the last block's feature map is flattened (not pooled) into the ``mu``/``logvar`` heads."""

    def __init__(
        self,
        in_shape: Sequence[int],
        latent_dim: int,
        num_classes: int = 0,
        channels: Sequence[int] = (32, 64, 128),
        batch_norm: bool = True,
        activation: str = "leaky_relu",
    ) -> None:
        super().__init__()
        self.in_shape = as_shape(in_shape)
        backbone = ConvNet(
            self.in_shape,
            1,
            channels=channels,
            dropout=0.0,
            batch_norm=batch_norm,
            activation=activation,
        )
        self.body = backbone.body
        with torch.no_grad():
            width = self._trunk(torch.zeros(2, *self.in_shape)).flatten(1).shape[1]
        self._build_heads(width, latent_dim, num_classes)

    def _trunk(self, x: Tensor) -> Tensor:
        h = x
        for block in self.body:
            h = block(h)
        return h


class MLPDecoder(LatentNet):
    """Dense decoder: [dense -> activation] per hidden width -> dense prod(out_shape)."""

    def __init__(
        self,
        latent_dim: int,
        out_shape: Sequence[int],
        num_classes: int = 0,
        hidden: Sequence[int] = (256, 512),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self._setup_latent(latent_dim, out_shape, num_classes)
        self.net = self._dense_net(hidden, None, activation)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self.net(self._inputs(z, y)).view(-1, *self.out_shape)


class ConvDecoder(LatentNet):
    """Transposed-conv decoder (the DCGAN generator's layout without its tanh): dense ->
    (base_channels * 2^k, H / 2^k, W / 2^k) -> [ConvTranspose 4x4 stride 2 halving the
    channels -> norm -> act] x (k - 1) -> ConvTranspose 4x4 stride 2 to C channels (3x3 conv
    when no upsampling fits)."""

    def __init__(
        self,
        latent_dim: int,
        out_shape: Sequence[int],
        num_classes: int = 0,
        base_channels: int = 32,
        max_upsamples: int = 3,
        batch_norm: bool = True,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self._setup_latent(latent_dim, out_shape, num_classes)
        k = self._setup_seed(base_channels, max_upsamples)
        layers: list[nn.Module] = [nn.Linear(self.input_dim, math.prod(self.seed_shape))]
        layers += [activation_layer(activation), nn.Unflatten(1, self.seed_shape)]
        norm = normalisation(batch_norm, False, True)
        layers += self._upsampling_layers(k, 4, norm, activation)
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self.net(self._inputs(z, y))
