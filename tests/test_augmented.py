"""The classifier trained on real + synthetic batches, and the two-stage pipeline."""

from __future__ import annotations

import json

import hydra
import pytest
import torch
import torch.nn.functional as F
from omegaconf import open_dict

from gendisc.errors import ConfigError
from gendisc.models.augmented_classifier import AugmentedClassifierModule, synthetic_count
from gendisc.models.classifier import ClassifierModule
from gendisc.pipelines.two_stage import generator_overrides, run_two_stage
from gendisc.train import train
from gendisc.utils.build import build
from tests.conftest import (
    TINY_GENERATIVE,
    assert_accuracy_is_the_confusion_trace,
    generative_test_overrides,
)


def test_synthetic_count():
    assert synthetic_count(100, 0.0) == 0
    assert synthetic_count(100, 0.5) == 100
    assert synthetic_count(100, 0.2) == 25  # 25 / (100 + 25) = 0.2
    assert synthetic_count(3, 0.01) == 1


def _augmented(make_cfg, ckpt, *overrides):
    return build(
        make_cfg(
            [
                "model=augmented_classifier",
                f"model.generator_ckpt={ckpt}",
                "data.val_size=100",
                *overrides,
            ]
        )
    )


class _Recorder(torch.nn.Module):
    """Wraps the classifier net and records the batches it sees."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.seen = net, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.net(x)


@pytest.mark.parametrize("threshold", [None, 0.0, 1.0])
def test_training_step_mixes_and_filters(tiny_cgan_run, make_cfg, threshold):
    run, _ = tiny_cgan_run
    extra = [] if threshold is None else [f"model.filter_threshold={threshold}"]
    datamodule, model = _augmented(
        make_cfg, run / "checkpoints" / "last.ckpt", "model.synthetic_ratio=0.2", *extra
    )
    assert isinstance(model, ClassifierModule)
    model.synthetic = model.load_generator()
    model.net = _Recorder(model.net)
    model.eval()  # deterministic net: the loss can be recomputed
    model.log = model.log_dict = lambda *args, **kwargs: None
    batch = next(iter(datamodule.train_dataloader()))
    torch.manual_seed(0)
    loss = model.training_step(batch, 0)
    seen = model.net.seen[0]
    n = len(batch["y"])
    assert seen.shape[0] == n + 25 and torch.equal(seen[:n], batch["x"])
    assert seen[n:].min() >= -1 and seen[n:].max() <= 1
    torch.manual_seed(0)
    y_syn = torch.randint(10, (25,))
    logits = model.net.net(seen)
    real = F.cross_entropy(logits[:n], batch["y"], reduction="sum")
    synthetic = F.cross_entropy(logits[n:], y_syn, reduction="sum")
    if threshold == 1.0:  # nothing is that confident: the real loss alone
        assert torch.allclose(loss, real / n, atol=1e-5)
    else:
        assert torch.allclose(loss, (real + synthetic) / (n + 25), atol=1e-5)


def test_generator_is_not_saved_and_ratio_zero_is_the_classifier(tiny_cgan_run, make_cfg):
    run, _ = tiny_cgan_run
    _, model = _augmented(make_cfg, run / "checkpoints" / "last.ckpt")
    model.synthetic = model.load_generator()
    assert all(key.startswith(("net.", "val_", "test_")) for key in model.state_dict())
    _, baseline = _augmented(make_cfg, "null", "model.synthetic_ratio=0")
    baseline.on_fit_start()
    assert baseline.synthetic is None


def test_bad_generator_checkpoints(make_cfg, tmp_path):
    _, model = _augmented(make_cfg, "null")
    with pytest.raises(ConfigError, match="generator_ckpt"):
        model.load_generator()
    classifier = train(
        make_cfg(["model=classifier", *TINY_GENERATIVE, "trainer.max_epochs=1"], name="clf")
    )
    assert classifier["epochs"] == 1
    _, model = _augmented(make_cfg, tmp_path / "clf" / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match="no generator"):
        model.load_generator()
    with pytest.raises(ConfigError):
        AugmentedClassifierModule(
            net=lambda **kw: torch.nn.Linear(1, 1),
            optimizer=torch.optim.Adam,
            in_shape=(1, 8, 8),
            num_classes=10,
            synthetic_ratio=1.0,
        )


@pytest.mark.parametrize(("threshold", "kept"), [(0.0, 1.0), (1.0, 0.0)])
def test_fast_dev_run_with_a_vae_generator(tiny_cvae_run, make_cfg, threshold, kept):
    """Every synthetic image passes threshold 0; none passes 1 (no probability of the
    untrained classifier reaches 1)."""
    run, _ = tiny_cvae_run
    metrics = train(
        make_cfg(
            [
                "model=augmented_classifier",
                f"model.generator_ckpt={run / 'checkpoints' / 'last.ckpt'}",
                f"model.filter_threshold={threshold}",
                "debug=fdr",
            ]
        )
    )
    assert metrics["train/synthetic_kept"] == kept
    assert_accuracy_is_the_confusion_trace(metrics, 360)


def test_the_generator_stage_gets_the_classifiers_labels_and_validation(make_cfg):
    """With data.val_per_class the generator learns from the classifier's labeled images and
    never sees its validation images as labeled ones."""
    overrides = [
        "experiment=augment_digits",
        "data.labels_per_class=3",
        "data.val_size=null",
        "data.val_per_class=5",
        "data.data_seed=2",
    ]
    stage1 = generator_overrides(make_cfg(overrides), overrides)
    assert stage1[-4:] == [
        "data.labels_per_class=3",
        "data.val_size=null",
        "data.val_per_class=5",
        "data.data_seed=2",
    ]
    classifier = hydra.utils.instantiate(make_cfg(overrides).data).load()
    generator = hydra.utils.instantiate(make_cfg(stage1, name="stage1").data).load()
    assert torch.equal(generator.labeled_index, classifier.labeled_index)
    assert len(generator.labeled_index) == 30 and len(generator.val_labels) == 50
    assert torch.equal(generator.val_images, classifier.val_images)


def test_the_generator_stage_gets_the_classifiers_default_validation_spelled_out(make_cfg):
    """Neither validation option set: stage 1 is told the classifier's default (labels per class
    images per class; with all labels the data config's all_labels_val_size), so a generator
    experiment that sets its own validation cannot give it other labeled images."""
    overrides = ["experiment=augment_digits", "data.labels_per_class=3", "data.data_seed=1"]
    stage1 = generator_overrides(make_cfg(overrides), overrides)
    assert stage1[-4:] == [
        "data.labels_per_class=3",
        "data.val_size=null",
        "data.val_per_class=3",
        "data.data_seed=1",
    ]
    classifier = hydra.utils.instantiate(make_cfg(overrides).data).load()
    generator = hydra.utils.instantiate(make_cfg(stage1, name="stage1").data).load()
    assert torch.equal(generator.labeled_index, classifier.labeled_index)
    assert torch.equal(generator.val_images, classifier.val_images)
    assert len(classifier.val_labels) == 30 == len(classifier.labeled_index)
    everything = ["experiment=augment_digits", "data.labels_per_class=null"]
    assert generator_overrides(make_cfg(everything, name="all"), everything)[-3:-1] == [
        "data.val_size=200",
        "data.val_per_class=null",
    ]
    # a generator experiment that pins its own validation (ssl_vae_digits: val_size 200) gets
    # the classifier's instead
    ssl_vae = ["experiment=ssl_vae_augment_digits"]
    stage1 = generator_overrides(make_cfg(ssl_vae, name="ssl_vae"), ssl_vae)
    assert stage1[0] == "experiment=ssl_vae_digits"
    generator_cfg = make_cfg(stage1, name="ssl_vae_stage1")
    assert (generator_cfg.data.val_size, generator_cfg.data.val_per_class) == (None, 10)


def test_two_stage_pipeline(make_cfg, generative_cache, tmp_path):
    tiny = generative_test_overrides(generative_cache)
    stage1_only = [o for o in tiny if o.startswith(("callbacks.generative", "callbacks.samples"))]
    overrides = [
        "experiment=augment_digits",
        *TINY_GENERATIVE,
        "trainer.max_epochs=1",
        "data.data_seed=3",
        *[o for o in tiny if o not in stage1_only],
    ]
    cfg = make_cfg(overrides)
    with open_dict(cfg):
        cfg.two_stage.generator = [*cfg.two_stage.generator, *stage1_only]
    stage1 = generator_overrides(cfg, overrides)
    assert stage1[0] == "experiment=cgan_digits" and "experiment=augment_digits" not in stage1
    assert stage1[-4:] == [
        "data.labels_per_class=10",
        "data.val_size=100",
        "data.val_per_class=null",
        "data.data_seed=3",
    ]
    result = run_two_stage(cfg, overrides, tmp_path / "pipeline")
    root = tmp_path / "pipeline"
    for stage in ("stage1_generator", "stage2_classifier", "baseline_classifier"):
        assert (root / stage / "metrics.json").is_file(), stage
    generator = json.loads((root / "stage1_generator" / "metrics.json").read_text())
    assert generator["data/labeled"] == 100 and generator["data_seed"] == 3
    assert "gen/fid" in generator and "gen/cas" in generator
    assert result["generator_ckpt"].startswith(str(root / "stage1_generator" / "checkpoints"))
    stage2 = json.loads((root / "stage2_classifier" / "metrics.json").read_text())
    baseline = json.loads((root / "baseline_classifier" / "metrics.json").read_text())
    assert stage2["data_seed"] == baseline["data_seed"] == 3
    assert result["test_acc_gain"] == pytest.approx(stage2["test/acc"] - baseline["test/acc"])
    saved = json.loads((root / "two_stage.json").read_text())
    assert "model.synthetic_ratio=0" in saved["overrides"]["baseline_classifier"]
    assert "train/synthetic_kept" in saved["stage2_classifier"]
    assert "train/synthetic_kept" not in saved["baseline_classifier"]


def test_pipeline_needs_a_two_stage_experiment(make_cfg, tmp_path):
    cfg = make_cfg(["model=classifier"])
    with pytest.raises(ConfigError, match="two_stage"):
        run_two_stage(cfg, ["model=classifier"], tmp_path)
