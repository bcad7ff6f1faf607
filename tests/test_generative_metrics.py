"""Generative metrics on the in-domain evaluator: FID/KID/IS/class accuracy/CAS, precision /
recall / density / coverage, the cache, image grids and the samples callback's pictures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from gendisc.callbacks.run_report import print_results_table
from gendisc.data.datamodule import FewLabelDataModule
from gendisc.errors import ConfigError
from gendisc.metrics import (
    EvaluatorConfig,
    feature_distances,
    inception_score,
    knn_radii,
    load_or_train_evaluator,
    prdc_from_features,
    precision_recall_density_coverage,
    score_samples,
)
from gendisc.metrics.generative import evaluate_images
from gendisc.utils.images import image_grid, save_png

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
        "gen/precision",
        "gen/recall",
        "gen/density",
        "gen/coverage",
        "gen/prdc_n",
        "gen/pr_k",
        "gen/dc_k",
    }
    # the test set against itself: both manifolds coincide
    assert metrics["gen/precision"] == metrics["gen/recall"] == metrics["gen/coverage"] == 1.0
    assert metrics["gen/prdc_n"] == 360 and (metrics["gen/pr_k"], metrics["gen/dc_k"]) == (3, 5)


# ----------------------------------------------------------- precision, recall, density, coverage
def _on_a_line(values: list[float]) -> torch.Tensor:
    """Points (v, 0) in the plane: distances are |v - w|."""
    return torch.tensor([[v, 0.0] for v in values], dtype=torch.float64)


def test_prdc_hand_computed_case():
    real, fake = _on_a_line([0, 1, 3, 7]), _on_a_line([0.5, 0.8, 14, 40])
    # nearest neighbours of 0, 1, 3, 7 among themselves: 1st at 1, 1, 2, 4; 2nd at 3, 2, 3, 6
    assert knn_radii(real, 1).tolist() == [1, 1, 2, 4]
    assert knn_radii(real, 2, chunk_size=3).tolist() == [3, 2, 3, 6]
    values = precision_recall_density_coverage(real, fake, pr_k=1, dc_k=2)
    # precision: real balls [-1, 1], [0, 2], [1, 5], [3, 11] hold 0.5 and 0.8, not 14 or 40
    # recall: fake radii 0.3, 0.3, 13.2, 26 -> balls [0.2, 0.8], [0.5, 1.1], [0.8, 27.2],
    #   [14, 66] hold 1, 3 and 7, not 0
    # density (k = 2): balls [-3, 3], [-1, 3], [0, 6], [1, 13]; 0.5 and 0.8 lie in the first
    #   three, 14 and 40 in none: 6 / (2 * 4); coverage: the first three balls hold a fake
    assert values == pytest.approx(
        {"precision": 0.5, "recall": 0.75, "density": 0.75, "coverage": 0.75}, abs=1e-12
    )


def _clusters(classes: list[int], n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` points, as many from each of the ``classes`` unit Gaussians whose centres lie 30
    apart on a circle (10 classes): one well separated mode per class."""
    angle = torch.arange(10, dtype=torch.float64) * 2 * math.pi / 10
    centres = 30 * torch.stack([angle.cos(), angle.sin()], dim=1)
    y = torch.tensor(classes).repeat(n // len(classes))
    return centres[y] + torch.randn(len(y), 2, generator=generator, dtype=torch.float64)


def test_prdc_identical_sets_and_chunking():
    features = torch.randn(300, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    values = precision_recall_density_coverage(features, features)
    assert values["precision"] == values["recall"] == values["coverage"] == 1.0
    # every ball holds its own centre and its k nearest neighbours: density = (k + 1) / k
    assert values["density"] == pytest.approx(6 / 5, abs=1e-12)
    other = features[:250] + 0.3 * torch.randn(250, 6, dtype=torch.float64)
    assert precision_recall_density_coverage(
        features, other, chunk_size=7
    ) == precision_recall_density_coverage(features, other)


def test_prdc_missing_half_the_classes_and_far_noise():
    generator = torch.Generator().manual_seed(0)
    real = _clusters(list(range(10)), 1000, generator)
    same = precision_recall_density_coverage(real, _clusters(list(range(10)), 1000, generator))
    half = precision_recall_density_coverage(real, _clusters([0, 1, 2, 3, 4], 1000, generator))
    assert min(same.values()) > 0.95 and same["density"] == pytest.approx(1.0, abs=0.05)
    # good samples of half the modes: precision stays, recall and coverage halve
    assert half["precision"] > 0.95
    assert half["recall"] == pytest.approx(0.5, abs=0.05)
    assert half["coverage"] == pytest.approx(0.5, abs=0.05)
    far = precision_recall_density_coverage(real, _clusters(list(range(10)), 1000, generator) + 100)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_on_evaluator_features_of_half_the_digits(digits, evaluator):
    """Training digits 0-4 against the test set: recall and coverage far below those of all
    training digits, precision as high."""
    net, _ = evaluator
    real, _ = evaluate_images(net, digits.test_images)
    train, _ = evaluate_images(net, digits.train_images)
    every = prdc_from_features(real, train, samples=360)
    half = prdc_from_features(real, train[digits.train_labels < 5], samples=360)
    assert every["prdc_n"] == half["prdc_n"] == 360  # subsets of the larger sets
    assert half["precision"] > every["precision"] - 0.05
    assert half["recall"] < every["recall"] - 0.15
    assert half["coverage"] < every["coverage"] - 0.2
    with pytest.raises(ConfigError, match="k=5 nearest neighbours"):
        prdc_from_features(real, train, samples=5)


def test_gan_run_writes_precision_recall_density_coverage(tiny_cgan_run):
    run, _ = tiny_cgan_run
    report = json.loads((run / "metrics.json").read_text())
    # real training images against the test set: near 1 (0.95, 0.96, 1.04, 0.98 measured);
    # the generator after 6 steps: far below (0.06, 0, 0.06, 0.06)
    for name in ("precision", "recall", "coverage"):
        assert report[f"gen/{name}_real"] > 0.8, name
        assert report[f"gen/{name}"] < report[f"gen/{name}_real"] - 0.3, name
    assert 0.7 < report["gen/density_real"] < 1.3
    assert report["gen/density"] < report["gen/density_real"] - 0.3
    # 200 samples against the 360 test images: 200 of each, k as in the papers
    assert (report["gen/prdc_n"], report["gen/pr_k"], report["gen/dc_k"]) == (200, 3, 5)


def test_the_results_table_shows_precision_recall_density_coverage(tiny_cgan_run, capsys):
    run, _ = tiny_cgan_run
    print_results_table(json.loads((run / "metrics.json").read_text()))
    table = capsys.readouterr().out
    for name in ("precision", "recall", "density", "coverage"):
        assert f"gen/{name} " in table, name


def test_image_grid_layout(tmp_path):
    images = torch.linspace(-1, 1, 6).view(6, 1, 1, 1).expand(6, 1, 28, 28)
    grid = image_grid(images, nrow=3, padding=2)
    assert grid.shape == (2 * 30 + 2, 3 * 30 + 2, 3) and grid.dtype == np.uint8
    assert (grid[2:30, 2:30] == 0).all() and (grid[32:60, 62:90] == 255).all()
    assert (grid[0, :] == 255).all()  # padding
    small = image_grid(torch.zeros(4, 3, 8, 8))  # 8x8 cells enlarged x4, square layout
    assert small.shape == (2 * 34 + 2, 2 * 34 + 2, 3)
    path = save_png(small, tmp_path / "sub" / "grid.png")
    assert path.stat().st_size > 0
