"""The label protocol's four sets are exactly those of the hand-written readers that torchvision
and medmnist replaced (issue 22): sha256 of each set's images and labels, computed with the old
readers (commit bb439cc) on the offline copies and kept here."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from gendisc.data import FewLabelDataModule
from tests.conftest import shared_data_dir

BREAST = "medmnist/breastmnist.npz"
# case: data options (besides dataset); the official split, val_size=None before the default
# validation changed (issue 22), is now asked for by name
CASES = {
    "digits/lpc10_val200_seed0": dict(labels_per_class=10, val_size=200, data_seed=0),
    "digits/lpc5_vpc5_seed3": dict(labels_per_class=5, val_size=None, val_per_class=5, data_seed=3),
    "mnist/lpc10_val5000_seed0": dict(labels_per_class=10, val_size=5000, data_seed=0),
    "mnist/lpc10_vpc10_seed1": dict(
        labels_per_class=10, val_size=None, val_per_class=10, data_seed=1
    ),
    "fashion_mnist/lpc10_val5000_seed0": dict(labels_per_class=10, val_size=5000, data_seed=0),
    "fashion_mnist/all_vpc20_seed2": dict(
        labels_per_class=None, val_size=None, val_per_class=20, data_seed=2
    ),
    "breastmnist/lpc10_official_seed0": dict(labels_per_class=10, val_size="official", data_seed=0),
    "breastmnist/lpc5_vpc10_seed1": dict(
        labels_per_class=5, val_size=None, val_per_class=10, data_seed=1
    ),
}
# case: (labeled, unlabeled, validation, test) hashes and the counts, from the old readers
EXPECTED = {
    "digits/lpc10_val200_seed0": ("5a5ba0cbc954d7fe", "bd9b2d377c130b1f", "4749892a308c4eed", "a2fc2790f951761e", (100, 1237, 200, 360)),
    "digits/lpc5_vpc5_seed3": ("811dceb4d3c4b2c8", "57f620929719f5c7", "0e6939d5286af41a", "a2fc2790f951761e", (50, 1387, 50, 360)),
    "mnist/lpc10_val5000_seed0": ("0a19ca269a872d03", "1453f048f4314fe6", "55dc6ef340d99230", "a0863a96c44e5666", (100, 55000, 5000, 10000)),
    "mnist/lpc10_vpc10_seed1": ("b4a0fad06c25980f", "f309daead9b3e65e", "45a96069e5ec9da7", "a0863a96c44e5666", (100, 59900, 100, 10000)),
    "fashion_mnist/lpc10_val5000_seed0": ("e71691fe8acd63b6", "11d67f05d6b7e2e2", "3b0f70825990b87d", "9a494dc49efeb996", (100, 55000, 5000, 10000)),
    "fashion_mnist/all_vpc20_seed2": ("783daea28e54ea4b", "783daea28e54ea4b", "003eff84f7c21d66", "9a494dc49efeb996", (59800, 59800, 200, 10000)),
    "breastmnist/lpc10_official_seed0": ("fde382299e773fec", "d5aba84e9adfd54a", "85e97a6f577752ec", "07640fd37b41c8d8", (20, 546, 78, 156)),
    "breastmnist/lpc5_vpc10_seed1": ("5dab4b3e13ef8857", "80c6267277818333", "7498a0dca345ccde", "07640fd37b41c8d8", (10, 526, 20, 156)),
}  # fmt: skip


def _digest(images: np.ndarray, labels: np.ndarray) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(labels).astype(np.int64).tobytes())
    return digest.hexdigest()[:16]


def _hashes(dm: FewLabelDataModule) -> tuple:
    x, y, split = dm.train_images.numpy(), dm.train_labels.numpy(), dm.split
    return (
        _digest(x[split.labeled], y[split.labeled]),
        _digest(x[split.unlabeled], y[split.unlabeled]),
        _digest(dm.val_images.numpy(), dm.val_labels.numpy()),
        _digest(dm.test_images.numpy(), dm.test_labels.numpy()),
        tuple(dm.counts.values()),
    )


def _source(case: str) -> dict:
    """The datamodule options that read ``case``'s dataset (skips when its copy is absent)."""
    dataset = case.split("/")[0]
    data = shared_data_dir()
    if dataset == "digits":
        return dict(dataset="digits")
    if dataset == "breastmnist":
        if not (data / BREAST).is_file():
            pytest.skip(f"{data / BREAST} not found (GENDISC_DATA_DIR)")
        return dict(dataset="medmnist", name="breastmnist", data_dir=str(data))
    folder = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}[dataset]
    if not (data / folder / "raw").is_dir():
        pytest.skip(f"{data / folder} not found (GENDISC_DATA_DIR)")
    return dict(dataset=dataset, data_dir=str(data))


@pytest.mark.parametrize("case", list(CASES))
def test_the_four_sets_are_those_of_the_old_readers(case, tmp_path):
    dm = FewLabelDataModule(**_source(case), **CASES[case], cache_dir=str(tmp_path)).load()
    assert _hashes(dm) == EXPECTED[case]


def test_a_medmnist_file_by_path_reads_the_same_sets(tmp_path):
    case = "breastmnist/lpc5_vpc10_seed1"
    source = _source(case)
    path = str(shared_data_dir() / BREAST)
    dm = FewLabelDataModule(dataset="medmnist", path=path, **CASES[case]).load()
    assert _hashes(dm) == EXPECTED[case]
    assert dm.class_names == FewLabelDataModule(**source, **CASES[case]).load().class_names


@pytest.mark.parametrize("case", list(CASES))
def test_the_data_configs_readers_read_the_same_sets(case, make_cfg, tmp_path):
    """The same through the configs users compose: each names its reader (``data.reader``)."""
    import hydra

    source = _source(case)
    dataset = "medmnist" if source["dataset"] == "medmnist" else source["dataset"]
    overrides = [f"data={dataset}", f"data.cache_dir={tmp_path}", "data.download=false"]
    if dataset == "medmnist":
        overrides.append("data.name=breastmnist")
    for key, value in CASES[case].items():
        overrides.append(f"data.{key}={'null' if value is None else value}")
    cfg = make_cfg(overrides)
    assert cfg.data.reader._target_.startswith("gendisc.data.readers.read_")
    dm = hydra.utils.instantiate(cfg.data, _convert_="all").load()
    assert _hashes(dm) == EXPECTED[case]
