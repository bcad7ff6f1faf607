"""M1+M2 and the auxiliary models ADGM / SDGM of model=ssl_vae: their bounds against explicit
formulas, the exact sum over classes, the test-time averaging over a, real runs on digits that
learn, the M1 checkpoint's errors, exact resume, and an ssl_vae checkpoint as the generator of
augmented_classifier and gendisc-twostage."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from gendisc.checkpoints import load_module, read_checkpoint_state
from gendisc.errors import ConfigError
from gendisc.models.sampling import sampler_for
from gendisc.models.ssl_vae import SSLVAEModule
from gendisc.models.ssl_vae.auxiliary import gaussian_log_density
from gendisc.nets import MLPClassifier
from gendisc.nets.vae import MLPDecoder, MLPEncoder
from gendisc.pipelines.two_stage import run_two_stage
from gendisc.train import train
from gendisc.utils.build import build
from tests.test_resume_models import kill_resume_and_compare

PLAIN = ["callbacks.rich_progress_bar=null", "threads=1"]
QUIET = ["callbacks.generative_metrics=null", *PLAIN]


def config_error_of(action: Callable[[], object]) -> str:
    """The message of the ConfigError that ``action`` raises (Hydra wraps it when it comes from a
    constructor; gendisc-train prints it alone)."""
    with pytest.raises(Exception) as info:
        action()
    error: BaseException | None = info.value
    while error is not None and not isinstance(error, ConfigError):
        error = error.__cause__
    assert error is not None, f"no ConfigError behind {info.value!r}"
    return str(error)


def make_aux(
    kind: str, m2: dict | None = None, auxiliary: dict | None = None, **kwargs
) -> SSLVAEModule:
    torch.manual_seed(0)
    return SSLVAEModule(
        encoder=lambda **kw: MLPEncoder(hidden=(8,), **kw),
        decoder=lambda **kw: MLPDecoder(hidden=(8,), **kw),
        classifier=lambda **kw: MLPClassifier(hidden=(8,), **kw),
        optimizer=lambda params: torch.optim.Adam(params, 1e-3),
        in_shape=(1, 4, 4),
        num_classes=3,
        m2={"latent_dim": 2, **(m2 or {})},
        auxiliary={"kind": kind, "dim": 3, **(auxiliary or {})},
        **kwargs,
    ).eval()


def normal(mu: torch.Tensor, logvar: torch.Tensor) -> Normal:
    return Normal(mu, torch.exp(0.5 * logvar))


def test_gaussian_log_density_by_hand():
    # 2 dims: N(0; 0, 1) = -0.5 log 2pi; N(3; 1, 4) = -0.5 (log 2pi + log 4 + 4 / 4)
    v, mu, logvar = (
        torch.tensor([[0.0, 3.0]]),
        torch.tensor([[0.0, 1.0]]),
        torch.tensor([[0.0, math.log(4.0)]]),
    )
    expected = -0.5 * math.log(2 * math.pi) - 0.5 * (math.log(2 * math.pi) + math.log(4.0) + 1.0)
    assert gaussian_log_density(v, mu, logvar).item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("auxiliary", ["adgm", "sdgm"])
def test_auxiliary_labeled_bound_is_the_explicit_formula(auxiliary):
    """L(x, y) = log p(x | [a,] y, z) + log p(y) - KL(q(z | a, y, x) || p(z)) + log p(a | .)
    - log q(a | x), z at its mean, a given, every density written with torch.distributions."""
    model = make_aux(auxiliary)
    x = torch.bernoulli(torch.full((4, 1, 4, 4), 0.5)) * 2 - 1  # binary: Bernoulli's support
    y = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        mu_a, logvar_a = model.auxiliary.posterior(x, None)
        a = mu_a + 0.3 * torch.randn_like(mu_a)
        log_q_a = normal(mu_a, logvar_a).log_prob(a).sum(1)
        mu_z, logvar_z = model.encoder(torch.cat([x.flatten(1), a], 1), y)
        kl = kl_divergence(normal(mu_z, logvar_z), Normal(0.0, 1.0)).sum(1)
        if auxiliary == "adgm":
            logits = model.decoder(mu_z, y)
            prior = model.auxiliary.prior(torch.cat([x.flatten(1), mu_z], 1), y)
        else:
            logits = model.decoder(torch.cat([mu_z, a], 1), y)
            prior = model.auxiliary.prior(mu_z, y)
        log_px = (
            torch.distributions.Bernoulli(logits=logits).log_prob((x + 1) / 2).flatten(1).sum(1)
        )
        log_p_a = normal(*prior).log_prob(a).sum(1)
        by_hand = log_px - math.log(3) - kl + log_p_a - log_q_a
        module = model.bound(x, y, (a, log_q_a), sample=False)
    assert torch.allclose(module, by_hand, atol=1e-4)
    assert torch.allclose(log_q_a, gaussian_log_density(a, mu_a, logvar_a), atol=1e-5)


@pytest.mark.parametrize("auxiliary", ["adgm", "sdgm"])
def test_auxiliary_unlabeled_bound_sums_every_class(auxiliary):
    """U(x) = sum_y q(y | a, x) L(x, y, a) + H(q(y | a, x)) with one a per example shared by the
    K classes (a at its mean here), from an explicit loop over y."""
    model = make_aux(auxiliary)
    x = torch.rand(5, 1, 4, 4) * 2 - 1
    with torch.no_grad():
        bound, logits = model.unlabeled(x, sample=False)
        drawn = model.draw_auxiliary(x, sample=False)
        q = torch.softmax(model.class_logits(x, drawn), 1)
        assert torch.allclose(logits, model.class_logits(x, drawn))
        per_class = [model.bound(x, torch.full((5,), k), drawn, sample=False) for k in range(3)]
        loop = sum(q[:, k] * per_class[k] for k in range(3)) - (q * q.log()).sum(1)
        assert torch.allclose(bound, loop, atol=1e-4)
        assert torch.allclose(model.class_bounds(x, sample=False)[:, 2], per_class[2], atol=1e-4)


def test_evaluation_averages_the_classifier_over_draws_of_a():
    x = torch.rand(6, 1, 4, 4) * 2 - 1
    at_mean = make_aux("adgm", auxiliary={"eval_samples": 0})
    with torch.no_grad():
        a_mean = at_mean.draw_auxiliary(x, sample=False)
        assert torch.allclose(at_mean(x), at_mean.class_logits(x, a_mean))
        averaged = make_aux("adgm", auxiliary={"eval_samples": 7})
        torch.manual_seed(3)
        logits = averaged(x)
        torch.manual_seed(3)
        x7 = x.repeat(7, 1, 1, 1)
        mu, logvar = averaged.auxiliary.posterior(x7, None)
        a = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        probs = torch.softmax(averaged.classifier(torch.cat([x7.flatten(1), a], 1)), 1)
        expected = probs.view(7, 6, 3).mean(0)
    assert torch.allclose(logits.exp(), expected, atol=1e-5)
    assert torch.allclose(logits.exp().sum(1), torch.ones(6), atol=1e-5)


def test_monte_carlo_samples_repeat_the_batch():
    m2 = {"mc_samples": 4, "alpha": {"value": 1.0}, "likelihood": {"binarize": True}}
    model = make_aux("sdgm", m2)
    assert model.training_images(torch.zeros(5, 1, 4, 4)).shape == (20, 1, 4, 4)
    images, labels = sampler_for(model).sample(6, seed=2)
    assert images.shape == (6, 1, 4, 4) and labels.tolist() == [0, 1, 2, 0, 1, 2]
    again, _ = sampler_for(model).sample(6, seed=2)
    assert torch.equal(images, again)  # a's noise is part of the seeded latent


@pytest.mark.parametrize(
    "bad",
    [
        {"auxiliary": {"kind": "both"}},
        {"m2": {"mc_samples": 0}},
        {"auxiliary": {"eval_samples": -1}},
        {"auxiliary": {"dim": 0}},
        {"auxiliary": {"size": 3}},  # not an option of model.auxiliary
        {"m1": {"features": "mode"}},
        {"m1": "m1.ckpt"},  # a group, not a path
    ],
)
def test_bad_settings_are_config_errors(bad):
    with pytest.raises(ConfigError):
        make_aux("adgm", **bad)


def test_decoded_variance_is_the_gaussian_with_the_decoders_per_dimension_variance():
    """model.m2.likelihood.variance=decoded: the decoder outputs means then log-variances (twice the
    channels); -log p(h | y, z) is the diagonal Gaussian's, per dimension, and samples and
    reconstructions use the means only."""
    model = make_aux("none", {"likelihood": {"kind": "gaussian", "variance": "decoded"}})
    assert not hasattr(model, "log_sigma")
    params = torch.randn(5, 2, 4, 4)
    h = torch.randn(5, 1, 4, 4)
    mean, logvar = params[:, :1], params[:, 1:]
    expected = -normal(mean, logvar).log_prob(h).flatten(1).sum(dim=1)
    assert torch.allclose(model.nll(params, h), expected, atol=1e-5)
    z, y = torch.randn(5, 2), torch.tensor([0, 1, 2, 0, 1])
    assert model.decoder(z, y).shape == (5, 2, 4, 4)
    assert model.decode_params(z, y).shape == (5, 1, 4, 4)
    assert model.decode(z, y).shape == (5, 1, 4, 4)
    # shared: one learned sigma for every dimension, the decoder outputs the means only
    shared = make_aux("none", {"likelihood": {"kind": "gaussian"}})
    assert shared.decoder(z, y).shape == (5, 1, 4, 4) and shared.log_sigma.requires_grad


@pytest.mark.parametrize(
    "bad",
    [
        {"variance": "per_pixel"},
        {"variance": "decoded", "kind": "bernoulli"},
        {"variance": "decoded", "kind": "gaussian", "sigma": 0.5},
    ],
)
def test_bad_variance_settings_are_config_errors(bad):
    with pytest.raises(ConfigError, match=r"model\.m2\.likelihood\.variance"):
        make_aux("none", {"likelihood": bad})


def test_auxiliary_models_need_the_dense_nets(make_cfg):
    cfg = make_cfg(["experiment=ssl_vae_adgm_digits", "model/encoder=conv"])
    assert "use the dense ones" in config_error_of(lambda: build(cfg))


def test_missing_or_wrong_m1_checkpoint_is_one_clear_error(make_cfg, tmp_path, tiny_cvae_run):
    def m1_error(m1: object, name: str, *extra: str) -> str:
        overrides = ["experiment=ssl_vae_m1m2_digits", f"model.m1.ckpt={m1}", *extra]
        cfg = make_cfg(overrides, name=name)
        return config_error_of(lambda: build(cfg))

    missing = m1_error(tmp_path / "none.ckpt", "a")
    assert missing.startswith(f"model.m1.ckpt={tmp_path / 'none.ckpt'}: no such file")
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    assert "cannot read this checkpoint" in m1_error(broken, "b")
    conditional = tiny_cvae_run[0] / "checkpoints" / "last.ckpt"
    assert "must be an unconditional VAE" in m1_error(conditional, "c")
    bernoulli = m1_error("x", "d", "model.m2.likelihood.kind=bernoulli")
    assert "model.m2.likelihood.kind=gaussian" in bernoulli


@pytest.mark.slow
def test_m1m2_on_digits_learns_on_frozen_m1_features(make_cfg, tmp_path):
    """M1 (30 epochs: fewer leave its code collapsed), then M1+M2 on its features for 5 epochs: above chance, M1's weights in the
    M1+M2 checkpoint unchanged, samples and reconstructions decoded to 8x8 images by M1."""
    train(make_cfg(["experiment=ssl_vae_m1_digits", "trainer.max_epochs=30", *QUIET], name="m1"))
    m1 = tmp_path / "m1" / "checkpoints" / "last.ckpt"
    overrides = ["experiment=ssl_vae_m1m2_digits", f"model.m1.ckpt={m1}", "trainer.max_epochs=5"]
    metrics = train(make_cfg([*overrides, *QUIET], name="m1m2"))
    assert metrics["test/acc"] > 0.2 and math.isfinite(metrics["val/elbo"])
    model = load_module(tmp_path / "m1m2" / "checkpoints" / "last.ckpt")
    assert isinstance(model, SSLVAEModule) and model.data_shape == (1, 1, 16)
    m1_state = read_checkpoint_state(m1)
    for name, value in model.m1.encoder.state_dict().items():
        assert torch.equal(value, m1_state[f"encoder.{name}"]), name
    images, labels = sampler_for(model).sample(20, seed=0)
    assert images.shape == (20, 1, 8, 8) and labels.tolist() == list(range(10)) * 2
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    assert model.reconstruct(x).shape == (3, 1, 8, 8)
    assert (tmp_path / "m1m2" / "samples.png").is_file()


# SDGM's end-to-end run is slow-tier: its bound is checked against the formula in the fast tier
@pytest.mark.parametrize("name", ["adgm", pytest.param("sdgm", marks=pytest.mark.slow)])
def test_auxiliary_model_on_digits_learns(make_cfg, tmp_path, name):
    overrides = [f"experiment=ssl_vae_{name}_digits", "trainer.max_epochs=3", *QUIET]
    metrics = train(make_cfg(overrides))
    assert metrics["train/alpha"] == pytest.approx(0.1 * 1237 / 100)
    assert metrics["val/acc_best"] > 0.3 and metrics["test/acc"] > 0.3
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(report["test/confusion_matrix"]) == 10
    assert (tmp_path / "run" / "reconstructions.png").is_file()


@pytest.mark.slow
def test_ssl_vae_checkpoint_is_an_augmented_classifier_generator(make_cfg, tmp_path):
    train(make_cfg(["experiment=ssl_vae_digits", "trainer.max_epochs=2", *QUIET], name="gen"))
    generator = tmp_path / "gen" / "checkpoints" / "last.ckpt"
    overrides = [
        "experiment=augment_digits",
        f"model.generator_ckpt={generator}",
        "trainer.max_epochs=2",
        *PLAIN,
    ]
    metrics = train(make_cfg(overrides, name="aug"))
    # it learns (0.84 measured), and it trained on the generator's labeled samples
    assert metrics["test/acc"] > 0.5
    assert 0.0 <= metrics["train/acc_synthetic"] <= 1.0


@pytest.mark.slow
def test_twostage_with_an_ssl_vae_generator(make_cfg, tmp_path):
    overrides = ["experiment=ssl_vae_augment_digits", "trainer.max_epochs=2", *PLAIN]
    cfg = make_cfg(overrides)
    result = run_two_stage(cfg, overrides, tmp_path / "twostage")
    assert "stage1_generator" in result and "test/acc" in result["stage2_classifier"]
    assert "ssl_vae" in json.dumps(result["overrides"]["stage1_generator"])
    assert load_module(result["generator_ckpt"]).__class__ is SSLVAEModule


@pytest.mark.slow
def test_killed_adgm_run_resumes_exactly(tmp_path):
    overrides = [
        "experiment=ssl_vae_adgm_digits",
        "data.val_size=100",
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=4",
        "trainer.deterministic=true",
        "seed=5",
        "callbacks.generative_metrics=null",
    ]
    resumed = kill_resume_and_compare(overrides, tmp_path)
    assert np.isfinite(resumed["val/elbo"])
