"""The GAN module: conditioning formulas, the toolbox switches, end-to-end runs, samples,
the sample CLI and transfer of its discriminator to a classifier."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from gendisc.checkpoints import load_module
from gendisc.errors import ConfigError
from gendisc.losses import HistoricalAverage, feature_matching_loss, generator_loss
from gendisc.models.gan import GANModule, annealed_sigma, label_planes
from gendisc.nets import MLPClassifier, MLPGenerator
from gendisc.sample import write_samples
from gendisc.train import train
from gendisc.utils.build import build
from gendisc.utils.config import ADVERSARIAL_KEYS, REGULARIZER_KEYS
from tests.conftest import (
    assert_accuracy_is_the_confusion_trace,
    shared_data_dir,
    single_thread_env,
)

SHAPE = (1, 8, 8)
K = 4


def make_gan(**kwargs) -> GANModule:
    """A small GAN; options of the adversarial core and regularizers go to their sub-configs."""
    torch.manual_seed(0)
    options: dict = {"in_shape": SHAPE, "num_classes": K, "adversarial": {}, "regularizers": {}}
    for key, value in kwargs.items():
        section = (
            "adversarial"
            if key in ADVERSARIAL_KEYS
            else "regularizers"
            if key in REGULARIZER_KEYS
            else None
        )
        if section:
            options[section][key] = value
        else:
            options[key] = value
    return GANModule(
        discriminator=lambda **kw: MLPClassifier(hidden=(16, 8), **kw),
        generator=lambda **kw: MLPGenerator(latent_dim=6, hidden=(16,), **kw),
        d_optimizer=lambda params: torch.optim.Adam(params, 1e-3),
        g_optimizer=lambda params: torch.optim.Adam(params, 1e-3),
        **options,
    ).eval()


def test_projection_discriminator_formula():
    gan = make_gan(conditioning="projection")
    assert gan.discriminator.num_classes == 1
    x, y = torch.randn(5, *SHAPE), torch.tensor([0, 1, 2, 3, 1])
    logit, features = gan.discriminate(x, y)
    h = features[-1]
    expected = gan.discriminator.head(h).squeeze(1) + (gan.projection.weight[y] * h).sum(1)
    assert torch.allclose(logit, expected, atol=1e-6)
    # the class scores are D's logit for every class
    scores = gan.classify(x)
    for k in range(K):
        assert torch.allclose(scores[:, k], gan(x, torch.full((5,), k)), atol=1e-5)


def test_concat_discriminator_sees_label_planes():
    gan = make_gan(conditioning="concat")
    assert gan.projection is None
    assert gan.discriminator.in_shape == (1 + K, 8, 8)
    x, y = torch.randn(3, *SHAPE), torch.tensor([2, 0, 3])
    planes = label_planes(y, K, x)
    assert planes.shape == (3, K, 8, 8)
    assert torch.equal(planes[:, :, 4, 4], torch.nn.functional.one_hot(y, K).float())
    expected = gan.discriminator(torch.cat([x, planes], dim=1)).squeeze(1)
    assert torch.allclose(gan(x, y), expected, atol=1e-6)
    scores = gan.classify(x)
    assert torch.allclose(scores[torch.arange(3), y], expected, atol=1e-6)


def test_unconditional_gan_has_single_logit_and_no_classes():
    gan = make_gan(conditional=False)
    assert gan.generator.num_classes == 0 and gan.unlabeled_streams == 1
    assert gan(torch.randn(2, *SHAPE)).shape == (2,)
    with pytest.raises(ConfigError):
        gan.classify(torch.randn(2, *SHAPE))


def test_invalid_settings_are_config_errors():
    for kwargs in (
        {"loss": "wasserstein"},
        {"conditioning": "film"},
        {"d_steps_per_g_step": 2, "g_steps_per_d_step": 2},
        {"real_target": 0.0},
    ):
        with pytest.raises(ConfigError):
            make_gan(**kwargs)


def test_instance_noise_annealing():
    assert annealed_sigma(0.2, 0, 7.0) == 0.2
    assert annealed_sigma(0.2, 4, 1.0) == pytest.approx(0.15)
    assert annealed_sigma(0.2, 4, 4.0) == 0.0 and annealed_sigma(0.2, 4, 9.0) == 0.0


def test_generator_objectives_and_historical_penalty():
    real, y = torch.randn(6, *SHAPE), torch.randint(K, (6,))
    gan = make_gan(generator_objective="feature_matching", feature_layer=0, feature_norm="l1")
    torch.manual_seed(1)
    loss = gan.generator_loss_on(real, y, 6)
    torch.manual_seed(1)
    fake, fake_y = gan._generate(6)
    expected = feature_matching_loss(
        gan.discriminate(fake, fake_y)[1][0], gan.discriminate(real, y)[1][0], norm="l1"
    )
    assert torch.allclose(loss, expected)

    gan = make_gan(historical_averaging=0.5, loss="hinge")
    with torch.no_grad():
        for p in gan.generator.parameters():
            p.add_(0.1)  # move away from the average, so the penalty is not 0
    torch.manual_seed(2)
    loss = gan.generator_loss_on(real, y, 6)
    torch.manual_seed(2)
    fake, fake_y = gan._generate(6)
    adversarial = generator_loss(gan(fake, fake_y), "hinge")
    penalty = HistoricalAverage(gan.generator)  # a fresh copy: same average, same formula
    penalty.load_state_dict(gan.g_history.state_dict())
    assert gan._history_penalty("g") > 0
    assert torch.allclose(loss, adversarial + 0.5 * penalty.penalty(gan.generator))


def test_update_ratio_and_ema(make_cfg):
    import lightning as L

    cfg = make_cfg(
        ["model=gan", "model.adversarial.d_steps_per_g_step=2", "model.adversarial.g_ema_decay=0.9"]
    )
    datamodule, model = build(cfg)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=4,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=datamodule)
    d_opt, g_opt = trainer.optimizers
    d_steps = {int(s["step"]) for s in d_opt.state.values()}
    g_steps = {int(s["step"]) for s in g_opt.state.values()}
    assert d_steps == {4} and g_steps == {2}  # G on batches 0 and 2
    assert int(model.g_ema.num_updates) == 2
    shadow = dict(model.g_ema.shadow.named_parameters())
    assert any(not torch.equal(p, shadow[n]) for n, p in model.generator.named_parameters())


def test_fast_dev_run_with_every_technique(make_cfg):
    metrics = train(
        make_cfg(
            [
                "model=gan",
                "debug=fdr",
                "model.conditional=false",
                "model.generator_objective=feature_matching",
                "model.regularizers.historical_averaging=0.1",
                "model.regularizers.real_target=0.9",
                "model.regularizers.instance_noise=0.1",
                "model.regularizers.instance_noise_anneal_epochs=2",
                "model.adversarial.g_ema_decay=0.99",
                "model.adversarial.g_steps_per_d_step=2",
                "model.discriminator.minibatch_discrimination=true",
                "model.discriminator.weight_norm=true",
                "model.generator.virtual_batch_norm=true",
                "model.adversarial.init_images=50",
            ]
        )
    )
    for key in ("train/d_loss", "train/g_loss", "gen/fid", "gen/is", "val/d_real"):
        assert np.isfinite(metrics[key]), key
    assert "gen/class_acc" not in metrics and "test/acc" not in metrics  # unconditional


def test_conditional_concat_spectral_norm_fast_dev_run(make_cfg):
    metrics = train(
        make_cfg(
            [
                "model=gan",
                "debug=fdr",
                "model.conditioning=concat",
                "model.loss=hinge",
                "model.discriminator.spectral_norm=true",
                "model/generator=dcgan",
                "model.generator.base_channels=8",
            ]
        )
    )
    assert_accuracy_is_the_confusion_trace(metrics, 360)
    # under fast_dev_run the evaluator is untrained: only that the metrics are produced
    assert {"gen/fid", "gen/class_acc", "gen/cas"} <= metrics.keys()


def test_gan_run_writes_metrics_and_samples(tiny_cgan_run):
    run, _ = tiny_cgan_run
    report = json.loads((run / "metrics.json").read_text())
    for key in ("gen/fid", "gen/kid", "gen/is", "gen/cas", "gen/class_acc", "gen/evaluator_acc"):
        assert isinstance(report[key], float), key
    assert report["gen/fid"] > 10 * report["gen/fid_real"] and 1.0 <= report["gen/is"] <= 10.0
    assert_accuracy_is_the_confusion_trace(report, 360)  # the projection D as a classifier
    grid = Image.open(run / "samples.png")
    # 10 classes x 10 columns of 8x8 digits enlarged to 32x32 with 2-pixel padding
    assert grid.size == (10 * 34 + 2, 10 * 34 + 2)
    assert (run / "samples_epoch001.png").is_file() and (run / "samples_epoch002.png").is_file()
    assert list((run / "csv").rglob("gen_samples_step*.png")), "samples not sent to the logger"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert report["epochs"] == 2


@pytest.mark.slow
def test_sample_cli_writes_png_and_npz(tiny_cgan_run, tmp_path):
    run, _ = tiny_cgan_run
    ckpt = run / "checkpoints" / "last.ckpt"
    module = load_module(ckpt)
    paths = write_samples(module, 12, tmp_path / "inproc", seed=3, labels=[1] * 12)
    arrays = np.load(paths["npz"])
    assert arrays["images"].shape == (12, 1, 8, 8) and arrays["images"].dtype == np.uint8
    assert (arrays["labels"] == 1).all()
    again = np.load(write_samples(module, 12, tmp_path / "again", seed=3, labels=1)["npz"])
    assert np.array_equal(arrays["images"], again["images"])  # seeded
    with pytest.raises(ConfigError):
        write_samples(module, 4, tmp_path / "bad", labels=[10] * 4)

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gendisc.sample",
            f"ckpt_path={ckpt}",
            "n=20",
            f"hydra.run.dir={tmp_path / 'cli'}",
            f"paths.data_dir={shared_data_dir()}",
        ],
        capture_output=True,
        text=True,
        env=single_thread_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    arrays = np.load(tmp_path / "cli" / "samples.npz")
    assert arrays["images"].shape == (20, 1, 8, 8)
    assert arrays["labels"].tolist() == [k % 10 for k in range(20)]
    assert Image.open(tmp_path / "cli" / "samples.png").size[0] > 0


def test_classifier_transfers_gan_discriminator(tiny_cgan_run, make_cfg):
    run, _ = tiny_cgan_run
    ckpt = run / "checkpoints" / "last.ckpt"
    _, model = build(make_cfg(["model=classifier", "model/net=mlp", f"model.init_from={ckpt}"]))
    source = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    report = model.transfer_report
    assert report.loaded and not report.missing and not report.shape_mismatch
    assert all(name.startswith("body.") for name in report.loaded)
    for name in report.loaded:
        assert torch.equal(model.net.state_dict()[name], source[f"discriminator.{name}"])


def test_samples_from_a_semi_supervised_gan(make_cfg, tmp_path):
    """Modules without ``sampler()`` (the SSL GAN) are sampled through their generator."""
    _, model = build(make_cfg(["model=ssl_gan"]))
    arrays = np.load(write_samples(model, 6, tmp_path, seed=1)["npz"])
    assert arrays["images"].shape == (6, 1, 8, 8) and (arrays["labels"] == -1).all()
    with pytest.raises(ConfigError, match="unconditional"):
        write_samples(model, 2, tmp_path, labels=[0, 1])
