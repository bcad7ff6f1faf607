"""The few-label protocol: exact counts, determinism in data_seed only, disjoint splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from gendisc.data import FewLabelDataModule, split_labels
from gendisc.data.batches import TrainBatches, tiled_permutation
from gendisc.data.protocol import validation_setting
from gendisc.errors import ConfigError, DataError, gendisc_cause

from .conftest import shared_data_dir

requires_breastmnist = pytest.mark.skipif(
    not (shared_data_dir() / "medmnist" / "breastmnist.npz").is_file(),
    reason=f"breastmnist.npz not found under {shared_data_dir()}/medmnist (GENDISC_DATA_DIR)",
)


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
    cfg = make_cfg(["data.val_per_class=3", "data.labels_per_class=3"])
    dm = instantiate(cfg.data).load()
    assert dm.counts["data/val"] == 30 == dm.counts["data/labeled"]
    assert torch.bincount(dm.val_labels, minlength=10).tolist() == [3] * 10


# ------------------------------------------- the default validation (issue 22): composed configs
def _data(make_cfg, overrides: list[str], name: str = "run") -> FewLabelDataModule:
    return instantiate(make_cfg(overrides, name=name).data).load()


def _split_of(dm: FewLabelDataModule) -> tuple[np.ndarray, np.ndarray]:
    return dm.split.labeled, dm.split.validation


@pytest.mark.parametrize("labels", [1, 3, 10])
def test_the_default_validates_on_labels_per_class_images_per_class(make_cfg, labels):
    """Neither option set: as many validation images per class as labeled ones, drawn as
    data.val_per_class=<labels per class> draws them (no more validation labels than training
    labels)."""
    cfg = make_cfg([f"data.labels_per_class={labels}"], name="default")
    assert cfg.data.val_size is None and cfg.data.val_per_class is None
    dm = instantiate(cfg.data).load()
    assert dm.validation == (None, labels)
    assert dm.counts == {
        "data/labeled": 10 * labels,
        "data/unlabeled": 1437 - 10 * labels,
        "data/val": 10 * labels,
        "data/test": 360,
    }
    assert torch.bincount(dm.val_labels, minlength=10).tolist() == [labels] * 10
    typed = _data(make_cfg, [f"data.labels_per_class={labels}", f"data.val_per_class={labels}"])
    assert all(map(np.array_equal, _split_of(dm), _split_of(typed)))


def test_val_size_alone_and_val_per_class_alone(make_cfg):
    """Either option typed alone is enough, with a label budget or all labels."""
    carved = _data(make_cfg, ["data.val_size=300"], name="carved")
    assert carved.validation == (300, None)
    assert carved.counts["data/val"] == 300 and carved.counts["data/unlabeled"] == 1137
    assert carved.counts["data/labeled"] == 100
    same = FewLabelDataModule("digits", labels_per_class=10, val_size=300).load()
    assert all(map(np.array_equal, _split_of(carved), _split_of(same)))
    fraction = _data(make_cfg, ["data.val_size=0.1"], name="fraction")
    assert fraction.counts["data/val"] == 144
    none = _data(make_cfg, ["data.val_size=0"], name="none")
    assert none.counts["data/val"] == 0 and none.counts["data/unlabeled"] == 1437
    per_class = _data(make_cfg, ["data.val_per_class=4"], name="per_class")
    assert per_class.counts["data/val"] == 40 and per_class.counts["data/labeled"] == 100
    everything = ["data.labels_per_class=null", "data.val_per_class=20"]
    all_labels = _data(make_cfg, everything, name="all_labels")
    assert all_labels.validation == (None, 20)
    assert all_labels.counts == {
        "data/labeled": 1237,
        "data/unlabeled": 1237,
        "data/val": 200,
        "data/test": 360,
    }
    assert torch.bincount(all_labels.val_labels, minlength=10).tolist() == [20] * 10


def test_both_options_are_one_clear_error(make_cfg):
    from gendisc.utils.build import build

    cfg = make_cfg(["data.val_size=100", "data.val_per_class=10", "model=classifier"])
    with pytest.raises(Exception) as raised:  # Hydra wraps it; gendisc-train unwraps it
        build(cfg)
    error = gendisc_cause(raised.value)
    assert isinstance(error, ConfigError)
    assert str(error).startswith(
        "data.val_size=100 and data.val_per_class=10 are both set: keep one"
    )
    with pytest.raises(ConfigError, match=r"data\.val_size=0\.2 and data\.val_per_class=3"):
        validation_setting(5, 0.2, 3, 200)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("digits", 200),
        ("mnist", 5000),
        ("fashion_mnist", 5000),
        ("kmnist", 5000),
        ("svhn", 5000),
        ("cifar10", 5000),
        ("image_folder", 0.1),
        ("medmnist", "official"),
    ],
)
def test_the_all_labels_default_of_each_dataset(make_cfg, data, expected):
    """With all labels and neither option set: the data config's all_labels_val_size (the
    official validation split on MedMNIST); with a label budget: labels_per_class per class."""
    cfg = make_cfg([f"data={data}", "data.labels_per_class=null"], name=data)
    assert cfg.data.val_size is None and cfg.data.val_per_class is None
    setting = (cfg.data.labels_per_class, None, None, cfg.data.all_labels_val_size)
    assert validation_setting(*setting) == (expected, None)
    budget = make_cfg([f"data={data}", "data.labels_per_class=7"], name=f"{data}_budget")
    setting = (7, budget.data.val_size, budget.data.val_per_class, budget.data.all_labels_val_size)
    assert validation_setting(*setting) == (None, 7)


def test_the_all_labels_default_on_digits_is_the_old_carve_out(make_cfg):
    dm = _data(make_cfg, ["data.labels_per_class=null"])
    old = FewLabelDataModule("digits", labels_per_class=None, val_size=200).load()
    assert dm.validation == (200, None) and dm.counts == old.counts
    assert all(map(np.array_equal, _split_of(dm), _split_of(old)))


def test_validation_errors_name_the_setting(make_cfg):
    with pytest.raises(ConfigError, match=r"data\.val_size=official .* digits does not have"):
        _data(make_cfg, ["data.val_size=official"])
    with pytest.raises(ConfigError, match=r"data\.val_size=half must be a count .* or official"):
        _data(make_cfg, ["data.val_size=half"], name="half")
    with pytest.raises(ConfigError, match=r"data\.val_size=2\.5 must be a count"):
        _data(make_cfg, ["data.val_size=2.5"], name="float")
    with pytest.raises(ConfigError, match="all_labels_val_size"):
        validation_setting(None, None, None, None)
    # the default's per-class validation needs room: the error says it is the default
    with pytest.raises(DataError, match=r"val_per_class=100 .* by default it is data\.labels_per"):
        _data(make_cfg, ["data.labels_per_class=100"], name="big")


@requires_breastmnist
def test_medmnist_official_split_explicitly_and_by_default_with_all_labels(make_cfg):
    """BreastMNIST: 546 training images, an official validation split of 78. With 10 labels per
    class the default validates on 10 per class; data.val_size=official on the official split
    (more labels than the 20 labeled ones); with all labels the official split is the default."""
    breast = ["data=medmnist", "data.name=breastmnist", "data.download=false"]
    default = _data(make_cfg, breast, name="default")
    assert default.validation == (None, 10)
    assert default.counts == {
        "data/labeled": 20,
        "data/unlabeled": 526,
        "data/val": 20,
        "data/test": 156,
    }
    official = _data(make_cfg, [*breast, "data.val_size=official"], name="official")
    assert official.counts == {
        "data/labeled": 20,
        "data/unlabeled": 546,
        "data/val": 78,
        "data/test": 156,
    }
    # the labeled images are those of the default (both draw them first from the permutation)
    assert np.array_equal(official.split.labeled, default.split.labeled)
    everything = _data(make_cfg, [*breast, "data.labels_per_class=null"], name="all")
    assert everything.validation == ("official", None)
    assert torch.equal(everything.val_images, official.val_images)
    assert everything.counts["data/labeled"] == 546


# the experiments whose committed results used the old default keep its validation set
PINNED = {
    "baseline_digits": 200,
    "ssl_vae_digits": 200,
    "ssl_vae_adgm_digits": 200,
    "ssl_vae_sdgm_digits": 200,
    "ssl_vae_m1m2_digits": 200,
    "ssl_vae_m1_digits": 200,
    "m2_mnist": 5000,
    "m2_mnist_labels_only": 5000,
    "adgm_mnist": 5000,
    "adgm_mnist_labels_only": 5000,
    "sdgm_mnist": 5000,
    "m1m2_mnist": 5000,
    "ssl_vae_m1_mnist": 5000,
    "augment_mnist": 5000,
    "salimans_mnist": 1000,
    "salimans_mnist_table": 1000,
    "bad_gan_mnist": 1000,
    "salimans_cifar10": 5000,
    "salimans_svhn": 5000,
    "transfer_source_fashion": 1000,
}


def test_pinned_experiments_keep_the_old_validation_and_take_val_per_class_alone(make_cfg):
    for experiment, val_size in PINNED.items():
        cfg = make_cfg([f"experiment={experiment}"], name=experiment)
        assert cfg.data.val_size == val_size and cfg.data.val_per_class is None, experiment
        typed = make_cfg([f"experiment={experiment}", "data.val_per_class=5"], name="typed")
        assert (typed.data.val_size, typed.data.val_per_class) == (None, 5), experiment


def test_pinned_digits_experiment_reproduces_the_old_sets(make_cfg):
    dm = _data(make_cfg, ["experiment=baseline_digits"])
    old = FewLabelDataModule("digits", labels_per_class=10, val_size=200).load()
    assert dm.counts == old.counts and dm.counts["data/val"] == 200
    assert all(map(np.array_equal, _split_of(dm), _split_of(old)))


def test_a_config_stored_before_issue_22_keeps_its_official_split():
    """Stored before the default changed, val_size and val_per_class both null meant the official
    split (data=medmnist); gendisc-eval's run config spells that out, and leaves newer ones."""
    from gendisc.checkpoints import CONFIG_KEY, run_config

    def stored(**data) -> dict:
        target = {"_target_": "gendisc.data.FewLabelDataModule", "dataset": "medmnist"}
        return {CONFIG_KEY: {"data": {**target, "labels_per_class": 10, **data}}}

    old = run_config(stored(val_size=None), "old.ckpt", "ckpt_path")
    assert old.data.val_size == "official"
    older = run_config(stored(val_size=None, val_per_class=None), "older.ckpt", "ckpt_path")
    assert older.data.val_size == "official"
    for data in (
        dict(val_size=None, val_per_class=None, all_labels_val_size="official"),  # the default
        dict(val_size=200),
        dict(val_size=None, val_per_class=10),
    ):
        cfg = run_config(stored(**data), "new.ckpt", "ckpt_path")
        assert (cfg.data.val_size, cfg.data.get("val_per_class")) == (
            data["val_size"],
            data.get("val_per_class"),
        ), data


def _imbalanced_batches(balanced: bool, seed: int = 0) -> TrainBatches:
    """900 labeled images of class 0 and 100 of class 1 (the pool: 2000 more)."""
    labels = torch.cat([torch.zeros(900), torch.ones(100), torch.zeros(2000)]).long()
    images = torch.arange(len(labels), dtype=torch.int64).remainder(256).to(torch.uint8)
    images = images.view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    return TrainBatches(
        images,
        labels,
        torch.arange(1000),
        torch.arange(1000, 3000),
        batch_size=100,
        unlabeled_batch_size=100,
        unlabeled_streams=1,
        seed=seed,
        balanced=balanced,
    )


def test_balanced_batches_draw_each_class_equally_often():
    plain = torch.cat([b["y"] for b in _imbalanced_batches(False)])
    balanced = torch.cat([b["y"] for b in _imbalanced_batches(True)])
    assert len(plain) == len(balanced) == 2000  # the epoch is the unlabeled pool's, either way
    assert plain.float().mean().item() == pytest.approx(0.1, abs=0.005)  # whole passes: 10 %
    assert balanced.float().mean().item() == pytest.approx(0.5, abs=0.05)
    # reproducible from the seed and epoch (exact resume), different for another seed
    again = torch.cat([b["y"] for b in _imbalanced_batches(True)])
    assert torch.equal(balanced, again)
    other = torch.cat([b["y"] for b in _imbalanced_batches(True, seed=1)])
    assert not torch.equal(balanced, other)


def test_balanced_batches_off_leaves_the_batches_as_they_were():
    """The option's default draws exactly the tiled permutations the studies were run with."""
    loader = _imbalanced_batches(False, seed=3)
    generator = torch.Generator().manual_seed(3 * 1_000_003 + 0)
    labeled = tiled_permutation(1000, 2000, generator).view(20, 100)
    first = next(iter(loader))
    assert torch.equal(first["y"], loader.labels[labeled[0]])


@requires_breastmnist
def test_balanced_batches_from_the_data_config_on_all_breastmnist_labels(make_cfg):
    """data.balanced_batches reaches the loader: all 546 labels (147 malignant) drawn 50/50."""
    cfg = make_cfg(
        [
            "data=medmnist",
            "data.name=breastmnist",
            "data.labels_per_class=null",
            "data.val_size=official",
            "data.batch_size=64",
            "data.balanced_batches=true",
        ]
    )
    dm = instantiate(cfg.data).load()
    labeled = dm.train_labels[dm.labeled_index]
    assert torch.bincount(labeled).tolist() == [147, 399]
    loader = dm.train_dataloader()
    drawn = torch.cat([b["y"] for _epoch in range(3) for b in loader])
    assert drawn.float().mean().item() == pytest.approx(0.5, abs=0.06)
