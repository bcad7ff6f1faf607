"""Classifier / discriminator nets.

Every net has ``forward_features(x) -> list[Tensor]`` (one (N, F_i) tensor per hidden block,
the last one the penultimate features), an optional ``minibatch_disc`` applied to the last
features, a ``head`` producing ``num_classes`` logits, ``forward(x) -> logits`` and
``forward_with_features(x) -> (logits, features)`` and ``embed(x) -> (h, features)`` (h: the
head's input). Everything except ``head.*`` and ``minibatch_disc.*`` is the backbone. Conv nets report global-average-pooled feature maps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

from gendisc.errors import ConfigError, GendiscError
from gendisc.nets.layers import (
    GaussianNoise,
    MinibatchDiscrimination,
    WeightNormConv2d,
    WeightNormLinear,
    activation_layer,
    as_shape,
)

__all__ = [
    "HEAD_PREFIXES",
    "MINIBATCH_DEFAULTS",
    "ClassifierNet",
    "ConvNet",
    "MLPClassifier",
    "ResNet",
    "SalimansConvDiscriminator",
    "SalimansMLPDiscriminator",
    "is_head",
    "minibatch_options",
]


def _check_norms(weight_norm: bool, spectral_norm: bool) -> None:
    if weight_norm and spectral_norm:
        raise ConfigError("choose at most one of weight_norm and spectral_norm")


def _linear(
    n_in: int,
    n_out: int,
    *,
    weight_norm: bool = False,
    spectral_norm: bool = False,
    init_scale: float = 1.0,
    train_scale: bool = True,
    weight_init_std: float = 0.1,
) -> nn.Module:
    if weight_norm:
        return WeightNormLinear(
            n_in,
            n_out,
            init_scale=init_scale,
            weight_init_std=weight_init_std,
            train_scale=train_scale,
        )
    layer = nn.Linear(n_in, n_out)
    return _sn(layer) if spectral_norm else layer


def _conv(
    c_in: int,
    c_out: int,
    kernel: int,
    stride: int = 1,
    padding: int = 0,
    *,
    bias: bool = True,
    weight_norm: bool = False,
    spectral_norm: bool = False,
    train_scale: bool = True,
) -> nn.Module:
    if weight_norm:
        return WeightNormConv2d(c_in, c_out, kernel, stride, padding, train_scale=train_scale)
    layer = nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=bias)
    return _sn(layer) if spectral_norm else layer


def _down(size: int, stride: int, kernel: int = 3, padding: int = 1) -> int:
    return (size + 2 * padding - kernel) // stride + 1


# minibatch_discrimination of every classifier net: null/false (off), true (these, the paper's
# B = 100 kernels of C = 5 dimensions, compared in eval mode with a reference batch of 100 real
# training images: the training batch size) or a mapping that overrides some of them
MINIBATCH_DEFAULTS = {"kernels": 100, "dim": 5, "reference_size": 100}
MinibatchSetting = bool | Mapping[str, int] | None


def minibatch_options(setting: MinibatchSetting) -> dict[str, int] | None:
    """A net's ``minibatch_discrimination`` setting as its options (None: off)."""
    if setting is None or setting is False:
        return None
    given = {} if setting is True else dict(setting)
    unknown = sorted(set(given) - set(MINIBATCH_DEFAULTS))
    if unknown:
        raise ConfigError(
            f"minibatch_discrimination: unknown option(s) {unknown}; it is null (off), true "
            f"(the paper's {MINIBATCH_DEFAULTS}) or a mapping of some of "
            f"{sorted(MINIBATCH_DEFAULTS)}"
        )
    options = {key: int(value) for key, value in {**MINIBATCH_DEFAULTS, **given}.items()}
    if options["reference_size"] < 1:
        raise ConfigError(
            f"minibatch_discrimination.reference_size={options['reference_size']}: eval mode "
            "compares with a reference batch of at least 1 image; use the training batch size"
        )
    return options


# Parts of a classifier net that are not backbone: they depend on the task, not the data.
HEAD_PREFIXES = ("head.", "minibatch_disc.")


def is_head(name: str) -> bool:
    """Whether the parameter or child ``name`` of a classifier net belongs to its head."""
    return f"{name}.".startswith(HEAD_PREFIXES)


class ClassifierNet(nn.Module):
    """The base of every classifier net (a subclass implements ``forward_features``): features
    -> [minibatch discrimination] -> head.

    With minibatch discrimination, training mode compares each example with the others of its
    batch (the paper). Eval mode compares it with a fixed reference batch of real training
    images instead, the way virtual batch norm does: ``embed`` runs ``cat([reference, x])``
    through the backbone and the layer computes o(x_i) against the reference rows only, so an
    example's logits do not depend on its evaluation batch and the sum runs over as many
    examples as in training. The reference (``minibatch_discrimination.reference_size`` inputs
    of this net, in its input space) is set by ``set_minibatch_reference`` and saved in the state dict (keys
    ``minibatch_disc.reference`` / ``minibatch_disc.reference_set``, with the layer, so that a
    backbone transfer leaves it behind).
    """

    in_shape: tuple[int, ...]
    minibatch_disc: MinibatchDiscrimination | None
    head: nn.Module
    feature_dim: int
    num_classes: int

    def _build_head(
        self,
        feature_dim: int,
        num_classes: int,
        minibatch_discrimination: MinibatchSetting = None,
        **linear_kwargs: object,
    ) -> None:
        self.feature_dim, self.num_classes = int(feature_dim), int(num_classes)
        width = self.feature_dim
        options = minibatch_options(minibatch_discrimination)
        self.minibatch_disc = None
        if options is not None:
            self.minibatch_disc = MinibatchDiscrimination(
                width,
                options["kernels"],
                options["dim"],
                reference_shape=(options["reference_size"], *self.in_shape),
            )
            width = self.minibatch_disc.out_features
        self.head = _linear(width, self.num_classes, **linear_kwargs)  # type: ignore[arg-type]

    @property
    def minibatch_reference_size(self) -> int:
        """Images in the minibatch-discrimination reference batch (0 without the layer)."""
        mbd = self.minibatch_disc
        return 0 if mbd is None else int(mbd.reference.shape[0])

    def has_minibatch_reference(self) -> bool:
        """Whether the minibatch-discrimination reference batch is set (set or loaded)."""
        mbd = self.minibatch_disc
        return mbd is not None and bool(mbd.reference_set)

    @torch.no_grad()
    def set_minibatch_reference(self, images: Tensor) -> None:
        """Store ``images`` (``minibatch_reference_size`` real training images in the net's
        input space, e.g. ``datamodule.unlabeled_sample(n)``) as the reference batch that
        minibatch discrimination compares examples with in eval mode."""
        mbd = self.minibatch_disc
        if mbd is None:
            raise ConfigError(
                "set_minibatch_reference: this net has no minibatch discrimination "
                "(minibatch_discrimination=null); only call it when net.minibatch_disc is set"
            )
        expected = tuple(mbd.reference.shape)
        if tuple(images.shape) != expected:
            raise ConfigError(
                f"set_minibatch_reference: got images of shape {tuple(images.shape)}, expected "
                f"{expected} (minibatch_discrimination.reference_size={expected[0]} inputs of "
                f"shape {self.in_shape}); pass that many images or change that size"
            )
        if not torch.isfinite(images).all():
            raise ConfigError("set_minibatch_reference: the reference images contain NaN/inf")
        mbd.reference.copy_(images)
        mbd.reference_set.fill_(True)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def embed(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(h, features)``: the head's input h (the last features, after minibatch
        discrimination when the net has it) and the ``forward_features`` list of ``x``, from
        one pass. In eval mode minibatch discrimination compares x with the reference batch."""
        mbd = self.minibatch_disc
        if mbd is None:
            feats = self.forward_features(x)
            return feats[-1], feats
        if self.training:
            feats = self.forward_features(x)
            return mbd(feats[-1]), feats
        if not bool(mbd.reference_set):
            raise GendiscError(
                "minibatch discrimination in eval mode compares each example with a fixed "
                "reference batch of real training images, and this net has none: call "
                f"net.set_minibatch_reference(images) with {self.minibatch_reference_size} "
                "training images in the net's input space (e.g. "
                "datamodule.unlabeled_sample(net.minibatch_reference_size)) before evaluating; "
                "a checkpoint trained with it carries the reference"
            )
        r = mbd.reference.shape[0]
        both = self.forward_features(torch.cat([mbd.reference.to(x.dtype), x]))
        feats = [f[r:] for f in both]
        return mbd(feats[-1], reference=both[-1][:r]), feats

    def forward_with_features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Logits and the ``forward_features`` list from one pass (``head(embed(x)[0])``)."""
        h, feats = self.embed(x)
        return self.head(h), feats

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_features(x)[0]


class MLPClassifier(ClassifierNet):
    """Dense net: flatten -> input noise -> [dense -> activation -> noise -> dropout] per hidden
    layer -> head. Features: each hidden block's output (after activation, noise and dropout).
    ``train_hidden_scale=False`` freezes the weight-norm scales of hidden layers after the
    data-dependent init (the authors' MNIST code)."""

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
        input_noise: float = 0.0,
        hidden_noise: float = 0.0,
        weight_norm: bool = False,
        activation: str = "relu",
        minibatch_discrimination: MinibatchSetting = None,
        spectral_norm: bool = False,
        train_hidden_scale: bool = True,
        head_init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        _check_norms(weight_norm, spectral_norm)
        self.in_shape = as_shape(in_shape)
        hidden = as_shape(hidden)
        if not hidden:
            raise ConfigError("MLPClassifier needs at least one hidden layer (hidden=[...])")
        self.input_noise = GaussianNoise(input_noise)
        self.body = nn.ModuleList()
        width = 1
        for v in self.in_shape:
            width *= v
        for h in hidden:
            self.body.append(
                nn.Sequential(
                    _linear(
                        width,
                        h,
                        weight_norm=weight_norm,
                        spectral_norm=spectral_norm,
                        train_scale=train_hidden_scale,
                    ),
                    activation_layer(activation),
                    GaussianNoise(hidden_noise),
                    nn.Dropout(dropout),
                )
            )
            width = h
        self._build_head(
            width,
            num_classes,
            minibatch_discrimination,
            weight_norm=weight_norm,
            spectral_norm=spectral_norm,
            init_scale=head_init_scale,
        )

    def forward_features(self, x: Tensor) -> list[Tensor]:
        h = self.input_noise(x.flatten(1))
        feats = []
        for block in self.body:
            h = block(h)
            feats.append(h)
        return feats


class SalimansMLPDiscriminator(MLPClassifier):
    """The paper's MNIST discriminator: Gaussian noise (0.3) on the input, weight-normalised
    dense 1000-500-250-250-250 with ReLU each followed by Gaussian noise (0.5), weight-normalised
    dense head. As in the authors' code, v ~ N(0, 0.1), hidden scales g are set by the
    data-dependent init and then frozen (``train_hidden_scale``), the head's g is trained.
    ``forward_features`` returns, per hidden layer, relu(dense(h)) + noise (noise in training
    mode only): the last entry is the paper's feature-matching layer."""

    def __init__(
        self,
        in_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        hidden: Sequence[int] = (1000, 500, 250, 250, 250),
        input_noise: float = 0.3,
        hidden_noise: float = 0.5,
        minibatch_discrimination: MinibatchSetting = None,
        train_hidden_scale: bool = False,
    ) -> None:
        super().__init__(
            in_shape,
            num_classes,
            hidden=hidden,
            dropout=0.0,
            input_noise=input_noise,
            hidden_noise=hidden_noise,
            weight_norm=True,
            activation="relu",
            minibatch_discrimination=minibatch_discrimination,
            train_hidden_scale=train_hidden_scale,
            head_init_scale=1.0,
        )


class ConvNet(ClassifierNet):
    """Small conv net for 8x8 to 32x32 inputs.

    Per entry of ``channels`` a block: conv3x3 -> norm -> act -> conv3x3 (stride 2 while the
    spatial size is >= 8, else 1) -> norm -> act -> dropout. Features: global average pool of
    each block output. ``batch_norm`` adds BatchNorm2d; ``weight_norm`` / ``spectral_norm``
    reparametrise every conv and the head (at most one of the two).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64, 128),
        dropout: float = 0.2,
        batch_norm: bool = True,
        weight_norm: bool = False,
        spectral_norm: bool = False,
        activation: str = "leaky_relu",
        input_noise: float = 0.0,
        minibatch_discrimination: MinibatchSetting = None,
    ) -> None:
        super().__init__()
        _check_norms(weight_norm, spectral_norm)
        self.in_shape = as_shape(in_shape)
        channels = as_shape(channels)
        c_in, h, w = self.in_shape
        self.input_noise = GaussianNoise(input_noise)
        self.body = nn.ModuleList()
        conv_kw = {
            "bias": not batch_norm,
            "weight_norm": weight_norm,
            "spectral_norm": spectral_norm,
        }
        for c in channels:
            stride = 2 if min(h, w) >= 8 else 1
            layers: list[nn.Module] = [_conv(c_in, c, 3, 1, 1, **conv_kw)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(c))
            layers += [activation_layer(activation), _conv(c, c, 3, stride, 1, **conv_kw)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(c))
            layers += [activation_layer(activation), nn.Dropout(dropout)]
            self.body.append(nn.Sequential(*layers))
            h, w, c_in = _down(h, stride), _down(w, stride), c
        self._build_head(
            c_in,
            num_classes,
            minibatch_discrimination,
            weight_norm=weight_norm,
            spectral_norm=spectral_norm,
        )

    def forward_features(self, x: Tensor) -> list[Tensor]:
        h = self.input_noise(x)
        feats = []
        for block in self.body:
            h = block(h)
            feats.append(h.mean(dim=(2, 3)))
        return feats


class _PreActBlock(nn.Module):
    """Pre-activation basic block: norm-act-conv3x3-norm-act-conv3x3 plus (projected) shortcut."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        stride: int,
        batch_norm: bool,
        spectral_norm: bool,
        activation: str,
    ) -> None:
        super().__init__()
        conv_kw = {"bias": not batch_norm, "spectral_norm": spectral_norm}
        self.norm1 = nn.BatchNorm2d(c_in) if batch_norm else nn.Identity()
        self.act1 = activation_layer(activation)
        self.conv1 = _conv(c_in, c_out, 3, stride, 1, **conv_kw)
        self.norm2 = nn.BatchNorm2d(c_out) if batch_norm else nn.Identity()
        self.act2 = activation_layer(activation)
        self.conv2 = _conv(c_out, c_out, 3, 1, 1, **conv_kw)
        self.shortcut = (
            _conv(c_in, c_out, 1, stride, 0, bias=False, spectral_norm=spectral_norm)
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.act1(self.norm1(x)))
        out = self.conv2(self.act2(self.norm2(out)))
        return out + self.shortcut(x)


class ResNet(ClassifierNet):
    """Small pre-activation ResNet (for 32x32; works from 8x8).

    conv3x3 stem, then one stage per entry of ``widths`` with ``blocks_per_stage`` basic blocks
    (the first block of every stage after the first downsamples by 2 while the spatial size is
    >= 8), final norm + activation. Features: global average pool of each stage's output (the
    last one after the final norm + activation).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        widths: Sequence[int] = (64, 128, 256),
        blocks_per_stage: int = 2,
        batch_norm: bool = True,
        spectral_norm: bool = False,
        activation: str = "relu",
        minibatch_discrimination: MinibatchSetting = None,
    ) -> None:
        super().__init__()
        self.in_shape = as_shape(in_shape)
        widths = as_shape(widths)
        c_in, h, w = self.in_shape
        self.stem = _conv(
            c_in, widths[0], 3, 1, 1, bias=not batch_norm, spectral_norm=spectral_norm
        )
        c_in = widths[0]
        self.stages = nn.ModuleList()
        for i, c in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 and min(h, w) >= 8 else 1
                blocks.append(_PreActBlock(c_in, c, stride, batch_norm, spectral_norm, activation))
                h, w, c_in = _down(h, stride), _down(w, stride), c
            self.stages.append(nn.Sequential(*blocks))
        self.final = nn.Sequential(
            nn.BatchNorm2d(c_in) if batch_norm else nn.Identity(), activation_layer(activation)
        )
        self._build_head(
            c_in,
            num_classes,
            minibatch_discrimination,
            spectral_norm=spectral_norm,
        )

    def forward_features(self, x: Tensor) -> list[Tensor]:
        h = self.stem(x)
        feats = []
        for i, stage in enumerate(self.stages):
            h = stage(h)
            if i == len(self.stages) - 1:
                h = self.final(h)
            feats.append(h.mean(dim=(2, 3)))
        return feats


class SalimansConvDiscriminator(ClassifierNet):
    """The paper's CIFAR-10 discriminator (SVHN with ``channels=(64, 128)``).

    dropout(input_dropout) -> 3 x wn-conv3x3 c0 (last stride 2) -> dropout -> 3 x wn-conv3x3 c1
    (last stride 2) -> dropout -> wn-conv3x3 c1 valid -> 2 x wn-conv1x1 c1 -> global average
    pool -> wn-dense head (init scale 0.1, trained g). Leaky ReLU 0.2 after every conv;
    v ~ N(0, 0.05); hidden g frozen after the data-dependent init, as in the authors' code.
    The "valid" conv is padded when the map is smaller than 3x3 (inputs below 12x12).
    Features: global average pool of the three blocks' outputs (the last: the paper's 192-d).
    """

    def __init__(
        self,
        in_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        channels: Sequence[int] = (96, 192),
        dropout: float = 0.5,
        input_dropout: float = 0.2,
        minibatch_discrimination: MinibatchSetting = None,
        train_hidden_scale: bool = False,
    ) -> None:
        super().__init__()
        self.in_shape = as_shape(in_shape)
        c0, c1 = as_shape(channels)
        c_in, h, w = self.in_shape

        def conv(a: int, b: int, k: int, s: int = 1, p: int = 1) -> nn.Module:
            return _conv(a, b, k, s, p, weight_norm=True, train_scale=train_hidden_scale)

        def act() -> nn.Module:
            return nn.LeakyReLU(0.2)

        def downsampling(a: int, b: int) -> list[nn.Module]:
            """3 x wn-conv3x3 a -> b (the last stride 2), each with its activation, dropout."""
            layers: list[nn.Module] = []
            for layer in (conv(a, b, 3), conv(b, b, 3), conv(b, b, 3, 2)):
                layers += [layer, act()]
            return [*layers, nn.Dropout(dropout)]

        h, w = _down(_down(h, 2), 2), _down(_down(w, 2), 2)
        pad = 0 if min(h, w) >= 3 else 1
        self.body = nn.ModuleList(
            [
                nn.Sequential(nn.Dropout(input_dropout), *downsampling(c_in, c0)),
                nn.Sequential(*downsampling(c0, c1)),
                nn.Sequential(
                    conv(c1, c1, 3, 1, pad),
                    act(),
                    conv(c1, c1, 1, 1, 0),
                    act(),
                    conv(c1, c1, 1, 1, 0),
                    act(),
                ),
            ]
        )
        self._build_head(
            c1,
            num_classes,
            minibatch_discrimination,
            weight_norm=True,
            init_scale=0.1,
            weight_init_std=0.05,
        )

    def forward_features(self, x: Tensor) -> list[Tensor]:
        feats = []
        h = x
        for block in self.body:
            h = block(h)
            feats.append(h.mean(dim=(2, 3)))
        return feats
