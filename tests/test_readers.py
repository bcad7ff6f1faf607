"""Tests for gendisc.data.readers: built-in datasets, file formats and error messages."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gendisc.data import readers
from gendisc.data.readers import (
    ImageSplits,
    read_cifar10,
    read_dataset,
    read_digits,
    read_idx_dataset,
    read_image_folder,
    read_medmnist,
    read_svhn,
)
from gendisc.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("GENDISC_DATA_DIR") or REPO.parent / "shared" / "data")


def _check_splits(s: ImageSplits, channels: int, size: int, k: int) -> None:
    for x, y in ((s.train_images, s.train_labels), (s.test_images, s.test_labels)):
        assert x.dtype == np.uint8 and x.shape[1:] == (channels, size, size)
        assert y.dtype == np.int64 and y.shape == (len(x),)
        assert y.min() >= 0 and y.max() < k
    assert len(s.class_names) == k


# ---- digits ---------------------------------------------------------------------------------


def test_digits_split_is_fixed_and_stratified():
    s = read_digits()
    _check_splits(s, 1, 8, 10)
    assert len(s.train_images) == 1437 and len(s.test_images) == 360
    assert s.train_images.max() == 255 and s.class_names == [str(i) for i in range(10)]
    assert set(s.train_labels) == set(s.test_labels) == set(range(10))
    assert np.bincount(s.test_labels).min() >= 35  # stratified: ~36 per class
    again = read_digits()
    assert np.array_equal(s.train_images, again.train_images)
    assert np.array_equal(s.test_labels, again.test_labels)


# ---- IDX (MNIST family) -----------------------------------------------------------------------


def _need_real(name: str) -> Path:
    if not (DATA_DIR / name / "raw").is_dir():
        pytest.skip(f"offline {name} copy not found at {DATA_DIR}/{name}/raw (GENDISC_DATA_DIR)")
    return DATA_DIR


@pytest.fixture
def warnings_log(monkeypatch, caplog):
    """The readers' warnings, each file warned about afresh (not once per test session)."""
    monkeypatch.setattr(readers, "_WARNED", set())
    caplog.set_level(logging.WARNING, logger=readers.__name__)
    return caplog


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_mnist_real_files(warnings_log):
    s = read_idx_dataset(_need_real("MNIST"), "MNIST")
    assert not warnings_log.records  # byte-identical to the published files: verified
    _check_splits(s, 1, 28, 10)
    assert len(s.train_images) == 60000 and len(s.test_images) == 10000
    assert s.train_labels[0] == 5 and s.test_labels[0] == 7


def test_fashion_mnist_real_files_via_dispatch(warnings_log):
    s = read_dataset("fashion_mnist", _need_real("FashionMNIST"))
    _check_splits(s, 1, 28, 10)
    # Debian's re-compressed copies: other MD5s, same data; read with a warning per file
    warned = " ".join(r.getMessage() for r in warnings_log.records)
    for name in readers.IDX_MD5["FashionMNIST"]:
        assert f"FashionMNIST/raw/{name} is not the published file" in warned
    assert "data.download=true" in warned
    assert len(s.train_images) == 60000 and len(s.test_images) == 10000
    assert np.bincount(s.train_labels).tolist() == [6000] * 10
    assert s.class_names[0] == "T-shirt/top" and s.class_names[9] == "Ankle boot"


def _idx_bytes(arr: np.ndarray) -> bytes:
    magic = 2051 if arr.ndim == 3 else 2049
    return struct.pack(f">{arr.ndim + 1}I", magic, *arr.shape) + arr.astype(np.uint8).tobytes()


def _write_idx_set(raw: Path, n_train: int = 6, n_test: int = 4, compress: bool = False) -> dict:
    """Write a tiny IDX set to ``raw``; return {file name: MD5}."""
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    for name, arr in arrays.items():
        data = _idx_bytes(arr)
        if compress:
            (raw / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
        else:
            (raw / name).write_bytes(data)
    return {f.name: _md5(f) for f in raw.iterdir()}


def test_idx_decompressed_files_are_read(tmp_path):
    _write_idx_set(tmp_path / "KMNIST" / "raw")
    s = read_dataset("kmnist", tmp_path)
    _check_splits(s, 1, 28, 10)
    assert len(s.train_images) == 6 and s.test_labels.tolist() == [0, 1, 2, 3]
    assert s.class_names[0] == "o"


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-10],  # truncated pixels
        lambda b: b[:7],  # shorter than the header
        lambda b: struct.pack(">I", 1234) + b[4:],  # wrong magic
    ],
)
def test_idx_corrupt_file_names_the_file(tmp_path, damage):
    raw = tmp_path / "MNIST" / "raw"
    _write_idx_set(raw, compress=True)
    bad = raw / "train-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(damage(gzip.decompress(bad.read_bytes()))))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz.*[Dd]elete") as info:
        read_idx_dataset(tmp_path, "MNIST")
    assert "the published one is f68b3c2dcbeaaa9fbdd348bbdeb94873" in str(info.value)
    assert "data.download=true" in str(info.value)


def test_hand_placed_files_with_other_checksums_are_read_with_a_warning(tmp_path, warnings_log):
    raw = tmp_path / "KMNIST" / "raw"
    _write_idx_set(raw, compress=True)
    s = read_idx_dataset(tmp_path, "KMNIST")
    assert len(s.train_images) == 6
    assert len(warnings_log.records) == 4
    message = warnings_log.records[0].getMessage()
    assert str(raw / "train-images-idx3-ubyte.gz") in message
    assert "the published one is bdb82020997e1d708af4cf47b453dcf7" in message
    read_idx_dataset(tmp_path, "KMNIST")
    assert len(warnings_log.records) == 4  # once per file and process


def test_a_published_checksum_silences_the_warning(tmp_path, monkeypatch, warnings_log):
    md5s = _write_idx_set(tmp_path / "MNIST" / "raw", compress=True)
    monkeypatch.setitem(readers.IDX_MD5, "MNIST", md5s)
    assert len(read_idx_dataset(tmp_path, "MNIST").test_labels) == 4
    assert not warnings_log.records


def test_idx_truncated_gzip_stream(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    _write_idx_set(raw, compress=True)
    bad = raw / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-12])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz"):
        read_idx_dataset(tmp_path, "MNIST")


def test_idx_count_mismatch(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    _write_idx_set(raw)
    (raw / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.arange(5) % 10))
    with pytest.raises(DataError, match="6 images but"):
        read_idx_dataset(tmp_path, "MNIST")


def test_missing_dataset_without_download(tmp_path):
    with pytest.raises(DataError, match=r"paths\.data_dir") as info:
        read_dataset("mnist", tmp_path)
    assert "data.download=true" in str(info.value)
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz") in str(info.value)
    for name in ("cifar10", "svhn"):
        with pytest.raises(DataError, match=r"paths\.data_dir"):
            read_dataset(name, tmp_path)


def test_mirrors_are_https():
    urls = [*readers.IDX_MIRRORS.values(), readers.CIFAR10_URL, readers.SVHN_URL]
    assert all(url.startswith("https://") for url in urls)


def test_download_from_mirror_is_verified(tmp_path, monkeypatch, warnings_log):
    mirror = tmp_path / "mirror"
    md5s = _write_idx_set(mirror, compress=True)
    monkeypatch.setitem(readers.IDX_MIRRORS, "MNIST", mirror.as_uri() + "/")
    monkeypatch.setitem(readers.IDX_MD5, "MNIST", md5s)
    s = read_idx_dataset(tmp_path / "data", "MNIST", download=True)
    assert len(s.train_images) == 6
    assert (tmp_path / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file()
    assert not list((tmp_path / "data").rglob("*.part"))
    assert not warnings_log.records


def test_download_with_another_checksum_is_refused(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    md5s = _write_idx_set(mirror, compress=True)
    monkeypatch.setitem(readers.IDX_MIRRORS, "MNIST", mirror.as_uri() + "/")
    monkeypatch.setitem(readers.IDX_MD5, "MNIST", {**md5s, "train-images-idx3-ubyte.gz": "0" * 32})
    with pytest.raises(DataError, match=r"MD5 [0-9a-f]{32}, not the published 0{32}") as info:
        read_idx_dataset(tmp_path / "data", "MNIST", download=True)
    assert "train-images-idx3-ubyte.gz" in str(info.value)
    raw = tmp_path / "data" / "MNIST" / "raw"
    assert not (raw / "train-images-idx3-ubyte.gz").exists()
    assert not list(raw.rglob("*.part"))


def test_download_failure_says_where_to_put_files(tmp_path, monkeypatch):
    monkeypatch.setitem(readers.IDX_MIRRORS, "MNIST", (tmp_path / "nowhere").as_uri() + "/")
    with pytest.raises(DataError, match="failed") as info:
        read_idx_dataset(tmp_path / "data", "MNIST", download=True)
    msg = str(info.value)
    assert "GENDISC_DATA_DIR" in msg and str(tmp_path / "data" / "MNIST" / "raw") in msg
    assert not list((tmp_path / "data").rglob("*.part"))


# ---- CIFAR-10 and SVHN (small fake files) -----------------------------------------------------


def _fake_cifar(folder: Path) -> dict[str, str]:
    """Six tiny CIFAR-10 batches in ``folder``; return {batch name: MD5}."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in readers.CIFAR10_BATCH_MD5:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 9]}
        (folder / name).write_bytes(pickle.dumps(batch))
    return {f.name: _md5(f) for f in folder.iterdir()}


def test_cifar10_fake_batches(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    monkeypatch.setattr(readers, "CIFAR10_BATCH_MD5", _fake_cifar(folder))
    s = read_cifar10(tmp_path)
    _check_splits(s, 3, 32, 10)
    assert len(s.train_images) == 20 and len(s.test_images) == 4
    second = pickle.loads((folder / "data_batch_2").read_bytes())[b"data"]
    assert np.array_equal(s.train_images[4:8].reshape(4, -1), second)  # (N, 3072) -> (N, C, H, W)
    archive = tmp_path / "mirror.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    monkeypatch.setattr(readers, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(readers, "CIFAR10_MD5", _md5(archive))
    fresh = read_cifar10(tmp_path / "data", download=True)  # download, verify, extract
    assert np.array_equal(fresh.test_images, s.test_images)
    monkeypatch.setattr(readers, "CIFAR10_MD5", "0" * 32)
    with pytest.raises(DataError, match=r"not the published 0{32}"):
        read_cifar10(tmp_path / "other", download=True)


class _Payload:
    """Unpickling this runs code: it creates the folder ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_cifar10_unpublished_pickle_is_never_unpickled(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    monkeypatch.setattr(readers, "CIFAR10_BATCH_MD5", _fake_cifar(folder))
    marker = tmp_path / "code_ran"
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Payload(marker)}))
    with pytest.raises(DataError, match=r"test_batch is not the published CIFAR-10 batch") as info:
        read_cifar10(tmp_path)
    assert not marker.exists()
    assert "data.download=true" in str(info.value) and str(folder) in str(info.value)


def _fake_svhn(folder: Path) -> dict[str, str]:
    from scipy.io import savemat

    folder.mkdir(parents=True)
    x = np.zeros((32, 32, 3, 3), dtype=np.uint8)
    x[0, 1, 2, 1] = 200  # image 1, channel 2, row 0, column 1
    for split in ("train", "test"):
        savemat(folder / f"{split}_32x32.mat", {"X": x, "y": np.array([[10], [1], [9]])})
    return {f.name: _md5(f) for f in folder.iterdir()}


def test_svhn_fake_mat(tmp_path, warnings_log):
    _fake_svhn(tmp_path / "SVHN")
    s = read_svhn(tmp_path)
    _check_splits(s, 3, 32, 10)
    assert s.train_labels.tolist() == [0, 1, 9]
    assert s.train_images[1, 2, 0, 1] == 200
    assert "train_32x32.mat is not the published file" in warnings_log.text  # made here
    (tmp_path / "SVHN" / "test_32x32.mat").write_bytes(b"MATLAB 5.0 garbage")
    with pytest.raises(DataError, match=r"test_32x32\.mat.*published one is eb5a983b.*[Dd]elete"):
        read_svhn(tmp_path)


def test_svhn_download_is_verified(tmp_path, monkeypatch, warnings_log):
    mirror = tmp_path / "mirror"
    monkeypatch.setattr(readers, "SVHN_MD5", _fake_svhn(mirror))
    monkeypatch.setattr(readers, "SVHN_URL", mirror.as_uri() + "/")
    s = read_svhn(tmp_path / "data", download=True)
    assert s.test_labels.tolist() == [0, 1, 9] and not warnings_log.records


# ---- MedMNIST -----------------------------------------------------------------------------


def _medmnist(path: Path, rgb: bool, drop: str | None = None, labels_cols: int = 1) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 8), ("val", 3), ("test", 4)):
        shape = (n, 28, 28, 3) if rgb else (n, 28, 28)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 4, (n, labels_cols), dtype=np.uint8)
    arrays["train_labels"][0] = 4  # so K = 5
    if drop:
        del arrays[drop]
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("rgb", [False, True])
def test_medmnist(tmp_path, rgb):
    path = _medmnist(tmp_path / "x.npz", rgb)
    s = read_medmnist(path)
    _check_splits(s, 3 if rgb else 1, 28, 5)
    assert s.val_images is not None and s.val_images.shape == (3, 3 if rgb else 1, 28, 28)
    assert s.val_labels is not None and s.val_labels.dtype == np.int64
    with np.load(path) as raw:
        expected = raw["train_images"][2]
    got = s.train_images[2]
    assert np.array_equal(got.transpose(1, 2, 0) if rgb else got[0], expected)
    assert np.array_equal(
        read_dataset("medmnist", tmp_path, path=str(path)).test_labels, s.test_labels
    )


def test_medmnist_errors(tmp_path):
    with pytest.raises(DataError, match=r"val_labels"):
        read_medmnist(_medmnist(tmp_path / "a.npz", False, drop="val_labels"))
    corrupt = tmp_path / "b.npz"
    corrupt.write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(DataError, match=r"b\.npz.*train_images"):
        read_medmnist(corrupt)
    with pytest.raises(DataError, match="single-label"):
        read_medmnist(_medmnist(tmp_path / "c.npz", False, labels_cols=14))
    with pytest.raises(DataError, match=r"missing\.npz"):
        read_medmnist(tmp_path / "missing.npz")
    with pytest.raises(ConfigError, match=r"data\.path"):
        read_dataset("medmnist", tmp_path)


# ---- image folder -------------------------------------------------------------------------


def _img(path: Path, value: int, mode: str = "RGB", size: tuple[int, int] = (10, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode in ("L", "1") else (value, 0, 255 - value)
    Image.new(mode, size, color).save(path)


def test_image_folder_train_test(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for c, value in (("cats", 10), ("dogs", 200)):
            for i in range(n):
                _img(tmp_path / split / c / f"{i}.PNG", value)
    s = read_image_folder(tmp_path, image_size=16)
    _check_splits(s, 3, 16, 2)
    assert s.class_names == ["cats", "dogs"]
    assert len(s.train_images) == 6 and len(s.test_images) == 4
    assert s.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert s.train_images[3, 0, 0, 0] == 200 and s.train_images[3, 2, 0, 0] == 55
    gray = read_image_folder(tmp_path, image_size=8, grayscale=True)
    assert gray.train_images.shape == (6, 1, 8, 8)


def test_image_folder_seeded_split(tmp_path):
    for c in ("a", "b", "c"):
        for i in range(10):
            _img(tmp_path / c / f"{i}.jpg", 20 * i, mode="L", size=(9, 9))
    s = read_dataset("image_folder", tmp_path, path=str(tmp_path), test_fraction=0.3, split_seed=1)
    _check_splits(s, 1, 9, 3)  # all "L" -> grayscale, common size kept
    assert np.bincount(s.test_labels).tolist() == [3, 3, 3]
    assert np.bincount(s.train_labels).tolist() == [7, 7, 7]
    again = read_image_folder(tmp_path, test_fraction=0.3, split_seed=1)
    assert np.array_equal(s.test_images, again.test_images)
    other = read_image_folder(tmp_path, test_fraction=0.3, split_seed=2)
    assert not np.array_equal(s.test_images, other.test_images)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_image_folder(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"<class>/<image>\.png"):
        read_image_folder(empty)
    one = tmp_path / "one"
    _img(one / "cats" / "0.png", 1)
    _img(one / "cats" / "1.png", 2)
    with pytest.raises(DataError, match="at least two"):
        read_image_folder(one)
    few = tmp_path / "few"
    _img(few / "cats" / "0.png", 1)
    _img(few / "cats" / "1.png", 1)
    _img(few / "dogs" / "0.png", 1)
    with pytest.raises(DataError, match="dogs"):
        read_image_folder(few)
    broken = tmp_path / "broken"
    for c in ("cats", "dogs"):
        _img(broken / c / "0.png", 1)
        _img(broken / c / "1.png", 1)
    (broken / "dogs" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"bad\.png"):
        read_image_folder(broken)
    sizes = tmp_path / "sizes"
    for c in ("cats", "dogs"):
        _img(sizes / c / "0.png", 1, size=(4, 4))
        _img(sizes / c / "1.png", 1, size=(5, 5))
    with pytest.raises(DataError, match=r"data\.image_size"):
        read_image_folder(sizes)
    assert read_image_folder(sizes, image_size=6).train_images.shape[1:] == (3, 6, 6)
    with pytest.raises(ConfigError, match=r"data\.path"):
        read_dataset("image_folder", tmp_path)


# ---- dispatch -----------------------------------------------------------------------------


def test_unknown_dataset_name():
    with pytest.raises(ConfigError, match=r"data=<name>.*mnist"):
        read_dataset("imagenet", "/nonexistent")
