"""FixMatch: the masked pseudo-label loss against a hand-computed case, which view gets the
gradient, the strong augmentation, and real training runs on digits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gendisc.data.augment import RandAugmentCutout, cutout
from gendisc.errors import ConfigError, gendisc_cause
from gendisc.losses import fixmatch_unlabeled_loss
from gendisc.train import train
from gendisc.utils.build import build

TINY = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "data.val_size=100"]


def test_unlabeled_loss_against_a_hand_computed_case():
    # image 0: weak view confident in class 2 (p = e^4 / (e^4 + 2) = 0.9647 >= 0.95): kept;
    # image 1: confident in class 0 only at p = e^2 / (e^2 + 2) = 0.787: masked out;
    # image 2: confident in class 1 (p = 0.9647): kept
    weak = torch.tensor([[0.0, 0.0, 4.0], [2.0, 0.0, 0.0], [0.0, 4.0, 0.0]], requires_grad=True)
    strong = torch.tensor([[1.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    loss, mask, pseudo = fixmatch_unlabeled_loss(weak, strong, threshold=0.95)
    assert mask.tolist() == [1.0, 0.0, 1.0]
    assert pseudo.tolist() == [2, 0, 1]
    ce_0 = -math.log(math.exp(0) / (math.exp(1) + 2))  # strong view 0 against class 2
    ce_2 = -math.log(1 / 3)  # strong view 2 (uniform) against class 1
    assert loss.item() == pytest.approx((ce_0 + 0 + ce_2) / 3, rel=1e-6)  # mean over all three
    loss.backward()
    assert weak.grad is None  # the pseudo-labels are targets, not trained
    assert strong.grad[1].abs().sum() == 0  # a masked image gives no gradient
    expected = (F.softmax(strong[0].detach(), 0) - F.one_hot(torch.tensor(2), 3)) / 3
    assert torch.allclose(strong.grad[0], expected)


def test_threshold_one_keeps_only_certain_predictions():
    weak = torch.tensor([[0.0, 50.0], [0.0, 1.0]])
    _, mask, _ = fixmatch_unlabeled_loss(weak, torch.zeros(2, 2), threshold=1.0)
    assert mask.tolist() == [1.0, 0.0]


def test_cutout_sets_one_square_per_image():
    images = torch.ones(64, 1, 12, 12)
    out = cutout(images, size=4)
    zeros = (out == 0).flatten(1).sum(1)
    assert zeros.max() == 16 and zeros.min() >= 4  # a whole square, or clipped at a corner
    for image in out[:, 0]:  # the zeros form one axis-aligned rectangle
        rows, cols = torch.nonzero(image == 0, as_tuple=True)
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert len(rows) == height * width


def test_strong_view_is_seeded_per_image_and_in_range():
    images = torch.linspace(-1, 1, 64).view(1, 1, 8, 8).repeat(32, 1, 1, 1)
    strong = RandAugmentCutout(num_ops=2, magnitude=None, cutout=0.0)
    torch.manual_seed(0)
    first = strong(images)
    torch.manual_seed(0)
    assert torch.equal(first, strong(images))  # torch's seeded generator: resumable
    assert first.min() >= -1 and first.max() <= 1 and first.shape == images.shape
    distinct = {tuple(image.flatten().tolist()) for image in first}
    assert len(distinct) > 16  # identical inputs, each image its own ops and magnitude
    identity = RandAugmentCutout(num_ops=0, cutout=0.0)
    quantised = ((images + 1) * 127.5).round() / 127.5 - 1
    assert torch.allclose(identity(images), quantised)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.threshold=1.5", "model.threshold=1.5"),
        ("model.mu=0", "model.mu=0"),
        ("model.strong=null", "both augmentations"),
    ],
)
def test_bad_options_are_refused(override, message, make_cfg):
    with pytest.raises(Exception) as info:  # Hydra wraps the constructor's error
        build(make_cfg(["model=fixmatch", override]))
    assert message in str(gendisc_cause(info.value))


def test_a_second_augmentation_is_refused(make_cfg):
    with pytest.raises(ConfigError, match="augment=none"):
        train(make_cfg(["model=fixmatch", "augment=translate", *TINY]))


def test_fixmatch_step_on_the_real_config(make_cfg, tmp_path):
    """mu unlabeled batches per step reach the module; one pass over the three views; the
    moving average is what is evaluated and what the checkpoint keeps."""
    metrics = train(make_cfg(["model=fixmatch", "model.mu=2", *TINY]))
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert 0.0 <= metrics["train/mask_rate"] <= 1.0
    assert metrics["train/loss"] == pytest.approx(
        metrics["train/supervised_loss"] + metrics["train/unlabeled_loss"], rel=1e-5
    )
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(key.startswith("ema.shadow.") for key in state["state_dict"])


@pytest.mark.slow
def test_fixmatch_learns_digits_from_ten_labels_per_class(make_cfg):
    metrics = train(
        make_cfg(["model=fixmatch", "model.mu=2", "trainer.max_epochs=8", "data.val_size=100"])
    )
    assert metrics["test/acc"] > 0.7  # chance: 0.1
