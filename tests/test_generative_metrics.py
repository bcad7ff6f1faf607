"""Generative metrics on the in-domain evaluator: FID/KID/IS/class accuracy/CAS, the cache,
image grids and the samples callback's pictures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gendisc.data.datamodule import FewLabelDataModule
from gendisc.metrics.generative import (
    EvaluatorConfig,
    feature_distances,
    inception_score,
    load_or_train_evaluator,
    score_samples,
)
from gendisc.utils.images import make_grid, save_png

CONFIG = EvaluatorConfig(channels=(8, 16), epochs=0, min_steps=60)


@pytest.fixture(scope="module")
def digits() -> FewLabelDataModule:
    return FewLabelDataModule("digits", labels_per_class=None, val_size=100).load()


@pytest.fixture(scope="module")
def evaluator(digits, tmp_path_factory):
    cache = tmp_path_factory.mktemp("evaluators")
    return load_or_train_evaluator(
        "digits",
        digits.train_images,
        digits.train_labels,
        digits.test_images,
        digits.test_labels,
        10,
        CONFIG,
        cache,
    ), cache


def test_evaluator_is_cached_with_its_accuracy(digits, evaluator):
    net, cache = evaluator
    assert net.test_acc > 0.5  # 60 steps on 8x8 digits
    stored = list(cache.glob("digits-*.json"))
    assert len(stored) == 1 and len(list(cache.glob("digits-*.pt"))) == 1
    assert json.loads(stored[0].read_text())["test_acc"] == pytest.approx(net.test_acc)
    again = load_or_train_evaluator(
        "digits",
        digits.train_images,
        digits.train_labels,
        digits.test_images,
        digits.test_labels,
        10,
        CONFIG,
        cache,
    )
    assert again.info["train_seconds"] == net.info["train_seconds"]  # read, not retrained
    for a, b in zip(again.parameters(), net.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not any(p.requires_grad for p in again.parameters()) and not again.training


def test_fid_is_zero_for_identical_sets_and_large_for_noise(digits, evaluator):
    net, _ = evaluator
    torch.manual_seed(0)  # KID draws its subsets from the global random state
    real = digits.test_images
    same = feature_distances(net, real, real, kid_subsets=10, kid_subset_size=360)
    reference = feature_distances(
        net, real, digits.train_images[:360], kid_subsets=10, kid_subset_size=360
    )
    generator = torch.Generator().manual_seed(0)
    flat = real.flatten(1)
    shuffled = torch.stack([row[torch.randperm(64, generator=generator)] for row in flat])
    noise = feature_distances(
        net, real, shuffled.view_as(real), kid_subsets=10, kid_subset_size=360
    )
    assert abs(same["fid"]) < 1e-6
    assert noise["fid"] > 10 * reference["fid"] > 0
    # KID is unbiased: about 0 for two samples of one distribution, large for noise
    assert abs(same["kid"]) < 0.05 * noise["kid"] and abs(reference["kid"]) < 0.1 * noise["kid"]


def test_inception_score_formula():
    assert inception_score(torch.full((8, 4), 0.25)) == pytest.approx(1.0)
    one_hot = torch.eye(4).repeat(3, 1)  # confident and balanced: exp(log K) = K
    assert inception_score(one_hot) == pytest.approx(4.0, rel=1e-6)
    assert inception_score(one_hot, splits=3) == pytest.approx(4.0, rel=1e-6)
    probs = torch.softmax(torch.randn(10, 3), dim=1)
    marginal = probs.mean(0)
    expected = torch.exp((probs * (probs.log() - marginal.log())).sum(1).mean())
    assert inception_score(probs) == pytest.approx(expected.item(), rel=1e-5)


def test_real_images_scored_as_samples(digits, evaluator):
    """Real test images with their labels: class accuracy = the evaluator's accuracy, and a
    CAS classifier trained on real training images reaches a real accuracy."""
    net, _ = evaluator
    scores = score_samples(
        net,
        digits.test_images,
        digits.test_labels,
        digits.test_images,
        digits.test_labels,
        10,
        is_splits=1,
        kid_subsets=5,
        kid_subset_size=100,
        cas_images=digits.train_images,
        cas_labels=digits.train_labels,
        cas_config=CONFIG,
    )
    assert scores.class_acc == pytest.approx(net.test_acc, abs=1e-6)
    assert abs(scores.fid) < 1e-3 and scores.cas > 0.5
    metrics = scores.as_metrics()
    assert set(metrics) == {
        "gen/fid",
        "gen/kid",
        "gen/kid_std",
        "gen/is",
        "gen/class_acc",
        "gen/cas",
    }


def test_make_grid_layout(tmp_path):
    images = torch.linspace(-1, 1, 6).view(6, 1, 1, 1).expand(6, 1, 28, 28)
    grid = make_grid(images, nrow=3, padding=2)
    assert grid.shape == (2 * 30 + 2, 3 * 30 + 2, 3) and grid.dtype == np.uint8
    assert (grid[2:30, 2:30] == 0).all() and (grid[32:60, 62:90] == 255).all()
    assert (grid[0, :] == 255).all()  # padding
    small = make_grid(torch.zeros(4, 3, 8, 8))  # 8x8 cells enlarged x4, square layout
    assert small.shape == (2 * 34 + 2, 2 * 34 + 2, 3)
    path = save_png(small, tmp_path / "sub" / "grid.png")
    assert path.stat().st_size > 0
