"""The studies' protocol: method arms (conf/method/), realistic validation, both checkpoints.

Composes the real configs (arms, sweeps) and runs real tiny trainings (``test_ckpt=both``).
"""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from gendisc.errors import ConfigError
from gendisc.train import train
from gendisc.utils.config import register_resolvers
from tests.conftest import CONFIG_DIR, requires_mnist

MODELS = "gendisc.models."
# method -> (model class, net class of the classifier, augment.max_shift, unlabeled_weight)
ARMS = {
    "classifier": ("classifier.ClassifierModule", "ConvNet", 0, None),
    "classifier_translate": ("classifier.ClassifierModule", "ConvNet", 2, None),
    "augmented_classifier": ("augmented_classifier.AugmentedClassifierModule", "ConvNet", 0, None),
    "augmented_classifier_translate": (
        "augmented_classifier.AugmentedClassifierModule",
        "ConvNet",
        2,
        None,
    ),
    "ssl_gan": ("ssl_gan.SSLGANModule", "SalimansMLPDiscriminator", 0, 1.0),
    "ssl_gan_translate": ("ssl_gan.SSLGANModule", "SalimansMLPDiscriminator", 2, 1.0),
    "ssl_gan_labels_only": ("ssl_gan.SSLGANModule", "SalimansMLPDiscriminator", 0, 0.0),
    "ssl_gan_labels_only_translate": ("ssl_gan.SSLGANModule", "SalimansMLPDiscriminator", 2, 0.0),
    "ssl_vae": ("ssl_vae.SSLVAEModule", "MLPClassifier", 0, None),
    "fixmatch": ("fixmatch.FixMatchModule", "ConvNet", 0, None),
    "bad_gan": ("ssl_gan.SSLGANModule", "SalimansMLPDiscriminator", 0, 1.0),
    "ssl_vae_labels_only": ("classifier.ClassifierModule", "MLPClassifier", 0, None),
    "ssl_vae_labels_only_translate": ("classifier.ClassifierModule", "MLPClassifier", 2, None),
}


def with_hydra(overrides: list[str]) -> DictConfig:
    """The composed config with its hydra node, as ``gendisc-train -m`` sees it."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    return cfg


def classifier_net(cfg: DictConfig) -> str:
    model = cfg.model
    net = model.get("net") or model.get("discriminator") or model.get("classifier")
    return str(net._target_).rsplit(".", 1)[-1]


def sweep_values(cfg: DictConfig, key: str) -> list[str]:
    return [v.strip() for v in str(cfg.hydra.sweeper.params[key]).split(",")]


@pytest.mark.parametrize("method", sorted(ARMS))
def test_each_method_is_its_model_augmentation_and_baseline_switch(method):
    cfg = with_hydra(["experiment=study_label_budget", f"method={method}"])
    target, net, shift, weight = ARMS[method]
    assert cfg.model._target_ == MODELS + target
    assert classifier_net(cfg) == net
    assert cfg.augment.max_shift == shift
    assert cfg.model.get("unlabeled_weight") == weight
    if method.startswith("ssl_vae"):  # the baseline keeps M2's classifier, optimiser, schedule
        assert cfg.trainer.max_epochs == 100
        m2 = with_hydra(["experiment=study_label_budget", "method=ssl_vae"]).model
        if method != "ssl_vae":
            assert cfg.model.net == m2.classifier
            assert cfg.model.optimizer._target_ == m2.optimizer._target_ == "torch.optim.Adam"
            assert cfg.model.optimizer.lr == m2.optimizer.lr
            assert cfg.model.optimizer.weight_decay == 0 and cfg.model.scheduler is None
    else:
        assert cfg.trainer.max_epochs == 20


def test_fixmatch_and_bad_gan_train_their_baselines_nets_alike():
    """Like for like: FixMatch has the classifier's net, optimiser and schedule; Bad GAN has
    ssl_gan's D, optimiser and loop (ssl_gan_labels_only is its labels-only baseline)."""
    study = ["experiment=study_label_budget"]
    fixmatch = with_hydra([*study, "method=fixmatch"]).model
    classifier = with_hydra([*study, "method=classifier"]).model
    for key in ("net", "optimizer", "scheduler"):
        assert fixmatch[key] == classifier[key], key
    bad_gan = with_hydra([*study, "method=bad_gan"]).model
    baseline = with_hydra([*study, "method=ssl_gan_labels_only"]).model
    for key in ("discriminator", "d_optimizer", "adversarial"):
        assert bad_gan[key] == baseline[key], key
    assert bad_gan.bad_gan.conditional_entropy == 0.1 and bad_gan.bad_gan.pull_away == 0.8


@pytest.mark.parametrize("labels", ["1", "10", "null"])
def test_label_budget_validation_is_no_larger_than_the_labeled_set(labels):
    cfg = with_hydra(["experiment=study_label_budget", f"data.labels_per_class={labels}"])
    assert cfg.data.val_size is None
    expected = 20 if labels == "null" else int(labels)  # all labels: 200 of 1437 validate
    assert cfg.data.val_per_class == expected
    assert cfg.test_ckpt == "both"
    ckpt = cfg.study_generator_ckpt
    assert f"lpc{cfg.data.labels_per_class}_vpc{expected}_seed0" in ckpt
    # the generators' sweep writes exactly there
    generators = with_hydra(["experiment=study_generators", f"data.labels_per_class={labels}"])
    subdir = generators.hydra.sweep.subdir
    assert ckpt.startswith(f"{generators.hydra.sweep.dir}/{subdir}/")
    assert generators.data.val_per_class == expected and generators.data.val_size is None


def test_label_budget_sweep_has_every_baseline_beside_the_generative_methods():
    cfg = with_hydra(["experiment=study_label_budget"])
    methods = set(sweep_values(cfg, "method"))
    baselines = {"classifier", "ssl_gan_labels_only", "ssl_vae_labels_only"}
    assert baselines | {b + "_translate" for b in baselines} <= methods
    assert {"ssl_gan", "ssl_vae", "augmented_classifier", "fixmatch", "bad_gan"} <= methods
    assert sweep_values(cfg, "data.labels_per_class") == ["1", "2", "5", "10", "20", "null"]
    assert sweep_values(cfg, "data.data_seed") == ["0", "1", "2"]


TINY = ["trainer.max_epochs=3", "trainer.limit_train_batches=2"]


def test_test_ckpt_both_reports_the_selected_and_the_last_checkpoint(make_cfg, tmp_path):
    both = train(make_cfg(["model=classifier", *TINY, "test_ckpt=both"], name="both"))
    last = train(make_cfg(["model=classifier", *TINY, "test_ckpt=last"], name="last"))
    best = train(make_cfg(["model=classifier", *TINY, "test_ckpt=best"], name="best"))
    # the same training, tested twice: test/* is the selected checkpoint, test_last/* the last
    assert both["test/acc"] == pytest.approx(best["test/acc"])
    assert both["test_last/acc"] == pytest.approx(last["test/acc"])
    assert both["test_last/loss"] == pytest.approx(last["test/loss"])
    written = json.loads((tmp_path / "both" / "metrics.json").read_text())
    assert written["test/acc"] == pytest.approx(best["test/acc"])
    assert written["test_last/acc"] == pytest.approx(last["test/acc"])
    assert "test_last/acc" not in best and "test_last/acc" not in last


def test_unknown_test_ckpt_is_refused(make_cfg):
    with pytest.raises(ConfigError, match="test_ckpt=newest"):
        train(make_cfg(["model=classifier", *TINY, "test_ckpt=newest"], name="bad"))


@pytest.mark.parametrize(
    "experiment",
    [
        "study_label_budget",
        "study_minibatch",
        "study_augment",
        "study_augment_mnist",
        "study_salimans_ablation",
        "study_mnist100",
    ],
)
def test_every_study_validates_on_no_more_labels_than_it_trains_on(experiment):
    cfg = with_hydra([f"experiment={experiment}"])
    assert cfg.data.val_size is None
    assert cfg.data.val_per_class <= cfg.data.labels_per_class
    assert cfg.test_ckpt == "both"


MNIST100 = ["experiment=study_mnist100"]


def test_mnist100_trains_every_method_alike_beside_its_same_net_baseline():
    """Equal budget: one epoch count, labeled set, validation and batch for every arm; FixMatch
    on ssl_gan's D net with the classifier's optimiser; each baseline the net of its method."""
    sweep = with_hydra(MNIST100)
    methods = sweep_values(sweep, "method")
    assert {"ssl_gan", "bad_gan", "fixmatch_salimans_mlp", "ssl_vae"} <= set(methods)
    assert sweep_values(sweep, "data.data_seed") == ["0", "1", "2"]
    cfgs = {m: with_hydra([*MNIST100, f"method={m}"]) for m in methods}
    for method, cfg in cfgs.items():
        assert cfg.trainer.max_epochs == sweep.trainer.max_epochs == 10, method
        assert (cfg.data.dataset, cfg.data.labels_per_class, cfg.data.val_per_class) == (
            "mnist",
            10,
            10,
        )
        assert cfg.data.val_size is None and cfg.test_ckpt == "both"
        assert cfg.data.batch_size == cfg.data.unlabeled_batch_size == 100
        assert cfg.callbacks.generative_metrics.enabled is False
    models = {m: c.model for m, c in cfgs.items()}
    d_net = models["ssl_gan"].discriminator
    assert models["fixmatch_salimans_mlp"].net == models["classifier_salimans_mlp"].net == d_net
    assert models["bad_gan"].discriminator == models["ssl_gan_labels_only"].discriminator == d_net
    assert models["ssl_vae_labels_only"].net == models["ssl_vae"].classifier
    for key in ("optimizer", "scheduler"):
        assert models["fixmatch_salimans_mlp"][key] == models["classifier_salimans_mlp"][key]
    assert models["fixmatch_salimans_mlp"].scheduler.T_max == 10
    assert models["ssl_gan_labels_only"].unlabeled_weight == 0.0


@requires_mnist
@pytest.mark.parametrize("method", ["fixmatch_salimans_mlp", "classifier_salimans_mlp"])
def test_mnist100_arm_trains_and_tests_both_checkpoints(make_cfg, method):
    metrics = train(make_cfg([*MNIST100, f"method={method}", *TINY], name=method))
    for key in ("test/acc", "test_last/acc"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["data/labeled"] == 100 and metrics["data/val"] == 100
