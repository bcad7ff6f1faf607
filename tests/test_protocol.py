"""The few-label protocol: exact counts, determinism in data_seed only, disjoint splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from gendisc.data import FewLabelDataModule, split_labels
from gendisc.data.batches import TrainBatches
from gendisc.errors import ConfigError, DataError


def _labels(per_class: int = 50, classes: int = 10) -> np.ndarray:
    return np.random.default_rng(123).permutation(np.repeat(np.arange(classes), per_class))


def test_exact_per_class_counts_and_disjoint_validation():
    labels = _labels()
    split = split_labels(labels, labels_per_class=7, val_size=100, data_seed=3)
    assert np.bincount(labels[split.labeled], minlength=10).tolist() == [7] * 10
    assert len(split.validation) == 100
    assert not set(split.labeled) & set(split.validation)
    assert not set(split.unlabeled) & set(split.validation)
    assert set(split.labeled) <= set(split.unlabeled)
    assert len(split.unlabeled) + len(split.validation) == len(labels)


def test_labeled_set_depends_on_data_seed_only():
    labels = _labels()
    first = split_labels(labels, 5, 50, data_seed=1)
    torch.manual_seed(999)
    np.random.seed(999)
    again = split_labels(labels, 5, 50, data_seed=1)
    other = split_labels(labels, 5, 50, data_seed=2)
    assert np.array_equal(first.labeled, again.labeled)
    assert np.array_equal(first.validation, again.validation)
    assert not np.array_equal(first.labeled, other.labeled)


def test_all_labels_and_fractional_validation():
    labels = _labels()
    split = split_labels(labels, None, 0.1, data_seed=0)
    assert len(split.validation) == 50
    assert np.array_equal(split.labeled, split.unlabeled)


@pytest.mark.parametrize("per_class", [46, 1000])
def test_too_many_labels_per_class_names_the_setting(per_class):
    labels = _labels(per_class=50)
    with pytest.raises(ConfigError, match=r"data.labels_per_class=\d+ .*labels_per_class<="):
        split_labels(labels, per_class, 100, data_seed=0)


def test_bad_val_size_and_zero_labels():
    with pytest.raises(ConfigError, match=r"data\.val_size"):
        split_labels(_labels(), 1, 10_000, data_seed=0)
    with pytest.raises(ConfigError, match="at least 1"):
        split_labels(_labels(), 0, 10, data_seed=0)


def test_digits_datamodule_counts_and_test_split_untouched():
    dm = FewLabelDataModule("digits", labels_per_class=10, val_size=200, data_seed=0).load()
    assert dm.counts == {
        "data/labeled": 100,
        "data/unlabeled": 1237,
        "data/val": 200,
        "data/test": 360,
    }
    assert dm.image_shape == (1, 8, 8) and dm.num_classes == 10
    labeled_labels = dm.train_labels[dm.labeled_index]
    assert torch.bincount(labeled_labels, minlength=10).tolist() == [10] * 10
    batch = next(iter(dm.test_dataloader()))
    images, labels = batch["x"], batch["y"]
    assert images.dtype == torch.float32 and images.min() >= -1 and images.max() <= 1
    assert len(labels) == 360


def test_train_batches_tile_labeled_set_over_unlabeled_epoch():
    dm = FewLabelDataModule("digits", labels_per_class=2, val_size=200, batch_size=10).load()
    loader = TrainBatches(
        dm.train_images,
        dm.train_labels,
        dm.labeled_index,
        dm.unlabeled_index,
        batch_size=10,
        unlabeled_batch_size=50,
        unlabeled_streams=2,
        seed=0,
    )
    batches = list(loader)
    assert len(batches) == len(dm.unlabeled_index) // 50
    seen = torch.cat([b["y"] for b in batches])
    # the 20 labeled images are used in whole passes: each appears equally often per pass
    assert torch.bincount(seen, minlength=10).min() >= len(batches) * 10 // 20 * 2 - 2
    assert set(batches[0]) == {"x", "y", "x_unl", "x_unl2"}
    assert batches[0]["x_unl"].shape == (50, 1, 8, 8)
    # the unlabeled stream is one pass without repeats within the epoch
    assert not torch.equal(batches[0]["x_unl"], batches[0]["x_unl2"])


def test_train_batches_shard_across_ranks_without_overlap():
    dm = FewLabelDataModule("digits", labels_per_class=10, val_size=200).load()
    args = (dm.train_images, dm.train_labels, dm.labeled_index, dm.unlabeled_index)
    shards = [
        TrainBatches(
            *args,
            batch_size=10,
            unlabeled_batch_size=10,
            unlabeled_streams=1,
            seed=5,
            rank=rank,
            world_size=2,
        )
        for rank in (0, 1)
    ]
    first = [next(iter(shard))["x_unl"] for shard in shards]
    assert len(shards[0]) == len(shards[1])
    assert not torch.equal(first[0], first[1])


# ------------------------------------------------------- realistic validation: data.val_per_class
def test_val_per_class_is_drawn_after_the_labels_and_disjoint():
    labels = _labels()
    split = split_labels(labels, 4, None, data_seed=3, val_per_class=6)
    assert np.bincount(labels[split.labeled], minlength=10).tolist() == [4] * 10
    assert np.bincount(labels[split.validation], minlength=10).tolist() == [6] * 10
    assert not set(split.labeled) & set(split.validation)
    assert set(split.unlabeled) == set(range(len(labels))) - set(split.validation)
    # the labeled set is the one picked without a validation split; validation continues the
    # same permutation: each class's next 6 images in it
    assert np.array_equal(split.labeled, split_labels(labels, 4, 0, data_seed=3).labeled)
    order = np.random.default_rng(3).permutation(len(labels))
    expected = [order[labels[order] == c][4:10] for c in range(10)]
    assert np.array_equal(split.validation, np.sort(np.concatenate(expected)))


def test_val_per_class_depends_on_data_seed_only():
    labels = _labels()
    first = split_labels(labels, 5, None, data_seed=1, val_per_class=5)
    torch.manual_seed(999)
    np.random.seed(999)
    again = split_labels(labels, 5, None, data_seed=1, val_per_class=5)
    other = split_labels(labels, 5, None, data_seed=2, val_per_class=5)
    for name in ("labeled", "validation", "unlabeled"):
        assert np.array_equal(getattr(first, name), getattr(again, name))
    assert not np.array_equal(first.validation, other.validation)


def test_val_per_class_with_all_labels():
    labels = _labels()
    split = split_labels(labels, None, None, data_seed=0, val_per_class=3)
    assert np.bincount(labels[split.validation], minlength=10).tolist() == [3] * 10
    assert np.array_equal(split.labeled, split.unlabeled) and len(split.labeled) == 470


def test_val_per_class_errors():
    labels = _labels(per_class=50)
    with pytest.raises(ConfigError, match=r"data\.val_size=200 and data\.val_per_class=5"):
        split_labels(labels, 10, 200, data_seed=0, val_per_class=5)
    with pytest.raises(ConfigError, match=r"data\.val_size=200 and data\.val_per_class=5"):
        FewLabelDataModule("digits", labels_per_class=10, val_size=200, val_per_class=5)
    with pytest.raises(ConfigError, match="val_per_class=0 must be at least 1"):
        split_labels(labels, 10, None, data_seed=0, val_per_class=0)
    # 50 images per class, 45 labeled: 5 left
    with pytest.raises(DataError, match=r"val_per_class=6 .* so 5 are left .*val_per_class<=5"):
        split_labels(labels, 45, None, data_seed=0, val_per_class=6)
    with pytest.raises(DataError, match=r"'0' has 50, .* so 50 are left .*val_per_class<=50\.$"):
        split_labels(labels, None, None, data_seed=0, val_per_class=51)


def test_digits_datamodule_with_val_per_class():
    dm = FewLabelDataModule(
        "digits", labels_per_class=10, val_size=None, val_per_class=10, data_seed=4
    ).load()
    assert dm.counts == {
        "data/labeled": 100,
        "data/unlabeled": 1337,
        "data/val": 100,
        "data/test": 360,
    }
    assert torch.bincount(dm.val_labels, minlength=10).tolist() == [10] * 10
    validation = torch.from_numpy(dm.split.validation)
    assert torch.equal(dm.val_images, dm.train_images[validation])
    assert not set(validation.tolist()) & set(dm.labeled_index.tolist())
    # as many validation labels as training labels; the test split stays untouched
    assert len(dm.val_labels) == len(dm.labeled_index) and len(dm.test_labels) == 360
    with pytest.raises(DataError, match=r"there are \('.*' has \d+ training images"):
        FewLabelDataModule("digits", val_size=None, val_per_class=500).load()


def test_val_per_class_from_the_composed_config(make_cfg):
    default = make_cfg(["data=mnist"], name="default")
    assert default.data.val_per_class is None and default.data.val_size == 5000  # unchanged
    cfg = make_cfg(["data.val_size=null", "data.val_per_class=3", "data.labels_per_class=3"])
    dm = instantiate(cfg.data).load()
    assert dm.counts["data/val"] == 30 == dm.counts["data/labeled"]
    assert torch.bincount(dm.val_labels, minlength=10).tolist() == [3] * 10


def test_val_per_class_typed_alone_replaces_the_default_val_size(make_cfg):
    """`data.val_per_class=N` alone is enough: every default val_size gives way to it, while a
    val_size typed beside it is still refused."""
    from omegaconf import OmegaConf

    from gendisc.utils.build import build

    alone, _ = build(make_cfg(["data.val_per_class=10", "model=classifier"], name="alone"))
    both = ["data.val_size=null", "data.val_per_class=10", "model=classifier"]
    explicit, _ = build(make_cfg(both, name="explicit"))
    assert alone.counts == explicit.counts and alone.counts["data/val"] == 100
    assert np.array_equal(alone.split.labeled, explicit.split.labeled)
    assert np.array_equal(alone.split.validation, explicit.split.validation)
    assert make_cfg([], name="default").data.val_size == 200  # unchanged without it
    for overrides in (["data=mnist"], ["experiment=salimans_mnist"], ["data=image_folder"]):
        cfg = make_cfg([*overrides, "data.val_per_class=5"], name="other")
        assert OmegaConf.select(cfg, "data.val_size") is None, overrides
    refused = make_cfg(["data.val_size=100", "data.val_per_class=10"], name="refused")
    with pytest.raises(ConfigError, match=r"data\.val_size=100 and data\.val_per_class=10"):
        FewLabelDataModule(**{k: v for k, v in refused.data.items() if k != "_target_"})
