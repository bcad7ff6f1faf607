"""experiment=study_augment: every arm's resolved settings, and its generators' labeled sets.

Composes the real configs only (no training): the realistic validation protocol, the augment
option, the model, the generator each augmented_classifier job loads, and the sweep that gives
every row in one command.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from gendisc.utils.config import register_resolvers
from tests.conftest import CONFIG_DIR

CLASSIFIER = "gendisc.models.classifier.ClassifierModule"
AUGMENTED = "gendisc.models.augmented_classifier.AugmentedClassifierModule"
SSL_GAN = "gendisc.models.ssl_gan.SSLGANModule"


def with_hydra(overrides: list[str]) -> DictConfig:
    """The composed config with its hydra node (sweep settings), as ``gendisc-train -m`` sees it."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    return cfg


def sweep_params(experiment: str) -> dict[str, list[str]]:
    """The experiment's sweeper params, each as its list of values."""
    cfg = with_hydra([f"experiment={experiment}"])
    return {
        k: [v.strip() for v in str(values).split(",")]
        for k, values in cfg.hydra.sweeper.params.items()
    }


def test_one_sweep_gives_every_arm_and_three_labeled_sets():
    params = sweep_params("study_augment")
    assert params == {
        "method": [
            "classifier",
            "classifier_translate",
            "augmented_classifier",
            "augmented_classifier_translate",
            "augmented_classifier_ssl_vae",
            "ssl_gan_labels_only",
            "ssl_gan_labels_only_translate",
            "ssl_gan",
            "ssl_gan_translate",
        ],
        "data.data_seed": ["0", "1", "2"],
    }
    # the generators: one per labeled set of the study
    assert sweep_params("study_augment_generators") == {
        "data.labels_per_class": ["10"],
        "data.data_seed": ["0", "1", "2"],
    }
    # MNIST: the classifier's four arms on the same protocol
    assert sweep_params("study_augment_mnist")["method"] == params["method"][:4]


@pytest.mark.parametrize(
    "experiment, dataset", [("study_augment", "digits"), ("study_augment_mnist", "mnist")]
)
@pytest.mark.parametrize(
    "method, target, max_shift",
    [
        ("classifier", CLASSIFIER, 0),
        ("classifier_translate", CLASSIFIER, 2),
        ("augmented_classifier", AUGMENTED, 0),
        ("augmented_classifier_translate", AUGMENTED, 2),
        ("ssl_gan", SSL_GAN, 0),
        ("ssl_gan_translate", SSL_GAN, 2),
    ],
)
def test_each_arm_resolves_to_the_realistic_protocol(
    make_cfg, experiment, dataset, method, target, max_shift
):
    cfg = make_cfg([f"experiment={experiment}", f"method={method}", "data.data_seed=2"])
    # 10 labels per class, validated on 10 more per class: no more validation labels than
    # training labels; the selected and the last checkpoint both tested
    assert cfg.data.dataset == dataset and cfg.data.labels_per_class == 10
    assert cfg.data.val_size is None and cfg.data.val_per_class == 10
    assert cfg.test_ckpt == "both" and cfg.optimized_metric == "val/acc"
    assert cfg.model._target_ == target
    assert cfg.trainer.max_epochs == (20 if dataset == "digits" else 10)
    assert cfg.augment.max_shift == max_shift and cfg.augment.rotate == 0.0
    assert not cfg.augment.flip and not cfg.augment.unlabeled
    if target == AUGMENTED:
        generator = Path(cfg.model.generator_ckpt)
        assert generator == (
            Path(cfg.paths.study_generators_dir)
            / dataset
            / "lpc10_vpc10_seed2"
            / "checkpoints"
            / "last.ckpt"
        )
        assert cfg.model.synthetic_ratio == 0.5


def labeled_and_validation(cfg) -> tuple[np.ndarray, np.ndarray]:
    datamodule = instantiate(cfg.data).load()
    return datamodule.split.labeled, datamodule.split.validation


@pytest.mark.parametrize("data_seed", [0, 1, 2])
def test_generators_train_on_the_labeled_set_of_the_study(make_cfg, data_seed):
    """Each augmented_classifier job loads a generator trained on its own labeled images (and
    nothing else labeled): those of experiment=study_generators at 10 labels per class."""
    seed = f"data.data_seed={data_seed}"
    study = make_cfg(
        ["experiment=study_augment", "method=augmented_classifier", seed], name="study"
    )
    generator = make_cfg(["experiment=study_augment_generators", seed], name="generator")
    assert generator.model.conditional and generator.trainer.max_epochs == 30
    labeled, validation = labeled_and_validation(study)
    generator_labeled, generator_validation = labeled_and_validation(generator)
    assert len(labeled) == 100 and len(validation) == 100
    assert np.array_equal(labeled, generator_labeled)
    assert np.array_equal(validation, generator_validation)
    # the run directory the generators' sweep gives that labeled set is the one the job reads
    sweep = with_hydra(["experiment=study_augment_generators", seed]).hydra.sweep
    job = with_hydra(["experiment=study_augment", "method=augmented_classifier", seed])
    assert sweep.subdir == f"digits/lpc10_vpc10_seed{data_seed}"
    assert Path(job.model.generator_ckpt) == Path(
        sweep.dir, sweep.subdir, "checkpoints", "last.ckpt"
    )
    # experiment=study_generators at 10 labels per class: the same labeled set, the same run
    shared = with_hydra(["experiment=study_generators", seed, "data.labels_per_class=10"]).hydra
    assert (shared.sweep.dir, shared.sweep.subdir) == (sweep.dir, sweep.subdir)


@pytest.mark.parametrize("data_seed", [0, 1, 2])
def test_ssl_vae_generators_train_on_the_labeled_set_of_the_study(make_cfg, data_seed):
    """The M2 each augmented_classifier_ssl_vae job samples from was trained on the job's
    labeled and validation split (and the unlabeled pool), in the directory the job reads."""
    seed = f"data.data_seed={data_seed}"
    study = make_cfg(
        ["experiment=study_augment", "method=augmented_classifier_ssl_vae", seed], name="study"
    )
    assert study.model._target_ == AUGMENTED and study.model.synthetic_ratio == 0.5
    generator = make_cfg(["experiment=study_ssl_vae_generators", seed], name="generator")
    assert generator.model._target_ == "gendisc.models.ssl_vae.SSLVAEModule"
    assert generator.trainer.max_epochs == 100
    labeled, validation = labeled_and_validation(study)
    generator_labeled, generator_validation = labeled_and_validation(generator)
    assert np.array_equal(labeled, generator_labeled)
    assert np.array_equal(validation, generator_validation)
    sweep = with_hydra(["experiment=study_ssl_vae_generators", seed]).hydra.sweep
    job = with_hydra(["experiment=study_augment", "method=augmented_classifier_ssl_vae", seed])
    assert sweep.subdir == f"digits/ssl_vae_lpc10_vpc10_seed{data_seed}"
    assert Path(job.model.generator_ckpt) == Path(
        sweep.dir, sweep.subdir, "checkpoints", "last.ckpt"
    )
