"""The joint semi-supervised GAN: losses by hand, label protocol, switches, end-to-end runs."""

from __future__ import annotations

import math

import pytest
import torch
from lightning import Callback

from gendisc.losses import ssl_supervised_loss, ssl_unsupervised_loss
from gendisc.models.ssl_gan import SSLGANModule
from gendisc.train import train
from gendisc.utils.build import build
from gendisc.utils.config import PROJECT_ROOT
from tests.conftest import assert_accuracy_is_the_confusion_trace

TINY = ["trainer.max_epochs=2", "trainer.limit_train_batches=3", "data.val_size=100"]


def test_ssl_losses_on_a_hand_computed_example():
    # K = 2. x_lab logits (0, 0), label 0: p(y|x) = 1/2 -> L_lab = log 2.
    assert ssl_supervised_loss(torch.zeros(1, 2), torch.tensor([0])).item() == pytest.approx(
        math.log(2)
    )
    # x_unl logits (0, 0): Z = 2, D = 2/3; G(z) logits (log 0.5, log 0.5): Z = 1, D = 1/2.
    # L_unl = -1/2 [log D(x_unl) + log(1 - D(G(z)))] = -1/2 [log(2/3) + log(1/2)]
    unl = torch.zeros(1, 2)
    fake = torch.full((1, 2), math.log(0.5))
    expected = -0.5 * (math.log(2 / 3) + math.log(1 / 2))
    assert ssl_unsupervised_loss(unl, fake).item() == pytest.approx(expected, abs=1e-6)


def test_default_main_job_is_the_joint_module_on_digits(make_cfg):
    cfg = make_cfg()
    assert cfg.model._target_.endswith("SSLGANModule")
    assert cfg.data.dataset == "digits" and cfg.data.labels_per_class == 10


class RecordLabeled(Callback):
    """Keeps every labeled image and label the module trains on."""

    def __init__(self) -> None:
        self.images: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.keys: set[str] = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.images.append(batch["x"].clone())
        self.labels.append(batch["y"].clone())
        self.keys |= set(batch)


def test_labeled_images_never_exceed_the_protocol(make_cfg):
    cfg = make_cfg([*TINY, "data.labels_per_class=3", "test=false"])
    datamodule, model = build(cfg)
    recorder = RecordLabeled()
    import lightning as L

    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=0,
        callbacks=[recorder],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        use_distributed_sampler=False,
    )
    trainer.fit(model, datamodule=datamodule)
    allowed = {bytes(img.numpy()) for img in datamodule.train_images[datamodule.labeled_index]}
    seen = torch.cat(recorder.images)
    seen_uint8 = ((seen + 1) * 127.5).round().to(torch.uint8)
    assert {bytes(img.numpy()) for img in seen_uint8} <= allowed
    assert len({bytes(img.numpy()) for img in seen_uint8}) == 30  # every labeled image used
    # feature matching takes the real statistics from a second unlabeled batch
    assert recorder.keys == {"x", "y", "x_unl", "x_unl2"}


def test_same_labeled_set_for_joint_module_and_baseline(make_cfg):
    joint, _ = build(make_cfg(["model=ssl_gan", "seed=3"]))
    baseline, _ = build(make_cfg(["model=classifier", "seed=4"]))
    assert torch.equal(joint.labeled_index, baseline.labeled_index)


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["model.generator_objective=minimax", "model.adversarial.g_steps_per_d_step=2"],
        ["model.generator_objective=non_saturating", "model.adversarial.d_ema_decay=null"],
        ["model.discriminator.minibatch_discrimination=true", "model.adversarial.feature_layer=-2"],
        [
            "model.unlabeled_weight=0.5",
            "model.adversarial.feature_norm=l1",
            "model.adversarial.init_images=0",
        ],
    ],
    ids=["default", "minimax", "nonsat_no_ema", "mbd", "weights"],
)
def test_switches_train_end_to_end(make_cfg, overrides):
    metrics = train(make_cfg([*TINY, *overrides]))
    # a learning signal: 6 steps give 0.72 to 0.78 test accuracy on CPU (chance: 0.1)
    assert metrics["test/acc"] > 0.4 and metrics["val/acc_best"] >= metrics["val/acc"]
    assert math.isfinite(metrics["train/d_loss"]) and math.isfinite(metrics["train/g_loss"])
    # with the EMA evaluated, the raw discriminator's validation accuracy is logged beside it
    assert ("val/acc_raw" in metrics) == ("model.adversarial.d_ema_decay=null" not in overrides)


def test_minibatch_discrimination_widens_the_head(make_cfg):
    _, plain = build(make_cfg())
    _, mbd = build(make_cfg(["model.discriminator.minibatch_discrimination=true"]))
    assert (
        mbd.discriminator.minibatch_disc is not None and plain.discriminator.minibatch_disc is None
    )
    assert mbd.discriminator.head.in_features > plain.discriminator.head.in_features
    assert plain.unlabeled_streams == 2
    _, minimax = build(make_cfg(["model.generator_objective=minimax"]))
    assert minimax.unlabeled_streams == 1


@pytest.mark.parametrize(
    ("overrides", "keys"),
    [
        ([], {"x", "y", "x_unl", "x_unl2"}),  # feature matching: one more unlabeled batch for G
        (["model.generator_objective=minimax"], {"x", "y", "x_unl"}),
        (["model=classifier"], {"x", "y"}),
    ],
)
def test_build_serves_the_unlabeled_streams_the_model_asks_for(make_cfg, overrides, keys):
    """The datamodule gets the stream count from build(), not from the trainer's module."""
    datamodule, model = build(make_cfg(overrides))
    assert datamodule.unlabeled_streams == model.unlabeled_streams
    assert set(next(iter(datamodule.train_dataloader()))) == keys


def test_evaluation_uses_the_ema_discriminator(make_cfg):
    _, model = build(make_cfg())
    assert isinstance(model, SSLGANModule) and model.d_ema is not None
    with torch.no_grad():
        for parameter in model.d_ema.shadow.parameters():
            parameter.add_(1.0)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    model.eval()
    assert not torch.allclose(model.classify(x), model(x))
    assert torch.allclose(model.classify(x), model.d_ema.shadow(x))


def test_data_dependent_init_runs_at_fit_start(make_cfg):
    import lightning as L

    from gendisc.nets.layers import WeightNormLinear

    datamodule, model = build(make_cfg())
    layers = [m for m in model.discriminator.modules() if isinstance(m, WeightNormLinear)]
    assert layers and not any(bool(layer.initialized) for layer in layers)
    trainer = L.Trainer(
        fast_dev_run=True, logger=False, enable_progress_bar=False, use_distributed_sampler=False
    )
    trainer.fit(model, datamodule=datamodule)
    assert all(bool(layer.initialized) for layer in layers)
    assert int(model.d_ema.num_updates) == 1


def test_without_data_init_the_scales_stay_one(make_cfg):
    """ablation=no_data_init: g = 1, b = 0 at the start, not a lazy init on the first batch."""
    import lightning as L

    from gendisc.nets.layers import WeightNormLinear

    datamodule, model = build(make_cfg(["ablation=no_data_init"]))
    assert model.init_images == 0
    frozen = [
        m
        for m in model.discriminator.modules()
        if isinstance(m, WeightNormLinear) and not m.g.requires_grad
    ]
    assert frozen  # the hidden layers' scales are not trained: they must stay at 1
    trainer = L.Trainer(
        fast_dev_run=True, logger=False, enable_progress_bar=False, use_distributed_sampler=False
    )
    trainer.fit(model, datamodule=datamodule)
    assert all(torch.equal(layer.g, torch.ones_like(layer.g)) for layer in frozen)


ABLATIONS = sorted(p.stem for p in (PROJECT_ROOT / "conf" / "ablation").glob("*.yaml"))


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_every_ablation_runs_fast_dev_run(make_cfg, ablation):
    cfg = make_cfg([f"ablation={ablation}", "debug=fdr"])
    metrics = train(cfg)
    assert_accuracy_is_the_confusion_trace(metrics, 360)  # one batch: the whole test set


def test_restored_weights_are_not_reinitialised_on_resume(make_cfg):
    import lightning as L

    datamodule, model = build(make_cfg())
    trainer = L.Trainer(
        fast_dev_run=True, logger=False, enable_progress_bar=False, use_distributed_sampler=False
    )
    trainer.fit(model, datamodule=datamodule)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    _, fresh = build(make_cfg())
    fresh.load_state_dict(state)
    resumed = L.Trainer(logger=False, enable_progress_bar=False)  # global_step 0, as in a resume
    resumed.strategy.connect(fresh)
    fresh.trainer = resumed
    fresh.on_fit_start()
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key
