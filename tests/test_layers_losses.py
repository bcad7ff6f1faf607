"""Hand-computed checks of the special layers, the weight EMA and the loss functions."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gendisc.errors import ConfigError
from gendisc.losses import (
    HistoricalAverage,
    discriminator_loss,
    feature_matching_loss,
    gaussian_kl,
    generator_loss,
    ssl_generator_minimax_loss,
    ssl_generator_nonsaturating_loss,
    ssl_supervised_loss,
    ssl_unsupervised_loss,
)
from gendisc.nets import (
    ExponentialMovingAverage,
    GaussianNoise,
    MinibatchDiscrimination,
    VirtualBatchNorm,
    WeightNormConv2d,
    WeightNormConvTranspose2d,
    WeightNormLinear,
    data_dependent_init,
    mark_initialized,
)
from gendisc.nets.layers import (
    weight_norm_once,
)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _bce(x: float, t: float) -> float:
    return -(t * math.log(_sigmoid(x)) + (1 - t) * math.log(1 - _sigmoid(x)))


# ----------------------------------------------------------------------------- layers


def test_gaussian_noise_train_eval_and_std() -> None:
    torch.manual_seed(0)
    layer = GaussianNoise(0.5)
    x = torch.zeros(200_000)
    layer.eval()
    assert torch.equal(layer(x), x)
    layer.train()
    y = layer(x)
    assert not torch.equal(y, x)
    assert abs(y.std().item() - 0.5) < 0.01
    assert abs(y.mean().item()) < 0.01
    assert torch.equal(GaussianNoise(0.0).train()(x), x)


def test_minibatch_discrimination_hand_computed() -> None:
    # A = 2 input features, B = 2 kernels, C = 2 dims per kernel, batch of 3.
    t = np.array(
        [
            [[1.0, 0.0], [0.5, -1.0]],
            [[0.0, 2.0], [1.0, 0.25]],
        ]
    )
    f = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    bias = np.array([0.5, -0.25])
    layer = MinibatchDiscrimination(2, num_kernels=2, kernel_dim=2, data_init=False)
    with torch.no_grad():
        # W = theta * exp(s) / ||theta[:, b, c]||: with s = log ||t[:, b, c]||, W = t
        layer.theta.copy_(torch.tensor(t, dtype=torch.float32) * 3.0)
        layer.log_weight_scale.copy_(torch.tensor(np.log(np.linalg.norm(t, axis=0))))
        layer.bias.copy_(torch.tensor(bias))
    np.testing.assert_allclose(layer.weight.detach().numpy(), t, atol=1e-6)
    out = layer(torch.tensor(f, dtype=torch.float32))
    assert out.shape == (3, 4) and layer.out_features == 4

    # M_i[b, c] = sum_a f[i, a] T[a, b, c]
    m = np.zeros((3, 2, 2))
    for i in range(3):
        for b in range(2):
            for c in range(2):
                m[i, b, c] = sum(f[i, a] * t[a, b, c] for a in range(2))
    o = np.zeros((3, 2))
    for i in range(3):
        for b in range(2):
            for j in range(3):
                if j != i:
                    o[i, b] += math.exp(-np.abs(m[i, b] - m[j, b]).sum())
    # spot-check one entry fully by hand: M_0 = [[1, 0], [0.5, -1]], M_1 = [[0, 2], [1, 0.25]],
    # M_2 = [[1, 2], [1.5, -0.75]]; o(x_0)_0 = exp(-(1 + 2)) + exp(-(0 + 2)).
    assert o[0, 0] == pytest.approx(math.exp(-3) + math.exp(-2))
    np.testing.assert_allclose(out[:, :2].detach().numpy(), f, atol=1e-6)
    np.testing.assert_allclose(out[:, 2:].detach().numpy(), o + bias, rtol=1e-5, atol=1e-6)


def test_minibatch_discrimination_excludes_self() -> None:
    layer = MinibatchDiscrimination(3, num_kernels=4, kernel_dim=2, data_init=False)
    single = layer(torch.randn(1, 3))
    assert torch.equal(single[:, 3:], torch.full((1, 4), -1.0))  # no j != i: the bias, -1
    same = layer(torch.ones(5, 3))
    assert torch.allclose(same[:, 3:], torch.full((5, 4), 4.0 - 1.0))  # 4 identical partners


def _preacts(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    outs: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, o: outs.append(o.detach()))
        for m in net.modules()
        if isinstance(m, WeightNormLinear | WeightNormConv2d | WeightNormConvTranspose2d)
    ]
    net.train()
    net(x)
    for h in hooks:
        h.remove()
    return outs


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_weight_norm_data_dependent_init_dense(scale: float) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        WeightNormLinear(10, 16), nn.ReLU(), WeightNormLinear(16, 8, init_scale=scale)
    )
    x = torch.randn(256, 10) * 3 + 1
    data_dependent_init(net, x)
    outs = _preacts(net, x)
    for out, target in zip(outs, [1.0, scale], strict=True):
        assert torch.allclose(out.mean(0), torch.zeros(out.shape[1]), atol=1e-4 * (1 + target))
        assert torch.allclose(
            out.std(0, unbiased=False), torch.full((out.shape[1],), target), rtol=1e-3
        )
    # effective weight rows have norm g
    layer = net[0]
    assert torch.allclose(layer.weight.norm(dim=1), layer.g.abs(), rtol=1e-5)


def test_weight_norm_data_dependent_init_conv() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        WeightNormConv2d(3, 6, 3, padding=1),
        nn.LeakyReLU(0.2),
        WeightNormConv2d(6, 4, 3, stride=2, padding=1, init_scale=0.5),
        nn.LeakyReLU(0.2),
        WeightNormConvTranspose2d(4, 2, 4, stride=2, padding=1),
    )
    x = torch.randn(8, 3, 8, 8)
    data_dependent_init(net, x)
    outs = _preacts(net, x)
    assert outs[-1].shape == (8, 2, 8, 8)
    for out, target in zip(outs, [1.0, 0.5, 1.0], strict=True):
        mean = out.mean(dim=(0, 2, 3))
        std = out.std(dim=(0, 2, 3), unbiased=False)
        assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-4)
        assert torch.allclose(std, torch.full_like(std, target), rtol=1e-3)


def test_weight_norm_state_dict_and_mark_initialized() -> None:
    torch.manual_seed(0)
    layer = WeightNormLinear(4, 3)
    assert "initialized" in layer.state_dict()
    assert not bool(layer.initialized)
    data_dependent_init(layer, torch.randn(32, 4))
    assert bool(layer.state_dict()["initialized"])

    fresh = WeightNormLinear(4, 3)
    fresh.load_state_dict(layer.state_dict())
    assert bool(fresh.initialized)
    x = torch.randn(5, 4)
    assert torch.allclose(fresh(x), layer(x))  # no re-init on the first forward

    other = WeightNormLinear(4, 3)
    mark_initialized(other)
    g_before = other.g.clone()
    other(torch.randn(7, 4) * 10)
    assert torch.equal(other.g, g_before)  # marked: the forward does not touch g


def test_dense_weight_norm_scales_the_output_as_the_weight_formula() -> None:
    """(x v^T) * g / ||v|| + b, the dense layer's computation, equals x w^T + b with
    w = g v / ||v||, values and gradients (float64), also inside ``weight_norm_once``."""
    torch.manual_seed(0)
    layer = WeightNormLinear(6, 4).double()
    mark_initialized(layer)
    with torch.no_grad():
        layer.g.uniform_(0.5, 2.0)
        layer.bias.normal_()
    x = torch.randn(5, 6, dtype=torch.float64)
    v, g, b = (t.detach().clone().requires_grad_() for t in (layer.v, layer.g, layer.bias))
    w = g[:, None] * v / v.norm(dim=1, keepdim=True)
    expected = x @ w.T + b
    (expected**2).sum().backward()
    for cached in (False, True):
        layer.zero_grad()
        with weight_norm_once(layer) if cached else contextlib.nullcontext():
            out = layer(x)
            out2 = layer(x) if cached else out  # a second pass reuses the scale
        torch.testing.assert_close(out, expected)
        ((out**2).sum() + (0 * out2).sum()).backward()
        for param, reference in ((layer.v, v), (layer.g, g), (layer.bias, b)):
            torch.testing.assert_close(param.grad, reference.grad)


def test_dense_weight_norm_gradients_pass_gradcheck_and_run_under_bf16_autocast() -> None:
    torch.manual_seed(1)
    layer = WeightNormLinear(5, 3).double()
    mark_initialized(layer)
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    params = (layer.v, layer.g, layer.bias)

    def f(x, v, g, b):
        return torch.func.functional_call(layer, {"v": v, "g": g, "bias": b}, (x,))

    assert torch.autograd.gradcheck(f, (x, *params))
    # bf16 autocast on CPU: output in bf16, gradients in the parameters' and input's dtypes,
    # close to float32's
    layer32 = WeightNormLinear(64, 32)
    mark_initialized(layer32)
    x32 = torch.randn(16, 64, requires_grad=True)
    ref = layer32(x32)
    ref.square().sum().backward()
    expected = [t.grad.clone() for t in (x32, layer32.v, layer32.g, layer32.bias)]
    for t in (x32, layer32.v, layer32.g, layer32.bias):
        t.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer32(x32)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
    out.float().square().sum().backward()
    for t, e in zip((x32, layer32.v, layer32.g, layer32.bias), expected, strict=True):
        assert t.grad.dtype == torch.float32
        assert torch.nn.functional.cosine_similarity(t.grad.flatten(), e.flatten(), dim=0) > 0.99


def test_weight_norm_initialises_on_first_forward_and_frozen_scale() -> None:
    torch.manual_seed(0)
    layer = WeightNormLinear(5, 3, train_scale=False)
    x = torch.randn(64, 5)
    out = layer(x)
    assert bool(layer.initialized)
    assert torch.allclose(out.std(0, unbiased=False), torch.ones(3), rtol=1e-3)
    assert not layer.g.requires_grad and layer.v.requires_grad


def test_data_dependent_init_reports_unreached_layers() -> None:
    class Partial(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = WeightNormLinear(3, 3), WeightNormLinear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    with pytest.raises(RuntimeError, match="unused"):
        data_dependent_init(Partial(), torch.randn(4, 3))


def test_virtual_batch_norm_dense_hand_computed() -> None:
    vbn = VirtualBatchNorm(1, eps=0.0)
    x = torch.tensor([[1.0], [3.0], [5.0], [-1.0]])  # reference rows 1, 3
    out = vbn(x, ref_size=2)
    # reference: mu = 2, E[x^2] = 5, var = 1 -> (1 - 2) / 1, (3 - 2) / 1
    # example 5: w = 1/3, mu = (5 + 2 * 2) / 3 = 3, E[x^2] = (25 + 2 * 5) / 3, var = 35/3 - 9
    # example -1: mu = (-1 + 4) / 3 = 1, E[x^2] = (1 + 10) / 3, var = 11/3 - 1
    expected = [-1.0, 1.0, (5 - 3) / math.sqrt(35 / 3 - 9), (-1 - 1) / math.sqrt(11 / 3 - 1)]
    assert torch.allclose(out.squeeze(1), torch.tensor(expected), atol=1e-6)
    # the examples are independent of one another
    assert torch.allclose(vbn(x[:3], ref_size=2)[2], out[2])


def test_virtual_batch_norm_conv_matches_loops() -> None:
    torch.manual_seed(0)
    vbn = VirtualBatchNorm(2, eps=1e-5)
    with torch.no_grad():
        vbn.weight.copy_(torch.tensor([2.0, 0.5]))
        vbn.bias.copy_(torch.tensor([0.1, -0.3]))
    ref, xs = torch.randn(3, 2, 2, 2), torch.randn(2, 2, 2, 2)
    out = vbn(torch.cat([ref, xs]), ref_size=3)
    r, e = ref.numpy().astype(np.float64), xs.numpy().astype(np.float64)
    w = 1 / 4
    for c in range(2):
        mu_r, sq_r = r[:, c].mean(), (r[:, c] ** 2).mean()
        gamma, beta = [2.0, 0.5][c], [0.1, -0.3][c]
        exp_ref = gamma * (r[:, c] - mu_r) / math.sqrt(sq_r - mu_r**2 + 1e-5) + beta
        np.testing.assert_allclose(out[:3, c].detach().numpy(), exp_ref, rtol=1e-4, atol=1e-5)
        for i in range(2):
            mu = w * e[i, c].mean() + (1 - w) * mu_r
            sq = w * (e[i, c] ** 2).mean() + (1 - w) * sq_r
            exp_i = gamma * (e[i, c] - mu) / math.sqrt(sq - mu**2 + 1e-5) + beta
            np.testing.assert_allclose(out[3 + i, c].detach().numpy(), exp_i, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="ref_size"):
        vbn(xs)


# ----------------------------------------------------------------------------- EMA


def test_ema_update_formula_buffers_and_state_dict() -> None:
    net = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0]]))
        net[0].bias.fill_(0.5)
    ema = ExponentialMovingAverage(net, decay=0.9, warmup=False)
    assert not ema.shadow.training
    assert all(not p.requires_grad for p in ema.shadow.parameters())

    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[3.0, 0.0]]))
        net[0].bias.fill_(-0.5)
        net[1].running_mean.fill_(7.0)
    ema.update(net)
    # a <- a + (1 - 0.9) (p - a)
    assert torch.allclose(ema.shadow[0].weight, torch.tensor([[1.2, -1.8]]))
    assert torch.allclose(ema.shadow[0].bias, torch.tensor([0.4]))
    assert torch.equal(ema.shadow[1].running_mean, torch.tensor([7.0]))  # buffers copied
    ema.update(net)
    assert torch.allclose(ema.shadow[0].weight, torch.tensor([[1.38, -1.62]]))
    assert int(ema.num_updates) == 2

    ema.train()
    assert not ema.shadow.training

    restored = ExponentialMovingAverage(nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1)), 0.9)
    restored.load_state_dict(ema.state_dict())
    assert torch.equal(restored.shadow[0].weight, ema.shadow[0].weight)
    assert int(restored.num_updates) == 2
    x = torch.randn(3, 2)
    assert torch.allclose(restored(x), ema.shadow(x))

    ema.reset(net)
    assert torch.equal(ema.shadow[0].weight, net[0].weight)


# ----------------------------------------------------------------------------- losses


def test_feature_matching_values() -> None:
    fake = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # mean (2, 3)
    real = torch.tensor([[0.0, 0.0], [2.0, 2.0], [1.0, 1.0]])  # mean (1, 1); d = (1, 2)
    assert feature_matching_loss(fake, real).item() == pytest.approx(2.5)  # (1 + 4) / 2
    assert feature_matching_loss(fake, real, reduction="sum").item() == pytest.approx(5.0)
    assert feature_matching_loss(fake, real, norm="l1").item() == pytest.approx(1.5)
    assert feature_matching_loss(fake, real, norm="l1", reduction="sum").item() == pytest.approx(
        3.0
    )
    with pytest.raises(ConfigError):
        feature_matching_loss(fake, real, norm="l3")


REAL = [0.5, -1.0, 2.0]
FAKE = [0.2, 2.0, -0.7]


def test_label_smoothing_changes_only_real_term() -> None:
    real, fake = torch.tensor(REAL), torch.tensor(FAKE)
    fake_term = sum(_bce(x, 0.0) for x in FAKE) / 3
    for target in (1.0, 0.9):
        real_term = sum(_bce(x, target) for x in REAL) / 3
        got = discriminator_loss(real, fake, real_target=target).item()
        assert got == pytest.approx(real_term + fake_term, rel=1e-6)
    # hand formula of BCE(x, 0.9): -(0.9 log s(x) + 0.1 log(1 - s(x)))
    smoothed = discriminator_loss(real, fake, real_target=0.9).item()
    hand = sum(-(0.9 * math.log(_sigmoid(x)) + 0.1 * math.log(1 - _sigmoid(x))) for x in REAL) / 3
    assert smoothed - fake_term == pytest.approx(hand, rel=1e-6)
    # minimax and non-saturating differ only for G: the D loss is the same
    assert discriminator_loss(real, fake, "minimax").item() == pytest.approx(
        discriminator_loss(real, fake, "non_saturating").item()
    )


def test_gan_loss_values() -> None:
    real, fake = torch.tensor(REAL).view(-1, 1), torch.tensor(FAKE).view(-1, 1)
    hinge_d = sum(max(0.0, 1 - x) for x in REAL) / 3 + sum(max(0.0, 1 + x) for x in FAKE) / 3
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(hinge_d, rel=1e-6)
    assert generator_loss(fake, "hinge").item() == pytest.approx(-sum(FAKE) / 3, rel=1e-6)
    ns = -sum(math.log(_sigmoid(x)) for x in FAKE) / 3
    assert generator_loss(fake, "non_saturating").item() == pytest.approx(ns, rel=1e-6)
    mm = sum(math.log(1 - _sigmoid(x)) for x in FAKE) / 3
    assert generator_loss(fake, "minimax").item() == pytest.approx(mm, rel=1e-6)
    with pytest.raises(ConfigError):
        discriminator_loss(real, fake, "hinge", real_target=0.9)
    with pytest.raises(ConfigError):
        generator_loss(fake, "wasserstein")


def test_historical_average_penalty_after_three_updates() -> None:
    net = nn.Linear(2, 1)
    hist = HistoricalAverage(net)
    snapshots = [([1.0, 2.0], 0.0), ([3.0, -2.0], 1.0), ([2.0, 3.0], 5.0)]
    for w, b in snapshots:
        with torch.no_grad():
            net.weight.copy_(torch.tensor([w]))
            net.bias.fill_(b)
        hist.update(net)
    # averages: weight (2, 1), bias 2
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.0, 1.0]]))
        net.bias.fill_(-1.0)
    penalty = hist.penalty(net)
    assert penalty.item() == pytest.approx((0 - 2) ** 2 + (1 - 1) ** 2 + (-1 - 2) ** 2)
    penalty.backward()
    assert torch.allclose(net.weight.grad, torch.tensor([[-4.0, 0.0]]))  # 2 (theta - avg)


def test_gaussian_kl_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    mu, logvar = torch.randn(4, 3), torch.randn(4, 3)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(4, 3), torch.ones(4, 3))
    expected = torch.distributions.kl_divergence(q, p).sum(dim=1).mean()
    assert torch.allclose(gaussian_kl(mu, logvar), expected, atol=1e-6)


def test_ssl_losses_against_explicit_k_plus_one_softmax() -> None:
    torch.manual_seed(0)
    k = 4
    lab, unl, fake = torch.randn(5, k), torch.randn(6, k) * 2, torch.randn(7, k) - 1
    labels = torch.tensor([0, 3, 1, 2, 3])

    def probs(logits: torch.Tensor) -> torch.Tensor:  # explicit K+1 softmax, fake logit 0
        return torch.softmax(torch.cat([logits, torch.zeros(len(logits), 1)], dim=1), dim=1)

    p_lab, p_unl, p_fake = probs(lab), probs(unl), probs(fake)
    # L_lab = -mean log p(y | x, y <= K) = cross-entropy over the K classes
    cond = p_lab[:, :k] / (1 - p_lab[:, k : k + 1])
    hand_lab = -cond[torch.arange(5), labels].log().mean()
    assert torch.allclose(ssl_supervised_loss(lab, labels), hand_lab, atol=1e-6)
    assert torch.allclose(ssl_supervised_loss(lab, labels), F.cross_entropy(lab, labels), atol=1e-6)

    # D(x) = 1 - p(K+1 | x) = Z / (Z + 1)
    d_unl, d_fake = 1 - p_unl[:, k], 1 - p_fake[:, k]
    z_unl = unl.exp().sum(1)
    assert torch.allclose(d_unl, z_unl / (z_unl + 1), atol=1e-6)
    hand_unl = -0.5 * (d_unl.log().mean() + (1 - d_fake).log().mean())
    assert torch.allclose(ssl_unsupervised_loss(unl, fake), hand_unl, atol=1e-6)

    assert torch.allclose(
        ssl_generator_minimax_loss(fake), 0.5 * (1 - d_fake).log().mean(), atol=1e-6
    )
    assert torch.allclose(ssl_generator_nonsaturating_loss(fake), -d_fake.log().mean(), atol=1e-6)


def test_ema_warmup_lowers_decay_for_early_updates():
    net = nn.Linear(2, 1)
    ema = ExponentialMovingAverage(net, decay=0.9999)
    assert ema.current_decay() == pytest.approx(1 / 10)
    ema.update(net)
    assert ema.current_decay() == pytest.approx(2 / 11)
    ema.load_state_dict({**ema.state_dict(), "num_updates": torch.tensor(10**7)})  # a checkpoint
    assert ema.current_decay() == pytest.approx(0.9999)


def _mbd_with_weight(t: np.ndarray, bias: np.ndarray) -> MinibatchDiscrimination:
    """A layer whose effective W is ``t`` (theta = t, s = log ||t[:, b, c]||) and bias ``bias``."""
    a, b, c = t.shape
    layer = MinibatchDiscrimination(a, num_kernels=b, kernel_dim=c, data_init=False)
    with torch.no_grad():
        layer.theta.copy_(torch.tensor(t, dtype=torch.float32))
        layer.log_weight_scale.copy_(torch.tensor(np.log(np.linalg.norm(t, axis=0))))
        layer.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return layer


def test_minibatch_discrimination_against_a_reference_by_hand() -> None:
    # A = 2, B = 1 kernel, C = 2: W = [[1, 0], [0, 2]] maps f to M = (f_0, 2 f_1).
    layer = _mbd_with_weight(np.array([[[1.0, 0.0]], [[0.0, 2.0]]]), np.array([0.25]))
    ref = torch.tensor([[0.0, 0.0], [1.0, 1.0]])  # M = (0, 0), (1, 2)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # M = (1, 0), (0, 2), (1, 2)
    layer.eval().requires_grad_(False)
    out = layer(x, reference=ref)
    assert out.shape == (3, 3)
    assert torch.equal(out[:, :2], x)
    # o(x_i) = sum over the reference rows (no self term to drop, x_2 equals ref_1) + bias
    hand = [
        math.exp(-1) + math.exp(-2) + 0.25,  # |1-0|+|0-0| = 1, |1-1|+|0-2| = 2
        math.exp(-2) + math.exp(-1) + 0.25,  # 0+2 = 2, 1+0 = 1
        math.exp(-3) + math.exp(0) + 0.25,  # 1+2 = 3, 0
    ]
    np.testing.assert_allclose(out[:, 2].numpy(), hand, rtol=1e-6)
    # an example's output is the same alone or in any batch: it never sees the others
    assert torch.allclose(layer(x[1:2], reference=ref), out[1:2])
    # without a reference: the batch itself, self excluded (the training maths, in any mode)
    in_batch = layer(x)[:, 2]
    np.testing.assert_allclose(
        in_batch.numpy(),
        [math.exp(-3) + math.exp(-2) + 0.25, math.exp(-3) + math.exp(-1) + 0.25,
         math.exp(-2) + math.exp(-1) + 0.25],
        rtol=1e-6,
    )  # fmt: skip


def test_minibatch_discrimination_data_init_statistics() -> None:
    from gendisc.nets.layers import needs_data_init

    torch.manual_seed(0)
    layer = MinibatchDiscrimination(6, num_kernels=4, kernel_dim=3)
    theta = layer.theta.detach().clone()
    f = torch.randn(64, 6)
    layer.eval()
    layer(f)  # eval mode: no init
    assert not bool(layer.initialized)
    layer.train()
    first = layer(f)  # the first training forward initialises, then computes with the init
    assert bool(layer.initialized)
    assert torch.allclose(layer(f), first, atol=1e-6)
    # the documented statistics on the init batch: per kernel, the mean over examples of the
    # L1 distance to the nearest other example is 2, and o is centred (bias = -mean sum c)
    m = layer._project(f, layer.weight)  # (B, N, C)
    dist = (m.unsqueeze(2) - m.unsqueeze(1)).abs().sum(-1)
    dist = dist + torch.eye(64) * 1e9
    nearest = dist.amin(dim=2).mean(dim=1)
    assert torch.allclose(nearest, torch.full((4,), 2.0), rtol=1e-4)
    o = first[:, 6:]
    assert torch.allclose(o.mean(0), torch.zeros(4), atol=1e-5)
    c = torch.exp(-dist).sum(2).t()  # the unbiased sum over the others (self: exp(-1e9) = 0)
    assert torch.allclose(layer.bias, -c.mean(0), atol=1e-5)
    # only the scales moved: theta untouched, one log-scale shift per kernel
    assert torch.equal(layer.theta, theta)
    assert (layer.log_weight_scale.std(dim=1) < 1e-6).all()
    # the helpers cover it: data_dependent_init re-inits, needs_data_init / mark_initialized
    fresh = MinibatchDiscrimination(6, num_kernels=4, kernel_dim=3)
    assert needs_data_init(fresh)
    mark_initialized(fresh)
    assert not needs_data_init(fresh) and torch.equal(fresh.bias, torch.full((4,), -1.0))
    fresh.train()(f)
    assert torch.equal(fresh.bias, torch.full((4,), -1.0))  # marked: no init on the forward
    data_dependent_init(fresh, f)
    assert not needs_data_init(fresh)
    assert torch.allclose(fresh(f)[:, 6:].mean(0), torch.zeros(4), atol=1e-5)
    # the init is saved: a loaded layer does not re-initialise on its first training forward
    loaded = MinibatchDiscrimination(6, num_kernels=4, kernel_dim=3)
    loaded.load_state_dict(layer.state_dict())
    assert torch.equal(loaded.train()(f * 3), layer(f * 3))
    with pytest.raises(ValueError, match="at least 2"):
        MinibatchDiscrimination(6, 4, 3).train()(f[:1])
