"""The semi-supervised VAE M2: its bounds against hand-computed values, the exact sum over the
classes, the classification weight, a real run that learns, sampling and exact resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from gendisc.checkpoints import load_module
from gendisc.errors import ConfigError
from gendisc.models.sampling import sampler_for
from gendisc.models.ssl_vae import SSLVAEModule
from gendisc.models.ssl_vae.bound import (
    classification_weight,
    dynamic_binarize,
    labeled_bound,
    unlabeled_bound,
)
from gendisc.models.vae import bernoulli_nll, kl_per_example
from gendisc.nets import MLPClassifier
from gendisc.nets.vae import MLPDecoder, MLPEncoder
from gendisc.train import train
from gendisc.utils.build import build
from tests.test_resume_models import kill_resume_and_compare

QUIET = ["callbacks.generative_metrics=null", "callbacks.rich_progress_bar=null"]


def make_m2(m2: dict | None = None, **kwargs) -> SSLVAEModule:
    torch.manual_seed(0)
    options = {"in_shape": (1, 4, 4), "num_classes": 3, **kwargs}
    return SSLVAEModule(
        m2={"latent_dim": 2, **(m2 or {})},
        encoder=lambda **kw: MLPEncoder(hidden=(8,), **kw),
        decoder=lambda **kw: MLPDecoder(hidden=(8,), **kw),
        classifier=lambda **kw: MLPClassifier(hidden=(8,), **kw),
        optimizer=lambda params: torch.optim.Adam(params, 1e-3),
        **options,
    ).eval()


def test_labeled_bound_adds_the_uniform_label_prior():
    # recon 3 nats, KL 0.5 nats, K = 4: L = -3 - 0.5 + log(1/4)
    value = labeled_bound(torch.tensor([3.0]), torch.tensor([0.5]), 4)
    assert value.item() == pytest.approx(-3.5 - math.log(4))


def test_unlabeled_bound_on_a_hand_built_case():
    # K = 2, L(x, 0) = -10, L(x, 1) = -20; logits (0, log 3): q = (1/4, 3/4)
    bounds = torch.tensor([[-10.0, -20.0]])
    logits = torch.tensor([[0.0, math.log(3.0)]])
    expectation = 0.25 * -10.0 + 0.75 * -20.0  # E_q[L] = -17.5
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))  # H(q) = 0.5623
    assert unlabeled_bound(bounds, logits).item() == pytest.approx(expectation + entropy, abs=1e-5)
    # a certain classifier: U = L of its class, no entropy
    certain = torch.tensor([[0.0, -1e4]])
    assert unlabeled_bound(bounds, certain).item() == pytest.approx(-10.0, abs=1e-4)


def test_the_sum_over_classes_is_exact():
    """The batched K copies give, class by class, the labeled bound of an explicit loop over y,
    and U(x) = E_q(y|x)[L(x, y)] + H(q(y|x)) with every class counted."""
    m2 = make_m2()
    x = torch.rand(5, 1, 4, 4) * 2 - 1
    with torch.no_grad():
        batched = m2.class_bounds(x, sample=False)
        assert batched.shape == (5, 3)
        for k in range(3):
            y = torch.full((5,), k)
            mu, logvar = m2.encode(x, y)
            recon = bernoulli_nll(m2.decode_params(mu, y), x)
            by_hand = -recon - kl_per_example(mu, logvar) - math.log(3)
            assert torch.allclose(batched[:, k], by_hand, atol=1e-5)
            assert torch.allclose(batched[:, k], m2.bound(x, y, sample=False), atol=1e-5)
        bound, logits = m2.unlabeled(x, sample=False)
        q = torch.softmax(m2(x), dim=1)
        loop = sum(q[:, k] * batched[:, k] for k in range(3)) - (q * q.log()).sum(1)
        assert torch.allclose(logits, m2(x))
        assert torch.allclose(bound, loop, atol=1e-5)


def test_dynamic_binarisation_draws_pixels_with_the_grey_level_as_probability():
    torch.manual_seed(0)
    x = torch.full((20000,), 0.5)  # P(white) = 3/4
    b = dynamic_binarize(x)
    assert set(b.unique().tolist()) == {-1.0, 1.0}
    assert ((b + 1) / 2).mean().item() == pytest.approx(0.75, abs=0.02)
    assert not torch.equal(b, dynamic_binarize(x))  # redrawn each call


def test_classification_weight_from_the_label_protocol(make_cfg):
    assert classification_weight(50000, 100) == pytest.approx(50.0)  # MNIST-100: 0.1 * 500
    datamodule, model = build(make_cfg(["experiment=ssl_vae_digits"]))
    assert isinstance(model, SSLVAEModule) and model.m2_options.alpha.value is None
    # digits: 1437 training images - 200 validation = 1237 in the pool, 10 x 10 labeled
    assert len(datamodule.unlabeled_index) == 1237 and len(datamodule.labeled_index) == 100
    scale = model.m2_options.alpha.scale
    assert classification_weight(1237, 100, scale) == pytest.approx(1.237)
    with pytest.raises(ConfigError):
        model.resolve_alpha()  # no datamodule outside a fit, alpha not fixed
    _, fixed = build(make_cfg(["experiment=ssl_vae_digits", "model.m2.alpha.value=7.5"]))
    assert fixed.resolve_alpha() == 7.5
    with pytest.raises(ConfigError):
        classification_weight(1237, 0)


@pytest.mark.parametrize(
    "bad",
    [
        {"m2": {"likelihood": {"kind": "poisson"}}},
        {"m2": {"likelihood": {"kind": "gaussian", "binarize": True}}},
        {"m2": {"alpha": {"scale": -0.1}}},
        {"m2": {"alpha": {"value": -1.0}}},
        {"m2": {"latent_dim": 0}},
        {"m2": {"latents": 3}},  # not an option of model.m2
        {"m2": {"likelihood": "gaussian"}},  # a group, not a value
        {"num_classes": 1},
    ],
)
def test_bad_settings_are_config_errors(bad):
    with pytest.raises(ConfigError):
        make_m2(**bad)


def test_gaussian_likelihood_and_conditional_sampling():
    m2 = make_m2({"likelihood": {"kind": "gaussian", "sigma": 0.5}})
    assert m2.log_sigma.item() == pytest.approx(math.log(0.5))
    x = torch.rand(4, 1, 4, 4) * 2 - 1
    assert torch.isfinite(m2.unlabeled(x)[0]).all()
    sampler = sampler_for(m2)
    assert sampler.conditional and sampler.num_classes == 3
    images, labels = sampler.sample(6, seed=1)
    assert images.shape == (6, 1, 4, 4) and labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert images.min() >= -1 and images.max() <= 1


def test_ssl_vae_digits_learns(make_cfg, tmp_path, generative_cache):
    """A real run of the experiment's composed config: above chance (0.1) after 3 epochs, with
    alpha = 0.1 * 1237 / 100, the bound logged, class-conditional pictures and metrics."""
    from tests.conftest import generative_test_overrides

    overrides = ["experiment=ssl_vae_digits", "trainer.max_epochs=3", "threads=1"]
    metrics = train(make_cfg([*overrides, *generative_test_overrides(generative_cache)]))
    assert metrics["train/alpha"] == pytest.approx(0.1 * 1237 / 100)
    assert metrics["val/acc_best"] > 0.5 and metrics["test/acc"] > 0.5
    assert metrics["val/elbo"] < 0 and math.isfinite(metrics["train/elbo"])
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(report["test/confusion_matrix"]) == 10
    for key in ("gen/fid", "gen/class_acc", "gen/cas"):
        assert isinstance(report[key], float), key
    for name in ("samples", "reconstructions", "interpolations"):
        assert (tmp_path / "run" / f"{name}.png").is_file(), name
    m2 = load_module(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert isinstance(m2, SSLVAEModule)
    images, labels = sampler_for(m2).sample(20, seed=0)
    assert images.shape == (20, 1, 8, 8) and labels.tolist() == list(range(10)) * 2


def test_binarized_run_trains(make_cfg):
    metrics = train(
        make_cfg(
            ["experiment=ssl_vae_digits", "debug=fdr", "model.m2.likelihood.binarize=true", *QUIET]
        )
    )
    assert math.isfinite(metrics["train/loss"]) and 0.0 <= metrics["test/acc"] <= 1.0


@pytest.mark.slow
def test_killed_run_resumes_exactly(tmp_path):
    """SIGKILLed at the start of epoch 2, resumed with ckpt_path=last: the metrics of an
    uninterrupted run (tests/test_resume_models.py's protocol)."""
    overrides = [
        "experiment=ssl_vae_digits",
        "data.val_size=100",
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=4",
        "trainer.deterministic=true",
        "seed=5",
        *QUIET,
    ]
    resumed = kill_resume_and_compare(overrides, tmp_path)
    assert np.isfinite(resumed["val/elbo"])
