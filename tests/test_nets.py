"""Shape, range and interface checks of the classifier / discriminator and generator nets."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from gendisc.errors import ConfigError
from gendisc.nets import (
    ConvNet,
    DCGANGenerator,
    ExponentialMovingAverage,
    MLPClassifier,
    MLPGenerator,
    ResNet,
    SalimansConvDiscriminator,
    SalimansMLPDiscriminator,
    SalimansMLPGenerator,
    WeightNormLinear,
    data_dependent_init,
)

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
K = 5
N = 4

CLASSIFIERS: dict[str, Callable[..., nn.Module]] = {
    "mlp": lambda s, **kw: MLPClassifier(s, K, hidden=(32, 16), dropout=0.1, **kw),
    "mlp_wn_noise": lambda s, **kw: MLPClassifier(
        s, K, hidden=(32, 16), weight_norm=True, input_noise=0.1, hidden_noise=0.2, **kw
    ),
    "mlp_sn": lambda s, **kw: MLPClassifier(s, K, hidden=(16,), spectral_norm=True, **kw),
    "salimans_mlp": lambda s, **kw: SalimansMLPDiscriminator(s, K, **kw),
    "convnet": lambda s, **kw: ConvNet(s, K, channels=(8, 16, 32), **kw),
    "convnet_sn": lambda s, **kw: ConvNet(
        s, K, channels=(8, 16), batch_norm=False, spectral_norm=True, **kw
    ),
    "convnet_wn": lambda s, **kw: ConvNet(
        s, K, channels=(8, 16), batch_norm=False, weight_norm=True, **kw
    ),
    "resnet": lambda s, **kw: ResNet(s, K, widths=(8, 16, 32), blocks_per_stage=1, **kw),
    "salimans_conv": lambda s, **kw: SalimansConvDiscriminator(s, K, channels=(16, 32), **kw),
}


def _backbone_keys(net: nn.Module) -> set[str]:
    return {k for k in net.state_dict() if not k.startswith(("head.", "minibatch_disc."))}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_classifier_interface(name: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    net = CLASSIFIERS[name](list(shape))  # shapes may arrive as lists
    x = torch.rand(N, *shape) * 2 - 1

    net.train()
    logits = net(x)
    assert logits.shape == (N, K)
    logits.sum().backward()

    net.eval()
    logits, feats = net.forward_with_features(x)
    assert torch.allclose(logits, net(x), atol=1e-5)
    assert logits.shape == (N, K)
    assert len(feats) >= 1 and all(f.dim() == 2 and f.shape[0] == N for f in feats)
    assert feats[-1].shape[1] == net.feature_dim
    assert net.minibatch_disc is None
    assert net.head.in_features == net.feature_dim

    mbd = CLASSIFIERS[name](shape, minibatch_discrimination={"kernels": 7, "dim": 3})
    assert mbd.head.in_features == mbd.feature_dim + 7
    assert mbd.minibatch_disc is not None and mbd.minibatch_disc.out_features == mbd.feature_dim + 7
    mbd.train()
    out = mbd(torch.cat([x, x[:1]]))  # a duplicated row: zero L1 distance inside the batch
    assert out.shape == (N + 1, K)
    out.sum().backward()
    assert torch.isfinite(mbd.minibatch_disc.theta.grad).all()
    # the backbone (everything but head and minibatch_disc) is the same with and without MBD
    assert _backbone_keys(mbd) == _backbone_keys(net)


def test_default_sizes_resnet_and_conv_discriminator() -> None:
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    for net in (ResNet((3, 32, 32), 10), SalimansConvDiscriminator((3, 32, 32), 10)):
        net.eval()
        logits, feats = net.forward_with_features(x)
        assert logits.shape == (2, 10)
    assert feats[-1].shape == (2, 192)  # the paper's 192-d global-pool features


def test_salimans_mlp_discriminator_parameter_count() -> None:
    net = SalimansMLPDiscriminator((1, 28, 28), 10)
    sizes = [784, 1000, 500, 250, 250, 250, 10]
    # weight-norm dense: v (in x out) + g (out) + b (out)
    total = sum(a * b + 2 * b for a, b in itertools.pairwise(sizes))
    assert sum(p.numel() for p in net.parameters()) == total == 1_541_020
    frozen_g = 1000 + 500 + 250 + 250 + 250  # hidden scales fixed by the data-dependent init
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == total - frozen_g
    assert [m.out_features for m in net.modules() if isinstance(m, WeightNormLinear)] == sizes[1:]


def test_salimans_mlp_discriminator_features_and_init() -> None:
    torch.manual_seed(0)
    net = SalimansMLPDiscriminator()
    x = torch.rand(64, 1, 28, 28) * 2 - 1
    data_dependent_init(net, x)
    net.eval()
    feats = net.forward_features(x)
    assert [f.shape[1] for f in feats] == [1000, 500, 250, 250, 250]
    assert all((f >= 0).all() for f in feats)  # eval: post-ReLU, no noise
    net.train()
    assert (net.forward_features(x)[-1] < 0).any()  # train: noise added after the ReLU


def test_salimans_conv_discriminator_parameter_count() -> None:
    net = SalimansConvDiscriminator((3, 32, 32), 10)
    convs = [(3, 96, 3), (96, 96, 3), (96, 96, 3), (96, 192, 3), (192, 192, 3), (192, 192, 3)]
    convs += [(192, 192, 3), (192, 192, 1), (192, 192, 1)]
    total = sum(i * o * k * k + 2 * o for i, o, k in convs) + 192 * 10 + 2 * 10
    assert sum(p.numel() for p in net.parameters()) == total
    svhn = SalimansConvDiscriminator((3, 32, 32), 10, channels=(64, 128))
    assert svhn.feature_dim == 128


def test_data_dependent_init_conv_discriminator_and_ema() -> None:
    torch.manual_seed(0)
    net = SalimansConvDiscriminator((1, 28, 28), 10, channels=(8, 16))
    x = torch.rand(16, 1, 28, 28) * 2 - 1
    data_dependent_init(net, x)
    ema = ExponentialMovingAverage(net, decay=1 - 1e-4)
    net.eval()
    assert torch.allclose(ema(x), net(x))
    restored = ExponentialMovingAverage(
        SalimansConvDiscriminator((1, 28, 28), 10, channels=(8, 16)), 0.5
    )
    restored.load_state_dict(ema.state_dict())
    assert torch.allclose(restored(x), net(x), atol=1e-6)


def test_ema_of_spectral_norm_convnet() -> None:
    torch.manual_seed(0)
    net = ConvNet((1, 8, 8), 3, channels=(4, 8), batch_norm=False, spectral_norm=True)
    ema = ExponentialMovingAverage(net, decay=0.5, warmup=False)
    x = torch.rand(4, 1, 8, 8)
    net.train()
    net(x).sum().backward()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in ema.shadow.named_parameters()}
    ema.update(net)
    for k, p in net.named_parameters():
        assert torch.allclose(ema.shadow.get_parameter(k), 0.5 * before[k] + 0.5 * p)


def test_invalid_classifier_settings() -> None:
    with pytest.raises(ConfigError):
        ConvNet((1, 8, 8), 3, weight_norm=True, spectral_norm=True)
    with pytest.raises(ConfigError):
        MLPClassifier((1, 8, 8), 3, activation="swishy")


# ----------------------------------------------------------------------------- generators

LATENT = 16
GENERATORS: dict[str, Callable[..., nn.Module]] = {
    "salimans_mlp": lambda s, **kw: SalimansMLPGenerator(LATENT, s, hidden=(32, 32), **kw),
    "salimans_mlp_vbn": lambda s, **kw: SalimansMLPGenerator(
        LATENT, s, hidden=(32, 32), virtual_batch_norm=True, vbn_reference_size=6, **kw
    ),
    "mlp": lambda s, **kw: MLPGenerator(LATENT, s, hidden=(32, 64), **kw),
    "mlp_vbn_wn": lambda s, **kw: MLPGenerator(
        LATENT, s, hidden=(32,), virtual_batch_norm=True, weight_norm=True, **kw
    ),
    "dcgan": lambda s, **kw: DCGANGenerator(LATENT, s, base_channels=8, **kw),
    "dcgan_paperlike": lambda s, **kw: DCGANGenerator(
        LATENT,
        s,
        base_channels=8,
        kernel_size=5,
        weight_norm=True,
        bn_scale=False,
        latent_distribution="uniform",
        **kw,
    ),
    "dcgan_vbn": lambda s, **kw: DCGANGenerator(
        LATENT, s, base_channels=4, virtual_batch_norm=True, vbn_reference_size=5, **kw
    ),
}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", list(GENERATORS))
def test_generator_interface(name: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    gen = GENERATORS[name](list(shape))
    z = gen.sample_latent(N)
    assert z.shape == (N, LATENT)
    for mode in (True, False):
        gen.train(mode)
        out = gen(z)
        assert out.shape == (N, *shape)
        assert out.min() >= -1 and out.max() <= 1
    gen.train()
    gen(z).mean().backward()
    with pytest.raises(ValueError, match="unconditional"):
        gen(z, torch.zeros(N, dtype=torch.long))

    cond = GENERATORS[name](shape, num_classes=3)
    y = torch.tensor([0, 1, 2, 1])
    assert cond(z, y).shape == (N, *shape)
    with pytest.raises(ValueError, match="conditional"):
        cond(z)


@pytest.mark.parametrize("name", ["salimans_mlp_vbn", "mlp_vbn_wn", "dcgan_vbn"])
def test_vbn_generators_treat_examples_independently(name: str) -> None:
    torch.manual_seed(0)
    gen = GENERATORS[name]((1, 8, 8))
    gen.train()
    z = gen.sample_latent(5)
    data_dependent_init(gen, z)
    assert "vbn_z_ref" in gen.state_dict()
    full = gen(z)
    assert torch.allclose(gen(z[:1]), full[:1], atol=1e-5)
    assert torch.allclose(gen(z[2:]), full[2:], atol=1e-5)


def test_salimans_mlp_generator_matches_paper() -> None:
    gen = SalimansMLPGenerator()
    assert gen.latent_dim == 100 and gen.out_shape == (1, 28, 28)
    # dense 100->500 and 500->500 without bias, BN shift (no scale) 500 each,
    # weight-norm dense 500->784: v + g + b
    expected = 100 * 500 + 500 + 500 * 500 + 500 + 500 * 784 + 2 * 784
    assert sum(p.numel() for p in gen.parameters()) == expected == 694_568
    z = gen.sample_latent(8)
    assert z.min() >= 0 and z.max() < 1  # U(0, 1) latents
    gen.train()
    assert gen(z).shape == (8, 1, 28, 28)


def test_dcgan_seed_sizes_and_paper_cifar_generator() -> None:
    assert DCGANGenerator(8, (1, 8, 8), base_channels=8).seed_shape == (16, 4, 4)
    assert DCGANGenerator(8, (1, 28, 28), base_channels=8).seed_shape == (32, 7, 7)
    assert DCGANGenerator(8, (3, 32, 32), base_channels=8).seed_shape == (64, 4, 4)
    gen = DCGANGenerator(
        100,
        (3, 32, 32),
        base_channels=64,
        kernel_size=5,
        weight_norm=True,
        bn_scale=False,
        latent_distribution="uniform",
    )
    # dense 4x4x512 (BN shift), deconv 5x5 to 256@8x8, 128@16x16 (BN shift), wn deconv to 3@32x32
    expected = 100 * 8192 + 8192 + 512 * 256 * 25 + 256 + 256 * 128 * 25 + 128 + 128 * 3 * 25 + 6
    assert sum(p.numel() for p in gen.parameters()) == expected


def test_sample_latent_reproducible() -> None:
    gen = MLPGenerator(LATENT, (1, 8, 8))
    a = gen.sample_latent(3, generator=torch.Generator().manual_seed(1))
    b = gen.sample_latent(3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    with pytest.raises(ConfigError):
        MLPGenerator(LATENT, (1, 8, 8), latent_distribution="cauchy")


def test_conditional_generator_data_dependent_init_passes_labels() -> None:
    torch.manual_seed(0)
    gen = MLPGenerator(LATENT, (1, 8, 8), num_classes=3, weight_norm=True)
    z, y = gen.sample_latent(32), torch.arange(32) % 3
    data_dependent_init(gen, z, y)
    assert bool(gen.net[-1].initialized)
    assert math.isfinite(gen(z, y).sum().item())


def test_minibatch_reference_makes_evaluation_batch_independent() -> None:
    from gendisc.errors import GendiscError

    torch.manual_seed(0)
    net = SalimansMLPDiscriminator((1, 8, 8), K, minibatch_discrimination=True)
    assert net.minibatch_reference_size == 100  # the training batch size by default
    data_dependent_init(net, torch.rand(100, 1, 8, 8) * 2 - 1)
    x = torch.rand(1000, 1, 8, 8) * 2 - 1
    net.eval()
    with pytest.raises(GendiscError, match="set_minibatch_reference"):
        net(x[:5])
    with pytest.raises(ConfigError, match=r"minibatch_discrimination\.reference_size=100"):
        net.set_minibatch_reference(x[:50])
    reference = torch.rand(100, 1, 8, 8) * 2 - 1
    net.set_minibatch_reference(reference)
    assert net.has_minibatch_reference()
    with torch.no_grad():
        whole = net(x)
        for size in (50, 100, 1000):
            chunked = torch.cat([net(part) for part in x.split(size)])
            torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
        # by hand: backbone features of x and of the reference, the layer against the latter
        feats = net.forward_features(x[:7])
        h = net.minibatch_disc(feats[-1], reference=net.forward_features(reference)[-1])
        torch.testing.assert_close(net.head(h), whole[:7], rtol=1e-5, atol=1e-5)
        h_embed, feats_embed = net.embed(x[:7])
        torch.testing.assert_close(h_embed, h)
        # embed runs x and the reference as one batch: equal up to the matmul's blocking
        for a, b in zip(feats_embed, feats, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

    # the state dict carries the reference (with the layer: not part of the backbone)
    assert {"minibatch_disc.reference", "minibatch_disc.reference_set"} <= set(net.state_dict())
    loaded = SalimansMLPDiscriminator((1, 8, 8), K, minibatch_discrimination=True)
    loaded.load_state_dict(net.state_dict())
    assert loaded.has_minibatch_reference()
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), whole)
    # an EMA of the net copies the reference with the other buffers
    twin = SalimansMLPDiscriminator((1, 8, 8), K, minibatch_discrimination=True)
    ema = ExponentialMovingAverage(twin, decay=0.5)
    assert not ema.shadow.has_minibatch_reference()
    ema.update(net)
    assert torch.equal(ema.shadow.minibatch_disc.reference, reference)
    with pytest.raises(ConfigError, match="no minibatch discrimination"):
        SalimansMLPDiscriminator((1, 8, 8), K).set_minibatch_reference(reference)


def test_minibatch_discrimination_training_mode_uses_the_batch() -> None:
    torch.manual_seed(0)
    net = MLPClassifier((1, 8, 8), K, hidden=(16,), dropout=0.0, minibatch_discrimination=True)
    net.set_minibatch_reference(torch.rand(100, 1, 8, 8))  # ignored in training mode
    net.train()
    x = torch.rand(12, 1, 8, 8) * 2 - 1
    logits, feats = net.forward_with_features(x)
    assert bool(net.minibatch_disc.initialized)  # the first training forward initialised it
    f = feats[-1]
    mbd = net.minibatch_disc
    m = (f @ mbd.weight.flatten(1)).view(12, mbd.num_kernels, mbd.kernel_dim)
    dist = (m.unsqueeze(1) - m.unsqueeze(0)).abs().sum(-1)  # (N, N, B)
    o = (torch.exp(-dist) * (1 - torch.eye(12)).unsqueeze(-1)).sum(1) + mbd.bias
    torch.testing.assert_close(logits, net.head(torch.cat([f, o], dim=1)))
    # in training mode an example's logits depend on its batch (the paper's layer)
    assert not torch.allclose(net(x[:6])[:3], logits[:3])


def test_minibatch_discrimination_ablation_reference_is_the_training_batch(make_cfg) -> None:
    from gendisc.utils.build import build

    cfg = make_cfg(["model=ssl_gan", "ablation=minibatch_discrimination", "data.batch_size=50"])
    datamodule, model = build(cfg)
    net = model.discriminator
    assert net.minibatch_reference_size == 50 and not net.has_minibatch_reference()
    # what the module does at fit start: real unlabeled training images in D's input space
    datamodule.setup("fit")
    net.set_minibatch_reference(datamodule.unlabeled_sample(net.minibatch_reference_size, seed=1))
    assert net.has_minibatch_reference()
    assert net.minibatch_disc.reference.min() >= -1 and net.minibatch_disc.reference.max() <= 1


def test_minibatch_discrimination_is_one_setting() -> None:
    """null/false: off; true: the paper's options; a mapping overrides some; others refused."""
    from gendisc.nets.classifiers import MINIBATCH_DEFAULTS, minibatch_options

    assert minibatch_options(None) is None and minibatch_options(False) is None
    assert (
        minibatch_options(True)
        == MINIBATCH_DEFAULTS
        == {
            "kernels": 100,
            "dim": 5,
            "reference_size": 100,
        }
    )
    assert minibatch_options({"dim": 3}) == {"kernels": 100, "dim": 3, "reference_size": 100}
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['kernel'\]"):
        minibatch_options({"kernel": 3})
    with pytest.raises(ConfigError, match="reference_size=0"):
        minibatch_options({"reference_size": 0})
    net = MLPClassifier((1, 8, 8), K, hidden=(16,), minibatch_discrimination={"kernels": 4})
    assert net.minibatch_disc.num_kernels == 4 and net.minibatch_reference_size == 100
