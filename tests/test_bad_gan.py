"""Bad GAN (Dai et al. 2017) as options of ssl_gan: each term against its formula, and real
training steps with every term on (the real Hydra configs, digits)."""

from __future__ import annotations

import math

import pytest
import torch

from gendisc.errors import ConfigError, gendisc_cause
from gendisc.losses import (
    conditional_entropy,
    gaussian_noise_nll,
    low_density_loss,
    pull_away_term,
)
from gendisc.models.bad_gan import BadGANTerms
from gendisc.train import train
from gendisc.utils.build import build

TINY = ["trainer.max_epochs=1", "trainer.limit_train_batches=3", "data.val_size=100"]


def test_conditional_entropy_against_its_formula():
    uniform = torch.zeros(4, 10)
    assert conditional_entropy(uniform).item() == pytest.approx(math.log(10))
    logits = torch.tensor([[math.log(3.0), 0.0]])  # p = (3/4, 1/4)
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert conditional_entropy(logits).item() == pytest.approx(expected)
    assert conditional_entropy(torch.tensor([[100.0, 0.0, 0.0]])).item() == pytest.approx(
        0, abs=1e-6
    )


def test_pull_away_term_against_its_formula():
    assert pull_away_term(torch.eye(3)).item() == pytest.approx(0.0)  # orthogonal: spread
    assert pull_away_term(torch.ones(4, 5)).item() == pytest.approx(1.0)  # identical: collapsed
    features = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    cos_01, cos_02, cos_12 = 1 / math.sqrt(2), 0.0, 1 / math.sqrt(2)
    expected = 2 * (cos_01**2 + cos_02**2 + cos_12**2) / (3 * 2)  # ordered pairs i != j
    assert pull_away_term(features).item() == pytest.approx(expected)
    assert pull_away_term(3.0 * features).item() == pytest.approx(expected)  # scale-free


def test_variational_entropy_is_the_gaussian_nll_of_the_noise():
    torch.manual_seed(0)
    mu, logvar, z = torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 3)
    normal = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    constant = 0.5 * math.log(2 * math.pi) * 3
    expected = -(normal.log_prob(z).sum(1) + constant).mean()
    assert gaussian_noise_nll(mu, logvar, z).item() == pytest.approx(expected.item(), rel=1e-5)


def test_low_density_loss_averages_the_excess_of_the_likely_samples():
    log_p = torch.tensor([-1.0, 2.0, 5.0], requires_grad=True)
    loss = low_density_loss(log_p, 1.0)
    assert loss.item() == pytest.approx((1.0 + 4.0) / 2)
    loss.backward()
    assert log_p.grad.tolist() == [0.0, 0.5, 0.5]  # only the samples above the threshold
    assert low_density_loss(torch.tensor([-3.0, -2.0]), 1.0).item() == 0.0


@pytest.mark.parametrize(
    "options, message",
    [
        ({"pull_away": -1.0}, "weights must be >= 0"),
        ({"variational_entropy": 0.1}, "needs model.bad_gan.encoder"),
        ({"low_density": {"weight": 1e-4}}, "density_ckpt is not set"),
        ({"low_density": {"density_ckpt": "x.ckpt", "typo": 1}}, "unknown options"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        BadGANTerms((1, 8, 8), 16, **options)


def test_every_term_trains_on_the_real_config(make_cfg, tmp_path):
    """D's conditional entropy, G's pull-away term and the noise encoder (trained with G)."""
    bad_gan = (
        "model.bad_gan={conditional_entropy:0.1,pull_away:0.8,variational_entropy:0.01,"
        "encoder:{_target_:gendisc.nets.vae.MLPEncoder,_partial_:true,hidden:[32]}}"
    )
    cfg = make_cfg(["model=ssl_gan", bad_gan, *TINY])
    _, model = build(cfg)
    encoder_before = [p.detach().clone() for p in model.bad_gan.encoder.parameters()]
    metrics = train(cfg)
    assert math.isfinite(metrics["train/cond_entropy"]) and metrics["train/cond_entropy"] > 0
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    encoder_after = [v for k, v in state["state_dict"].items() if k.startswith("bad_gan.encoder.")]
    assert len(encoder_after) == len(encoder_before)
    assert any(not torch.equal(a, b) for a, b in zip(encoder_after, encoder_before, strict=True))


def test_low_density_term_with_a_vae_density_model(make_cfg, tmp_path):
    vae = ["model=vae", "model.conditional=false", "~callbacks.generative_metrics", *TINY]
    train(make_cfg([*vae, "test=false", "~callbacks.samples"], name="density"))
    density = tmp_path / "density" / "checkpoints" / "last.ckpt"
    low_density = (
        f"model.bad_gan={{low_density:{{density_ckpt:'{density}',probability:1.0,"
        "samples:16,reference_images:200}}"
    )
    cfg = make_cfg(["model=ssl_gan", low_density, *TINY])
    metrics = train(cfg)
    assert math.isfinite(metrics["train/g_loss"])
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    threshold = state["state_dict"]["bad_gan.density_threshold"]
    assert torch.isfinite(threshold)  # set at fit start from real images, kept for resuming
    assert not any(key.startswith("bad_gan._density") for key in state["state_dict"])
    # the term itself: generated images above the threshold are pushed down, below it nothing
    _, model = build(cfg)
    model.bad_gan.low_density["start_epoch"] = 0
    datamodule = build(cfg)[0]
    model.bad_gan.load_density(lambda n: datamodule.unlabeled_sample(n), torch.device("cpu"))
    real = datamodule.unlabeled_sample(16)
    torch.manual_seed(0)
    term = model.bad_gan.generator_term(
        real, torch.zeros(16, 1), features=lambda x: x, sample=lambda n: real[:n], epoch=0
    )
    torch.manual_seed(0)
    torch.rand(())  # the term's draw of whether it applies this step (probability 1 here)
    log_p = model.bad_gan._density[0](real)  # the same one-sample ELBO draws
    expected = 1e-4 * low_density_loss(log_p, model.bad_gan.density_threshold)
    assert term.item() == pytest.approx(expected.item(), rel=1e-6)
    assert (log_p > model.bad_gan.density_threshold).any()  # real images: most are above it


def test_a_missing_density_model_says_what_to_train(make_cfg, tmp_path):
    cfg = make_cfg(
        [
            "model=ssl_gan",
            f"model.bad_gan={{low_density:{{density_ckpt:'{tmp_path / 'none.ckpt'}'}}}}",
            *TINY,
        ]
    )
    with pytest.raises(Exception) as info:
        train(cfg)
    assert "ssl_vae_m1_mnist" in str(gendisc_cause(info.value))
