"""Generator nets: ``forward(z, y=None) -> images in [-1, 1]`` of shape (N, *out_shape).

Class-conditional generators (``num_classes > 0``) concatenate a one-hot code of ``y`` to
``z``. With ``virtual_batch_norm=True`` a generator owns a fixed reference batch of latents
(buffer ``vbn_z_ref``, drawn once at construction, saved in the state dict; labels
``vbn_y_ref`` cycle through the classes) and every forward runs ``cat([z_ref, z])`` through the
net, each VBN layer taking its reference statistics from the leading rows; only the outputs
for ``z`` are returned (the cost: ``vbn_reference_size`` extra rows per call).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gendisc.errors import ConfigError
from gendisc.nets.layers import (
    VirtualBatchNorm,
    WeightNormConvTranspose2d,
    WeightNormLinear,
    activation_layer,
    as_shape,
)

__all__ = [
    "DCGANGenerator",
    "LatentNet",
    "MLPGenerator",
    "SalimansMLPGenerator",
    "normalisation",
    "one_hot_labels",
    "seed_size",
]

_LATENTS = ("normal", "uniform")


class _Shift(nn.Module):
    """Learned per-feature bias (batch norm without a scale, as the paper's generators)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias.view(1, -1, *([1] * (x.dim() - 2)))


# normalisation layers for (features, spatial); the layer they follow has no bias
Norm = Callable[[int, bool], list[nn.Module]]


def normalisation(batch_norm: bool, vbn: bool, scale: bool) -> Norm | None:
    """VBN, BN or no normalisation (None); ``scale=False`` keeps only a learned shift."""
    if not (batch_norm or vbn):
        return None

    def layers(n: int, spatial: bool) -> list[nn.Module]:
        if vbn:
            norm: nn.Module = VirtualBatchNorm(n, affine=scale)
        else:
            norm = (nn.BatchNorm2d if spatial else nn.BatchNorm1d)(n, affine=scale)
        return [norm] if scale else [norm, _Shift(n)]

    return layers


def one_hot_labels(y: Tensor | None, num_classes: int, n: int, like: Tensor) -> Tensor | None:
    """One-hot code of ``y`` for a conditional net (checked), None for an unconditional one."""
    if num_classes == 0:
        if y is not None:
            raise ValueError("this net is unconditional (num_classes=0): pass y=None")
        return None
    if y is None or y.shape != (n,):
        got = None if y is None else tuple(y.shape)
        raise ValueError(f"this net is class-conditional: pass labels y of shape ({n},), got {got}")
    return F.one_hot(y.long(), num_classes).to(like.dtype)


class LatentNet(nn.Module):
    """Shared by the generators and the VAE decoders: latent size, output shape (C, H, W),
    conditioning on ``num_classes`` (``_inputs``), latent sampling (``latent_distribution``)
    and the layer stacks they are built of (``_dense_net``, ``_upsampling_layers``)."""

    latent_distribution = "normal"

    def _setup_latent(self, latent_dim: int, out_shape: Sequence[int], num_classes: int) -> None:
        self.latent_dim = int(latent_dim)
        self.out_shape = as_shape(out_shape)
        if len(self.out_shape) != 3:
            raise ConfigError(f"out_shape must be (C, H, W), got {self.out_shape}")
        self.num_classes = int(num_classes)
        self.input_dim = self.latent_dim + self.num_classes

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    def sample_latent(
        self,
        n: int,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """n latents from ``latent_distribution`` (N(0, I), or U(0, 1) as the paper's code)."""
        if device is None:
            p = next(self.parameters(), None)
            device = p.device if p is not None else "cpu"
        shape = (n, self.latent_dim)
        if self.latent_distribution == "uniform":
            return torch.rand(shape, device=device, generator=generator)
        return torch.randn(shape, device=device, generator=generator)

    def _inputs(self, z: Tensor, y: Tensor | None) -> Tensor:
        """The net's input: ``z`` (checked), with the one-hot code of ``y`` when conditional."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (N, {self.latent_dim}), got {tuple(z.shape)}")
        code = one_hot_labels(y, self.num_classes, z.shape[0], z)
        return z if code is None else torch.cat([z, code], dim=1)

    def _dense_net(
        self,
        hidden: Sequence[int],
        norm: Norm | None,
        activation: str,
        output: Callable[[int, int], nn.Module] = nn.Linear,
    ) -> nn.Sequential:
        """input_dim -> [dense -> norm -> activation] per hidden width -> ``output(width,
        prod(out_shape))``; the dense layers have a bias only without ``norm``."""
        layers: list[nn.Module] = []
        width = self.input_dim
        for h in as_shape(hidden):
            layers.append(nn.Linear(width, h, bias=norm is None))
            layers += norm(h, False) if norm else []
            layers.append(activation_layer(activation))
            width = h
        layers.append(output(width, math.prod(self.out_shape)))
        return nn.Sequential(*layers)

    def _setup_seed(self, base_channels: int, max_upsamples: int) -> int:
        """Sets ``seed_shape`` = (base_channels * 2^k, H / 2^k, W / 2^k) (:func:`seed_size`)
        of a transposed-conv net and returns its number k of 2x upsamplings."""
        _, h, w = self.out_shape
        k, h0, w0 = seed_size(h, w, max_upsamples)
        self.seed_shape = (base_channels * 2**k, h0, w0)
        return k

    def _upsampling_layers(
        self,
        k: int,
        kernel_size: int,
        norm: Norm | None,
        activation: str,
        weight_norm: bool = False,
    ) -> list[nn.Module]:
        """From the seed's channels: k - 1 x [ConvTranspose (kernel_size, stride 2) halving the
        channels -> norm -> activation] -> ConvTranspose to C channels at full size
        (weight-normalised with init scale 0.1 with ``weight_norm``), a 3x3 conv when k = 0.
        The hidden convs have a bias only without ``norm``."""
        c, c_out = self.seed_shape[0], self.out_shape[0]
        pad = (kernel_size - 1) // 2
        out_pad = 2 + 2 * pad - kernel_size  # makes every transposed conv exactly double
        layers: list[nn.Module] = []
        for _ in range(k - 1):
            layers.append(
                nn.ConvTranspose2d(c, c // 2, kernel_size, 2, pad, out_pad, bias=norm is None)
            )
            layers += norm(c // 2, True) if norm else []
            layers.append(activation_layer(activation))
            c //= 2
        if k == 0:
            if weight_norm:
                raise ConfigError("weight_norm needs at least one upsampling (even out_shape)")
            layers.append(nn.Conv2d(c, c_out, 3, 1, 1))
        elif weight_norm:
            layers.append(
                WeightNormConvTranspose2d(c, c_out, kernel_size, 2, pad, out_pad, init_scale=0.1)
            )
        else:
            layers.append(nn.ConvTranspose2d(c, c_out, kernel_size, 2, pad, out_pad))
        return layers


class _Generator(LatentNet):
    """Shared logic: latent distribution, VBN reference batch, tanh output."""

    def __init__(
        self,
        latent_dim: int,
        out_shape: Sequence[int],
        num_classes: int,
        latent_distribution: str,
        virtual_batch_norm: bool,
        vbn_reference_size: int,
    ) -> None:
        super().__init__()
        self._setup_latent(latent_dim, out_shape, num_classes)
        if latent_distribution not in _LATENTS:
            raise ConfigError(
                f"latent_distribution must be one of {_LATENTS}, got {latent_distribution!r}"
            )
        self.latent_distribution = latent_distribution
        self.virtual_batch_norm = bool(virtual_batch_norm)
        if self.virtual_batch_norm:
            if vbn_reference_size < 1:
                raise ConfigError("vbn_reference_size must be >= 1")
            self.register_buffer("vbn_z_ref", self.sample_latent(vbn_reference_size, device="cpu"))
            y_ref = torch.arange(vbn_reference_size) % max(self.num_classes, 1)
            self.register_buffer("vbn_y_ref", y_ref)

    def _body(self, h: Tensor, ref_size: int) -> Tensor:
        """The net's output for the rows ``h`` (tanh of ``net``, by default)."""
        return torch.tanh(_run(self.net, h, ref_size))

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        h = self._inputs(z, y)
        ref_size = 0
        if self.virtual_batch_norm:
            y_ref = self.vbn_y_ref if self.conditional else None
            h_ref = self._inputs(self.vbn_z_ref.to(z.dtype), y_ref)
            ref_size = h_ref.shape[0]
            h = torch.cat([h_ref, h], dim=0)
        out = self._body(h, ref_size)[ref_size:]
        return out.reshape(-1, *self.out_shape)


def _run(layers: nn.Sequential, h: Tensor, ref_size: int) -> Tensor:
    """Run ``layers``, passing ``ref_size`` to VBN layers."""
    for layer in layers:
        h = layer(h, ref_size) if isinstance(layer, VirtualBatchNorm) else layer(h)
    return h


class SalimansMLPGenerator(_Generator):
    """The paper's MNIST generator: z (100-d U(0,1)) -> [dense 500 -> batch norm -> softplus]
    x 2 -> weight-norm dense prod(out_shape) -> sigmoid, mapped to [-1, 1] as 2 * sigmoid - 1.

    As in the authors' code (their ``batch_norm`` wrapper) the dense layers have no bias and
    batch norm has a learned shift but no scale (``bn_scale=False``), applied before the
    softplus; the output layer's weight norm has a trained scale and no data-dependent init.
    ``virtual_batch_norm=True`` replaces batch norm by VBN.
    """

    def __init__(
        self,
        latent_dim: int = 100,
        out_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 0,
        hidden: Sequence[int] = (500, 500),
        latent_distribution: str = "uniform",
        virtual_batch_norm: bool = False,
        vbn_reference_size: int = 100,
        bn_scale: bool = False,
    ) -> None:
        super().__init__(
            latent_dim,
            out_shape,
            num_classes,
            latent_distribution,
            virtual_batch_norm,
            vbn_reference_size,
        )
        self.net = self._dense_net(
            hidden,
            normalisation(True, self.virtual_batch_norm, bn_scale),
            "softplus",
            partial(WeightNormLinear, data_init=False),
        )

    def _body(self, h: Tensor, ref_size: int) -> Tensor:
        return 2.0 * torch.sigmoid(_run(self.net, h, ref_size)) - 1.0


class MLPGenerator(_Generator):
    """Dense generator: [dense -> norm -> activation] per hidden width -> dense -> tanh.

    Norm: batch norm (``batch_norm``), VBN (``virtual_batch_norm``) or none; ``weight_norm``
    makes the output layer weight-normalised (data-dependent init on its first batch).
    """

    def __init__(
        self,
        latent_dim: int,
        out_shape: Sequence[int],
        num_classes: int = 0,
        hidden: Sequence[int] = (256, 512),
        activation: str = "relu",
        batch_norm: bool = True,
        virtual_batch_norm: bool = False,
        weight_norm: bool = False,
        latent_distribution: str = "normal",
        vbn_reference_size: int = 64,
    ) -> None:
        super().__init__(
            latent_dim,
            out_shape,
            num_classes,
            latent_distribution,
            virtual_batch_norm,
            vbn_reference_size,
        )
        self.net = self._dense_net(
            hidden,
            normalisation(batch_norm, self.virtual_batch_norm, True),
            activation,
            WeightNormLinear if weight_norm else nn.Linear,
        )


def seed_size(h: int, w: int, max_upsamples: int) -> tuple[int, int, int]:
    """Number k of 2x upsamplings and seed size (h / 2^k, w / 2^k), halving while both sides
    are even, the halves stay >= 4 and k < max_upsamples: 32 -> 4 (k=3), 28 -> 7, 8 -> 4."""
    k = 0
    while k < max_upsamples and h % 2 == 0 and w % 2 == 0 and h // 2 >= 4 and w // 2 >= 4:
        h, w, k = h // 2, w // 2, k + 1
    return k, h, w


class DCGANGenerator(_Generator):
    """DCGAN-style generator for 8x8 to 32x32 outputs.

    dense -> (c0, h0, w0) seed with c0 = base_channels * 2^k (32x32: 512@4x4 for base 64)
    -> norm -> ReLU -> k - 1 x [ConvTranspose (kernel_size, stride 2) halving the channels
    -> norm -> ReLU] -> ConvTranspose to C channels at full size -> tanh (a 3x3 conv when
    k = 0). ``weight_norm`` makes the output layer weight-normalised (init scale 0.1, as the
    paper's CIFAR G). With ``latent_distribution="uniform"``, ``bn_scale=False``,
    ``weight_norm=True`` and ``kernel_size=5`` this is the paper's CIFAR-10 / SVHN generator.
    """

    def __init__(
        self,
        latent_dim: int,
        out_shape: Sequence[int],
        num_classes: int = 0,
        base_channels: int = 64,
        kernel_size: int = 4,
        max_upsamples: int = 3,
        batch_norm: bool = True,
        virtual_batch_norm: bool = False,
        weight_norm: bool = False,
        bn_scale: bool = True,
        latent_distribution: str = "normal",
        vbn_reference_size: int = 64,
    ) -> None:
        super().__init__(
            latent_dim,
            out_shape,
            num_classes,
            latent_distribution,
            virtual_batch_norm,
            vbn_reference_size,
        )
        if kernel_size < 2:
            raise ConfigError(f"kernel_size must be >= 2, got {kernel_size}")
        k = self._setup_seed(base_channels, max_upsamples)
        norm = normalisation(batch_norm, self.virtual_batch_norm, bn_scale)
        n_seed = math.prod(self.seed_shape)
        layers: list[nn.Module] = [nn.Linear(self.input_dim, n_seed, bias=norm is None)]
        layers += norm(n_seed, False) if norm else []
        layers += [nn.ReLU(), nn.Unflatten(1, self.seed_shape)]
        layers += self._upsampling_layers(k, kernel_size, norm, "relu", weight_norm)
        self.net = nn.Sequential(*layers)
