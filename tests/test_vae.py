"""The VAE: likelihood and KL formulas, encoder/decoder nets, the ELBO classifier, runs with
reconstructions and interpolations, and transfer of its encoder to a classifier."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from gendisc.checkpoints import load_module
from gendisc.errors import ConfigError
from gendisc.losses import gaussian_kl
from gendisc.models.vae import VAEModule, bernoulli_nll, gaussian_nll, kl_per_example
from gendisc.nets import ConvNet, MLPClassifier
from gendisc.nets.vae import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from gendisc.sample import write_samples
from gendisc.train import train
from gendisc.utils.build import build


def test_kl_per_example_matches_the_batch_kl():
    mu, logvar = torch.randn(7, 5), torch.randn(7, 5)
    per_example = kl_per_example(mu, logvar)
    assert per_example.shape == (7,)
    assert torch.allclose(per_example.mean(), gaussian_kl(mu, logvar))
    assert torch.allclose(kl_per_example(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2))


def test_bernoulli_nll_formula():
    logits, x = torch.randn(3, 1, 4, 4), torch.rand(3, 1, 4, 4) * 2 - 1
    p, t = torch.sigmoid(logits), (x + 1) / 2
    expected = -(t * p.log() + (1 - t) * (1 - p).log()).flatten(1).sum(1)
    assert torch.allclose(bernoulli_nll(logits, x), expected, atol=1e-5)


def test_gaussian_nll_formula():
    mean, x = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    log_sigma = torch.tensor(-0.7)
    expected = -Normal(mean, log_sigma.exp()).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(gaussian_nll(mean, x, log_sigma), expected, atol=1e-4)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)], ids=str)
@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("k", [0, 10])
def test_encoder_decoder_shapes(kind, shape, k):
    encoder_cls, decoder_cls = (
        (MLPEncoder, MLPDecoder) if kind == "mlp" else (ConvEncoder, ConvDecoder)
    )
    kwargs = {"hidden": (32, 16)} if kind == "mlp" else {"channels": (8, 16)}
    encoder = encoder_cls(shape, 6, num_classes=k, **kwargs)
    decoder = decoder_cls(6, shape, num_classes=k)
    x = torch.randn(4, *shape)
    y = torch.randint(10, (4,)) if k else None
    mu, logvar = encoder(x, y)
    assert mu.shape == logvar.shape == (4, 6)
    assert decoder(mu, y).shape == (4, *shape)
    if k:
        with pytest.raises(ValueError):
            decoder(mu)


def test_encoder_bodies_are_classifier_bodies():
    """Same parameter names and shapes as the classifier nets: transfer learning works."""
    for encoder, classifier in (
        (MLPEncoder((1, 8, 8), 4, hidden=(32, 16)), MLPClassifier((1, 8, 8), 10, hidden=(32, 16))),
        (ConvEncoder((1, 8, 8), 4, channels=(8, 16)), ConvNet((1, 8, 8), 10, channels=(8, 16))),
    ):
        mine = {k: v.shape for k, v in encoder.state_dict().items() if k.startswith("body.")}
        theirs = {k: v.shape for k, v in classifier.state_dict().items() if k.startswith("body.")}
        assert mine == theirs


def make_vae(**kwargs) -> VAEModule:
    torch.manual_seed(0)
    options = {"in_shape": (1, 8, 8), "num_classes": 3, "latent_dim": 4, **kwargs}
    return VAEModule(
        encoder=lambda **kw: MLPEncoder(hidden=(16,), **kw),
        decoder=lambda **kw: MLPDecoder(hidden=(16,), **kw),
        optimizer=lambda params: torch.optim.Adam(params, 1e-3),
        **options,
    ).eval()


def test_elbo_terms_and_classifier():
    vae = make_vae()
    x, y = torch.rand(5, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, 2, 0, 1])
    recon, kl = vae.terms(x, y, sample=False)
    mu, logvar = vae.encode(x, y)
    assert torch.allclose(recon, bernoulli_nll(vae.decode_params(mu, y), x))
    assert torch.allclose(kl, kl_per_example(mu, logvar))
    scores = vae.classify(x)
    assert scores.shape == (5, 3)
    assert torch.allclose(scores[torch.arange(5), y], -(recon + kl), atol=1e-5)
    images = vae.decode(mu, y)
    assert images.min() >= -1 and images.max() <= 1


def test_gaussian_likelihood_and_settings():
    vae = make_vae(likelihood="gaussian", gaussian_sigma=0.5, conditional=False)
    assert vae.log_sigma.item() == pytest.approx(math.log(0.5)) and not vae.log_sigma.requires_grad
    x = torch.rand(2, 1, 8, 8)
    recon, _ = vae.terms(x, sample=False)
    mu, _ = vae.encode(x)
    assert torch.allclose(recon, gaussian_nll(vae.decode_params(mu), x, vae.log_sigma))
    assert make_vae(likelihood="gaussian").log_sigma.requires_grad  # learned
    with pytest.raises(ConfigError):
        vae.classify(x)
    for bad in ({"likelihood": "poisson"}, {"beta": -1.0}):
        with pytest.raises(ConfigError):
            make_vae(**bad)


def test_unconditional_conv_vae_fast_dev_run(make_cfg):
    metrics = train(
        make_cfg(
            [
                "model=vae",
                "debug=fdr",
                "model.conditional=false",
                "model/encoder=conv",
                "model/decoder=conv",
                "model.encoder.channels=[8,16]",
                "model.likelihood=gaussian",
                "model.beta=0.5",
                "model.kl_warmup_epochs=2",
            ]
        )
    )
    for key in ("train/elbo", "train/recon", "train/kl", "val/elbo", "test/elbo", "gen/fid"):
        assert np.isfinite(metrics[key]), key
    assert "test/acc" not in metrics


def test_vae_run_writes_metrics_and_pictures(tiny_cvae_run):
    run, metrics = tiny_cvae_run
    report = json.loads((run / "metrics.json").read_text())
    for key in ("gen/fid", "gen/kid", "gen/is", "gen/cas", "gen/class_acc", "test/elbo"):
        assert isinstance(report[key], float), key
    assert report["test/elbo"] < 0 and 0.0 <= report["test/acc"] <= 1.0
    assert metrics["val/elbo_best"] >= metrics["val/elbo"] - 1e-6  # selected on val/elbo
    for name in ("samples", "reconstructions", "interpolations"):
        assert (run / f"{name}.png").is_file(), name
        assert (run / f"{name}_epoch002.png").is_file(), name


def test_vae_samples_and_encoder_transfer(tiny_cvae_run, make_cfg, tmp_path):
    run, _ = tiny_cvae_run
    ckpt = run / "checkpoints" / "last.ckpt"
    paths = write_samples(load_module(ckpt), 10, tmp_path)
    assert np.load(paths["npz"])["labels"].tolist() == list(range(10))
    _, model = build(
        make_cfg(
            [
                "model=classifier",
                "model/net=mlp",
                "model.net.hidden=[512,256]",
                f"model.init_from={ckpt}",
            ]
        )
    )
    source = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    loaded = model.transfer_report.loaded
    assert sorted(loaded) == [
        "body.0.0.bias",
        "body.0.0.weight",
        "body.1.0.bias",
        "body.1.0.weight",
    ]
    for name in loaded:
        assert torch.equal(model.net.state_dict()[name], source[f"encoder.{name}"])
