"""Tests for gendisc.data.readers: the libraries' readers, file layouts and error messages."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets as tvd
from PIL import Image

from gendisc.data.readers import (
    ImageSplits,
    read_cifar10,
    read_dataset,
    read_digits,
    read_image_folder,
    read_medmnist,
    read_mnist_family,
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


# ---- IDX (MNIST family, torchvision's classes) --------------------------------------------------


def _need_real(name: str) -> Path:
    if not (DATA_DIR / name / "raw").is_dir():
        pytest.skip(f"offline {name} copy not found at {DATA_DIR}/{name}/raw (GENDISC_DATA_DIR)")
    return DATA_DIR


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_mnist_real_files_are_read_through_a_cache(tmp_path):
    before = sorted(os.listdir(_need_real("MNIST") / "MNIST" / "raw"))
    s = read_mnist_family(DATA_DIR, "MNIST", cache_dir=tmp_path)
    _check_splits(s, 1, 28, 10)
    assert len(s.train_images) == 60000 and len(s.test_images) == 10000
    assert s.train_labels[0] == 5 and s.test_labels[0] == 7
    assert s.class_names == tvd.MNIST.classes and s.class_names[0] == "0 - zero"
    # the .gz files were decompressed into the cache, the data folder is untouched
    assert (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").stat().st_size == 47040016
    assert sorted(os.listdir(DATA_DIR / "MNIST" / "raw")) == before


def test_fashion_mnist_recompressed_files_via_dispatch(tmp_path):
    # Debian's re-compressed .gz (other MD5s than upstream's): same data, read all the same
    s = read_dataset("fashion_mnist", _need_real("FashionMNIST"), cache_dir=tmp_path)
    _check_splits(s, 1, 28, 10)
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


def test_gz_files_are_decompressed_into_the_cache_once(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    _write_idx_set(data / "MNIST" / "raw", compress=True)
    s = read_mnist_family(data, "MNIST", cache_dir=cache)
    assert len(s.train_images) == 6 and s.train_labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert sorted(os.listdir(data / "MNIST" / "raw")) == sorted(
        f"{stem}.gz" for stem in os.listdir(cache / "MNIST" / "raw")
    )
    copy = cache / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    made = copy.stat().st_mtime_ns
    read_mnist_family(data, "MNIST", cache_dir=cache)
    assert copy.stat().st_mtime_ns == made  # reused
    # a newer .gz (files replaced by hand) is decompressed again
    gz = data / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    gz.write_bytes(gzip.compress(_idx_bytes(np.array([9, 8, 7, 6]))))
    os.utime(gz, ns=(made + 10**9, made + 10**9))
    assert read_mnist_family(data, "MNIST", cache_dir=cache).test_labels.tolist() == [9, 8, 7, 6]
    # without a cache folder: beside the .gz, as torchvision's own download leaves them
    assert len(read_mnist_family(data, "MNIST").test_images) == 4
    assert (data / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").is_file()


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-10],  # truncated pixels
        lambda b: b[:7],  # shorter than the header
        lambda b: struct.pack(">I", 1234) + b[4:],  # wrong magic
    ],
)
def test_idx_corrupt_file_names_the_folder(tmp_path, damage):
    raw = tmp_path / "MNIST" / "raw"
    _write_idx_set(raw, compress=True)
    bad = raw / "train-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(damage(gzip.decompress(bad.read_bytes()))))
    with pytest.raises(DataError, match=r"MNIST could not be read from .*MNIST/raw.*delete") as e:
        read_mnist_family(tmp_path, "MNIST", cache_dir=tmp_path / "cache")
    assert "data.download=true" in str(e.value)


def test_idx_truncated_gzip_stream(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    _write_idx_set(raw, compress=True)
    bad = raw / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-12])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz"):
        read_mnist_family(tmp_path, "MNIST", cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("t10k-labels-idx1-ubyte"))


def test_missing_dataset_without_download(tmp_path):
    with pytest.raises(DataError, match=r"paths\.data_dir") as info:
        read_dataset("mnist", tmp_path)
    assert "data.download=true" in str(info.value)
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz") in str(info.value)
    for name in ("cifar10", "svhn"):
        with pytest.raises(DataError, match=r"paths\.data_dir"):
            read_dataset(name, tmp_path)
    with pytest.raises(DataError, match=r"breastmnist\.npz"):
        read_dataset("medmnist", tmp_path, medmnist_name="breastmnist")


@pytest.fixture
def http_mirror(tmp_path):
    """A folder served over http on localhost (torchvision downloads with urllib over http)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    folder = tmp_path / "mirror"
    folder.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_checks_the_published_md5(tmp_path, monkeypatch, http_mirror):
    mirror, url = http_mirror
    md5s = _write_idx_set(mirror, compress=True)
    monkeypatch.setattr(tvd.MNIST, "mirrors", [url])
    monkeypatch.setattr(tvd.MNIST, "resources", [(n, md5s[n]) for n, _ in tvd.MNIST.resources])
    s = read_mnist_family(tmp_path / "data", "MNIST", download=True, cache_dir=tmp_path / "c")
    assert len(s.train_images) == 6
    assert (tmp_path / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    assert not (tmp_path / "c").exists()  # downloaded and decompressed in the data folder
    wrong = [(n, "0" * 32 if n.startswith("train-images") else md5s[n]) for n in md5s]
    monkeypatch.setattr(tvd.MNIST, "resources", sorted(wrong))
    with pytest.raises(
        DataError, match=r"(?s)could not be downloaded.*corrupted.*data\.download=false"
    ):
        read_mnist_family(tmp_path / "other", "MNIST", download=True)


# ---- CIFAR-10 and SVHN (small files in the libraries' formats) --------------------------------


def _fake_cifar(monkeypatch, folder: Path) -> None:
    """Six tiny CIFAR-10 batches and the meta file in ``folder``, their MD5s made the published
    ones of torchvision's class."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [n for n, _ in tvd.CIFAR10.train_list + tvd.CIFAR10.test_list]
    for name in names:
        # str keys: the published batches are Python 2 pickles, read with latin1
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 9]}
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {"label_names": [f"class{k}" for k in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    md5 = {f.name: _md5(f) for f in folder.iterdir()}
    monkeypatch.setattr(tvd.CIFAR10, "train_list", [[n, md5[n]] for n in names[:5]])
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(tvd.CIFAR10, "meta", {**tvd.CIFAR10.meta, "md5": md5["batches.meta"]})


def test_cifar10_fake_batches(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    _fake_cifar(monkeypatch, folder)
    s = read_cifar10(tmp_path)
    _check_splits(s, 3, 32, 10)
    assert len(s.train_images) == 20 and len(s.test_images) == 4
    assert s.test_labels.tolist() == [0, 1, 2, 9] and s.class_names[3] == "class3"
    second = pickle.loads((folder / "data_batch_2").read_bytes())["data"]
    assert np.array_equal(s.train_images[4:8].reshape(4, -1), second)  # (N, 3072) -> (N, C, H, W)


class _Payload:
    """Unpickling this runs code: it creates the folder ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_cifar10_unpublished_pickle_is_never_unpickled(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    _fake_cifar(monkeypatch, folder)
    marker = tmp_path / "code_ran"
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Payload(marker)}))
    with pytest.raises(DataError, match=r"CIFAR-10 could not be read.*corrupted") as info:
        read_cifar10(tmp_path)
    assert not marker.exists()
    assert "data.download=true" in str(info.value) and str(folder) in str(info.value)


def _fake_svhn(monkeypatch, folder: Path) -> None:
    from scipy.io import savemat

    folder.mkdir(parents=True)
    x = np.zeros((32, 32, 3, 3), dtype=np.uint8)
    x[0, 1, 2, 1] = 200  # image 1, channel 2, row 0, column 1
    for split in ("train", "test"):
        savemat(folder / f"{split}_32x32.mat", {"X": x, "y": np.array([[10], [1], [9]])})
    split_list = {
        split: [url, name, _md5(folder / name)]
        for split, (url, name, _) in tvd.SVHN.split_list.items()
        if (folder / name).is_file()
    }
    monkeypatch.setattr(tvd.SVHN, "split_list", split_list)


def test_svhn_fake_mat(tmp_path, monkeypatch):
    _fake_svhn(monkeypatch, tmp_path / "SVHN")
    s = read_svhn(tmp_path)
    _check_splits(s, 3, 32, 10)
    assert s.train_labels.tolist() == [0, 1, 9]  # SVHN's 10 is the digit 0
    assert s.train_images[1, 2, 0, 1] == 200
    (tmp_path / "SVHN" / "test_32x32.mat").write_bytes(b"MATLAB 5.0 garbage")
    with pytest.raises(DataError, match=r"SVHN could not be read from .*SVHN.*delete"):
        read_svhn(tmp_path)


# ---- MedMNIST (the medmnist package's classes) --------------------------------------------------


def _medmnist(path: Path, rgb: bool, classes: int = 9, labels_cols: int = 1) -> Path:
    """A tiny file in MedMNIST's format (PathMNIST is RGB with 9 classes)."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 8), ("val", 3), ("test", 4)):
        shape = (n, 28, 28, 3) if rgb else (n, 28, 28)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, classes, (n, labels_cols), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def test_medmnist_by_name_and_by_path(tmp_path):
    from medmnist import INFO

    path = _medmnist(tmp_path / "medmnist" / "pathmnist.npz", rgb=True)
    s = read_dataset("medmnist", tmp_path, medmnist_name="pathmnist")
    _check_splits(s, 3, 28, 9)
    assert s.class_names == [INFO["pathmnist"]["label"][str(k)] for k in range(9)]
    assert s.val_images is not None and s.val_images.shape == (3, 3, 28, 28)
    assert s.val_labels is not None and s.val_labels.dtype == np.int64
    with np.load(path) as raw:
        assert np.array_equal(s.train_images[2].transpose(1, 2, 0), raw["train_images"][2])
        assert np.array_equal(s.test_labels, raw["test_labels"][:, 0])
    by_path = read_dataset("medmnist", "/nonexistent", path=str(path))
    assert np.array_equal(by_path.test_images, s.test_images)
    big = _medmnist(tmp_path / "elsewhere" / "breastmnist_64.npz", rgb=False, classes=2)
    s64 = read_medmnist(path=big)  # the size is in the file's name
    assert s64.train_images.shape[1:] == (1, 28, 28) and s64.class_names[0] == "malignant"


def test_medmnist_tasks_and_errors(tmp_path, caplog):
    with pytest.raises(ConfigError, match=r"multi-label.*single-label"):
        read_medmnist("chestmnist", tmp_path)
    with pytest.raises(ConfigError, match=r"data\.name=nomnist.*breastmnist"):
        read_medmnist("nomnist", tmp_path)
    with pytest.raises(ConfigError, match=r"data\.name=<name>.*data\.path"):
        read_dataset("medmnist", tmp_path)
    with pytest.raises(ConfigError, match=r"3D"):
        read_medmnist("organmnist3d", tmp_path)
    with pytest.raises(ConfigError, match=r"data\.size=32.*\[28, 64, 128, 224\]"):
        read_medmnist("breastmnist", tmp_path, size=32)
    with pytest.raises(DataError, match=r"(?s)medmnist/breastmnist_64\.npz.*zenodo"):
        read_medmnist("breastmnist", tmp_path, size=64)
    with pytest.raises(ConfigError, match=r"x\.npz.*<name>\.npz"):
        read_medmnist(path=_medmnist(tmp_path / "x.npz", rgb=False))
    corrupt = tmp_path / "medmnist" / "dermamnist.npz"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(DataError, match=r"dermamnist\.npz.*delete"):
        read_medmnist("dermamnist", tmp_path)
    _medmnist(tmp_path / "medmnist" / "retinamnist.npz", rgb=True, classes=5)
    caplog.set_level(logging.INFO, logger="gendisc.data.readers")
    assert read_medmnist("retinamnist", tmp_path).num_classes == 5
    assert "ordinal-regression task: treated as multi-class" in caplog.text


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
