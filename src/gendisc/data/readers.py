"""Read image classification datasets from disk into plain numpy arrays.

Every reader returns an :class:`ImageSplits`: uint8 images of shape (N, C, H, W) with values
0..255 and int64 labels 0..K-1. Readers never need torch. Anything wrong with the files on disk
raises :class:`~gendisc.errors.DataError` whose message names the path and says how to fix it.

Downloads go over https and are checked against the published MD5s; a file placed by hand with
another checksum is read with a warning if it parses (CIFAR-10's pickles only when they match).
Hand-written rather than torchvision's classes, which refuse a hand-placed .gz whose MD5 differs
from upstream's (e.g. Debian's re-compressed Fashion-MNIST) and read IDX only once decompressed.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import tarfile
import urllib.request
import zlib
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

import numpy as np

from gendisc.errors import ConfigError, DataError

__all__ = [
    "DATASET_NAMES",
    "SPLIT_ARRAYS",
    "ImageSplits",
    "read_cifar10",
    "read_dataset",
    "read_digits",
    "read_idx_dataset",
    "read_image_folder",
    "read_medmnist",
    "read_svhn",
]

DATASET_NAMES = (
    "digits",
    "mnist",
    "fashion_mnist",
    "kmnist",
    "cifar10",
    "svhn",
    "medmnist",
    "image_folder",
)

log = logging.getLogger(__name__)

# where each dataset is downloaded from (https only) and the MD5s its authors published
IDX_MIRRORS = {
    "MNIST": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "FashionMNIST": "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "KMNIST": "https://codh.rois.ac.jp/kmnist/dataset/kmnist/",
}
IDX_MD5 = {
    "MNIST": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "FashionMNIST": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "KMNIST": {
        "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
        "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
        "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
        "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
    },
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
SVHN_URL = "https://ufldl.stanford.edu/housenumbers/"
SVHN_MD5 = {
    "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
}

IDX_CLASS_NAMES = {
    "MNIST": [str(i) for i in range(10)],
    "FashionMNIST": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
    "KMNIST": ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
}
CIFAR10_CLASS_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# the arrays of a dataset's splits: ImageSplits' fields, the keys of a MedMNIST .npz
SPLIT_ARRAYS = (
    "train_images",
    "train_labels",
    "val_images",
    "val_labels",
    "test_images",
    "test_labels",
)
_WHERE_HINT = (
    "Set `paths.data_dir=...` (or the GENDISC_DATA_DIR environment variable) to the folder "
    "that holds the datasets."
)


@dataclass
class ImageSplits:
    """A dataset's splits: uint8 images (N, C, H, W) and int64 labels (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    val_images: np.ndarray | None = None
    val_labels: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape (C, H, W) of one image."""
        c, h, w = self.train_images.shape[1:]
        return int(c), int(h), int(w)


# --------------------------------------------------------------------------------------------
# helpers


def md5sum(path: Path) -> str:
    """The MD5 of a file, as datasets publish it (read in 1 MiB chunks)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


_MD5_CACHE: dict[tuple[str, int, int], str] = {}  # (path, size, mtime): MD5, per process
_WARNED: set[str] = set()  # files already warned about in this process


def _md5_cached(path: Path) -> str:
    """The MD5 of ``path``, computed once per process while the file is unchanged."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _MD5_CACHE:
        _MD5_CACHE[key] = md5sum(path)
    return _MD5_CACHE[key]


def _checksum_differs(path: Path, expected: str | None) -> str | None:
    """None when ``path`` has the published MD5 ``expected``; else why it is unverified."""
    if expected is None:
        return "no published checksum for this file"
    actual = _md5_cached(path)
    return None if actual == expected else f"MD5 {actual}, the published one is {expected}"


def _warn_unverified(path: Path, reason: str) -> None:
    """Warn (once per process and file) that a file is read although unverified."""
    if str(path) not in _WARNED:
        _WARNED.add(str(path))
        log.warning(
            "%s is not the published file (%s); it parses, so it is used. Delete it and "
            "download it again (`data.download=true`) if you did not put it there on purpose.",
            path,
            reason,
        )


def _download(url: str, dest: Path, dataset: str, md5: str) -> None:
    """Download ``url`` to ``dest`` through a temporary file and check its MD5; DataError on
    any failure (nothing is left at ``dest`` then)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except (OSError, HTTPException, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"Downloading {dataset} from {url} failed ({exc}). Download it by hand (from a "
            f"machine with internet access) and put it at {dest}. {_WHERE_HINT}"
        ) from exc
    if digest.hexdigest() != md5:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"Downloading {dataset} from {url} gave a file with MD5 {digest.hexdigest()}, not "
            f"the published {md5} (a damaged transfer or a changed mirror); it was deleted. "
            f"Try again, or download it by hand and put it at {dest}."
        )
    os.replace(tmp, dest)


def _missing(dataset: str, expected: list[Path], extra: str = "") -> DataError:
    """The error for a dataset whose files are not on disk and may not be downloaded."""
    listing = "\n".join(f"  {p}" for p in expected)
    return DataError(
        f"{dataset} not found. Expected these files:\n{listing}\n{extra}"
        f"Set `data.download=true` to download it, or `paths.data_dir=...` (or the "
        f"GENDISC_DATA_DIR environment variable) to the folder that already holds it."
    )


def _corrupt(path: Path, reason: str, unverified: str | None = None) -> DataError:
    """The error for a file that exists but cannot be used (``unverified``: its checksum note)."""
    if unverified:
        reason = f"{reason}; {unverified}"
    return DataError(
        f"{path} is corrupt or truncated ({reason}). Delete it and download it again "
        f"(`data.download=true`) or copy it again from the original source."
    )


def _read_idx(path: Path, expect_images: bool, unverified: str | None = None) -> np.ndarray:
    """Parse one IDX file (optionally gzip-compressed) into a uint8 array (``unverified``: the
    file's checksum note, added to any error)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise _corrupt(path, f"cannot read it: {exc}", unverified) from exc
    header_len, magic_expected = (16, 2051) if expect_images else (8, 2049)
    if len(data) < header_len:
        raise _corrupt(
            path, f"{len(data)} bytes, shorter than the {header_len}-byte header", unverified
        )
    header = np.frombuffer(data, dtype=">u4", count=header_len // 4)
    if int(header[0]) != magic_expected:
        raise _corrupt(
            path, f"magic number {int(header[0])}, expected {magic_expected}", unverified
        )
    shape = tuple(int(v) for v in header[1:])
    expected_len = header_len + int(np.prod(shape))
    if len(data) != expected_len:
        raise _corrupt(
            path, f"{len(data)} bytes, expected {expected_len} for shape {shape}", unverified
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape)


def _int_labels(labels: np.ndarray, where: Path | str) -> np.ndarray:
    """Flatten (N,) or (N, 1) labels to int64 (N,); DataError for anything else."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{where}: labels have shape {labels.shape}, expected (N,) or (N, 1).")
    if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0):
        raise DataError(f"{where}: labels must be non-negative integers.")
    return labels.astype(np.int64)


# --------------------------------------------------------------------------------------------
# built-in datasets


def read_digits() -> ImageSplits:
    """scikit-learn's bundled 8x8 digits with a fixed stratified split (1437 train / 360 test)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=360, stratify=labels, random_state=0
    )
    return ImageSplits(x_train, y_train, x_test, y_test, [str(i) for i in range(10)])


def read_idx_dataset(root: str | Path, name: str, download: bool = False) -> ImageSplits:
    """MNIST, FashionMNIST or KMNIST from ``<root>/<name>/raw/`` (IDX files, gzipped or not)."""
    if name not in IDX_MIRRORS:
        raise ConfigError(f"Unknown IDX dataset {name!r}; choose one of {sorted(IDX_MIRRORS)}.")
    raw = Path(root).expanduser() / name / "raw"
    paths: dict[str, Path] = {}
    for key, stem in _IDX_FILES.items():
        plain, gz = raw / stem, raw / f"{stem}.gz"
        if gz.is_file():  # the published form, which has a checksum
            paths[key] = gz
        elif plain.is_file():
            paths[key] = plain
        elif download:
            _download(IDX_MIRRORS[name] + gz.name, gz, name, IDX_MD5[name][gz.name])
            paths[key] = gz
        else:
            expected = [raw / f"{s}.gz" for s in _IDX_FILES.values()]
            raise _missing(name, expected, "(decompressed files without .gz are read too.)\n")
    arrays = {}
    for key, path in paths.items():
        unverified = _checksum_differs(path, IDX_MD5[name].get(path.name))
        arrays[key] = _read_idx(path, key.endswith("images"), unverified)
        if unverified:
            _warn_unverified(path, unverified)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise DataError(
                f"{paths[f'{split}_images']} holds {len(images)} images but "
                f"{paths[f'{split}_labels']} holds {len(labels)} labels. Delete both and "
                f"download or copy them again."
            )
        if labels.size and labels.max() >= 10:
            raise _corrupt(paths[f"{split}_labels"], f"label {labels.max()} is not in 0..9")
    return ImageSplits(
        train_images=arrays["train_images"][:, None].copy(),
        train_labels=arrays["train_labels"].astype(np.int64),
        test_images=arrays["test_images"][:, None].copy(),
        test_labels=arrays["test_labels"].astype(np.int64),
        class_names=list(IDX_CLASS_NAMES[name]),
    )


def read_cifar10(root: str | Path, download: bool = False) -> ImageSplits:
    """CIFAR-10 (python pickle version) from ``<root>/cifar-10-batches-py/``.

    The batches are pickles, which can run code when unpickled: each one is unpickled only
    when its MD5 is the published one, and refused otherwise.
    """
    root = Path(root).expanduser()
    folder = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    files = [folder / n for n in names]
    if not all(f.is_file() for f in files):
        archive = root / "cifar-10-python.tar.gz"
        if not archive.is_file():
            if not download:
                raise _missing(
                    "CIFAR-10", files, f"(or the archive {archive}, which is extracted.)\n"
                )
            _download(CIFAR10_URL, archive, "CIFAR-10", CIFAR10_MD5)
        try:
            with tarfile.open(archive, "r:gz") as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(root, filter="data")
                else:  # pragma: no cover - Python without extraction filters
                    tar.extractall(root)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise _corrupt(archive, f"cannot extract it: {exc}") from exc
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise _corrupt(archive, f"it does not contain {missing[0].name}")

    images, labels = [], []
    for f in files:
        try:
            content = f.read_bytes()  # one read: the bytes checked are the bytes unpickled
        except OSError as exc:
            raise _corrupt(f, f"cannot read it: {exc}") from exc
        actual = hashlib.md5(content, usedforsecurity=False).hexdigest()
        if actual != CIFAR10_BATCH_MD5[f.name]:
            raise DataError(
                f"{f} is not the published CIFAR-10 batch (MD5 {actual}, the published one is "
                f"{CIFAR10_BATCH_MD5[f.name]}). The batches are Python pickles, which gendisc "
                f"unpickles only when they are the published files. Delete {folder} and "
                f"download it again (`data.download=true`), or extract the original "
                f"cifar-10-python.tar.gz into {root}."
            )
        try:
            batch = pickle.loads(content, encoding="bytes")
            data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            lab = np.asarray(batch[b"labels"], dtype=np.int64)
        except Exception as exc:
            raise _corrupt(f, f"not a CIFAR-10 batch: {exc!r}") from exc
        if len(data) != len(lab):
            raise _corrupt(f, f"{len(data)} images but {len(lab)} labels")
        images.append(data)
        labels.append(lab)
    return ImageSplits(
        train_images=np.concatenate(images[:5]),
        train_labels=np.concatenate(labels[:5]),
        test_images=images[5],
        test_labels=labels[5],
        class_names=list(CIFAR10_CLASS_NAMES),
    )


def read_svhn(root: str | Path, download: bool = False) -> ImageSplits:
    """SVHN (cropped digits, 32x32) from ``<root>/SVHN/{train,test}_32x32.mat``."""
    from scipy.io import loadmat

    folder = Path(root).expanduser() / "SVHN"
    files = [folder / "train_32x32.mat", folder / "test_32x32.mat"]
    splits = []
    for f in files:
        if not f.is_file():
            if not download:
                raise _missing("SVHN", files)
            _download(SVHN_URL + f.name, f, "SVHN", SVHN_MD5[f.name])
        unverified = _checksum_differs(f, SVHN_MD5[f.name])
        try:
            mat = loadmat(f)
            x, y = np.asarray(mat["X"]), np.asarray(mat["y"])
        except Exception as exc:
            reason = f"not an SVHN .mat file with keys X and y: {exc!r}"
            raise _corrupt(f, reason, unverified) from exc
        if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
            raise _corrupt(f, f"X has shape {x.shape} and y {y.shape}", unverified)
        if unverified:
            _warn_unverified(f, unverified)
        labels = _int_labels(y, f)
        labels[labels == 10] = 0
        splits.append((np.ascontiguousarray(x.transpose(3, 2, 0, 1), dtype=np.uint8), labels))
    (x_train, y_train), (x_test, y_test) = splits
    return ImageSplits(x_train, y_train, x_test, y_test, [str(i) for i in range(10)])


def read_medmnist(path: str | Path) -> ImageSplits:
    """A single-label 2D MedMNIST ``.npz`` (e.g. pathmnist.npz) with its official val split."""
    path = Path(path).expanduser()
    expected = ", ".join(SPLIT_ARRAYS)
    if not path.is_file():
        raise DataError(
            f"MedMNIST file {path} not found. Download a 2D MedMNIST .npz (e.g. "
            f"pathmnist.npz, linked from https://medmnist.com) and set "
            f"`data.path=...` to it. It must contain the arrays {expected}."
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k]) for k in SPLIT_ARRAYS if k in npz.files}
    except Exception as exc:
        raise DataError(
            f"{path} is not a valid .npz file ({exc!r}). Expected a MedMNIST .npz with the "
            f"arrays {expected}; delete it and download it again."
        ) from exc
    missing = [k for k in SPLIT_ARRAYS if k not in arrays]
    if missing:
        raise DataError(f"{path} lacks the arrays {missing}; a MedMNIST .npz has {expected}.")

    out: dict[str, np.ndarray] = {}
    for split in ("train", "val", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if y.ndim == 2 and y.shape[1] > 1:
            raise DataError(
                f"{path}: {split}_labels has {y.shape[1]} columns (a multi-label set such as "
                f"ChestMNIST). Only single-label MedMNIST sets are supported."
            )
        if x.ndim == 3:
            x = x[:, None]
        elif x.ndim == 4 and x.shape[-1] in (1, 3):
            x = x.transpose(0, 3, 1, 2)
        else:
            raise DataError(
                f"{path}: {split}_images has shape {x.shape}; expected (N, H, W) or "
                f"(N, H, W, 3). Only 2D MedMNIST sets are supported."
            )
        if x.dtype != np.uint8:
            if x.size and (x.min() < 0 or x.max() > 255):
                raise DataError(f"{path}: {split}_images has values outside 0..255.")
            x = x.astype(np.uint8)
        if len(x) != len(y):
            raise DataError(f"{path}: {len(x)} {split} images but {len(y)} labels.")
        out[f"{split}_images"] = np.ascontiguousarray(x)
        out[f"{split}_labels"] = _int_labels(y, f"{path} ({split}_labels)")
    num_classes = 1 + max(int(out[f"{s}_labels"].max(initial=0)) for s in ("train", "val", "test"))
    return ImageSplits(class_names=[str(i) for i in range(num_classes)], **out)


# --------------------------------------------------------------------------------------------
# a user's folder of images


def _class_images(folder: Path) -> dict[str, list[Path]]:
    """Map each class sub-folder of ``folder`` (sorted, hidden ones skipped) to its images."""
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    return {
        d.name: sorted(
            f
            for f in d.iterdir()
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS
        )
        for d in classes
    }


def _load_images(
    files: list[Path], image_size: int | None, grayscale: bool | None
) -> tuple[np.ndarray, ...]:
    """Load all ``files`` into uint8 arrays (N, C, H, W), one array for all of them."""
    from PIL import Image

    def fail(f: Path, exc: BaseException) -> DataError:
        return DataError(
            f"Cannot read the image {f} ({exc}). Delete or replace the file and run again."
        )

    modes, sizes = [], set()
    for f in files:  # headers only: decide the colour mode and check sizes
        try:
            with Image.open(f) as im:
                modes.append(im.mode)
                sizes.add(im.size)
        except Exception as exc:
            raise fail(f, exc) from exc
    if grayscale is None:
        grayscale = all(m in ("L", "1") for m in modes)
    if image_size is None and len(sizes) > 1:
        raise DataError(
            f"The images have {len(sizes)} different sizes (e.g. {sorted(sizes)[:3]}). Set "
            f"`data.image_size=...` to resize them all to one square size."
        )
    mode = "L" if grayscale else "RGB"
    arrays = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert(mode)
                if image_size is not None and im.size != (image_size, image_size):
                    im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
                a = np.asarray(im, dtype=np.uint8)
        except Exception as exc:
            raise fail(f, exc) from exc
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return tuple(arrays)


def read_image_folder(
    path: str | Path,
    image_size: int | None = None,
    grayscale: bool | None = None,
    test_fraction: float = 0.2,
    split_seed: int = 0,
) -> ImageSplits:
    """A folder of class sub-folders (``<path>/<class>/<image>.png``).

    If ``<path>/train`` and ``<path>/test`` exist they are the splits; otherwise each class is
    split with a seeded shuffle, ``test_fraction`` of its images going to the test split.
    ``grayscale=None`` means grayscale iff every image is mode "L" or "1".
    """
    path = Path(path).expanduser()
    layout = f"Expected the layout {path}/<class>/<image>.png (or train/ and test/ folders each "
    layout += "laid out like that), with at least two class folders."
    if not path.is_dir():
        raise DataError(f"Image folder {path} does not exist. {layout} Set `data.path=...`.")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"data.test_fraction={test_fraction} must be between 0 and 1 (e.g. 0.2).")

    pre_split = (path / "train").is_dir() and (path / "test").is_dir()
    train_dir = path / "train" if pre_split else path
    train = _class_images(train_dir)
    if not train or not any(train.values()):
        raise DataError(f"No class sub-folders with images found in {train_dir}. {layout}")
    if len(train) < 2:
        raise DataError(
            f"Only one class folder ({next(iter(train))}) in {train_dir}; a classifier needs at "
            f"least two. {layout}"
        )
    empty = [c for c, fs in train.items() if not fs]
    if empty:
        raise DataError(f"The class folders {empty} in {train_dir} hold no images. {layout}")
    class_names = list(train)

    if pre_split:
        test = _class_images(path / "test")
        if set(test) != set(train):
            raise DataError(
                f"{path / 'test'} has the class folders {sorted(test)} but {train_dir} has "
                f"{class_names}; both must have the same class folders."
            )
        train_files = [(f, k) for k, c in enumerate(class_names) for f in train[c]]
        test_files = [(f, k) for k, c in enumerate(class_names) for f in test[c]]
        if not test_files:
            raise DataError(f"No images found in the class folders of {path / 'test'}. {layout}")
    else:
        rng = np.random.default_rng(split_seed)
        train_files, test_files = [], []
        for k, c in enumerate(class_names):
            files = train[c]
            if len(files) < 2:
                raise DataError(
                    f"Class {c!r} ({path / c}) has only {len(files)} image; at least 2 are "
                    f"needed to split it into train and test. Add images, or provide "
                    f"{path}/train and {path}/test folders."
                )
            n_test = min(max(round(len(files) * test_fraction), 1), len(files) - 1)
            order = rng.permutation(len(files))
            test_files += [(files[i], k) for i in sorted(order[:n_test])]
            train_files += [(files[i], k) for i in sorted(order[n_test:])]

    files = [f for f, _ in train_files + test_files]
    images = _load_images(files, image_size, grayscale)
    n_train = len(train_files)
    return ImageSplits(
        train_images=np.stack(images[:n_train]),
        train_labels=np.array([k for _, k in train_files], dtype=np.int64),
        test_images=np.stack(images[n_train:]),
        test_labels=np.array([k for _, k in test_files], dtype=np.int64),
        class_names=class_names,
    )


# --------------------------------------------------------------------------------------------
# dispatch


def read_dataset(
    name: str,
    root: str | Path,
    download: bool = False,
    path: str | None = None,
    **kwargs,
) -> ImageSplits:
    """Read the dataset called ``name`` (one of DATASET_NAMES) from under ``root``.

    ``path`` is the file (medmnist) or folder (image_folder) to read; extra keyword arguments
    go to :func:`read_image_folder` and are ignored by the other readers.
    """
    key = name.lower()
    idx_names = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}
    if key in ("medmnist", "image_folder") and not path:
        what = "a MedMNIST .npz file" if key == "medmnist" else "a folder of class sub-folders"
        raise ConfigError(f"data={key} needs `data.path=...` pointing to {what}.")
    if key == "digits":
        return read_digits()
    if key in idx_names:
        return read_idx_dataset(root, idx_names[key], download=download)
    if key == "cifar10":
        return read_cifar10(root, download=download)
    if key == "svhn":
        return read_svhn(root, download=download)
    if key == "medmnist":
        return read_medmnist(path)  # type: ignore[arg-type]
    if key == "image_folder":
        return read_image_folder(path, **kwargs)  # type: ignore[arg-type]
    raise ConfigError(
        f"Unknown dataset {name!r}. Choose one with `data=<name>`, one of: "
        f"{', '.join(DATASET_NAMES)}."
    )
