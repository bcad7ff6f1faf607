"""Read image classification datasets into plain numpy arrays, through the maintained libraries.

Every reader returns an :class:`ImageSplits`: uint8 images of shape (N, C, H, W) with values
0..255 and int64 labels 0..K-1, and the dataset's class names. The files are found, downloaded
(``download=True``: the libraries' mirrors, checked against their published MD5s) and parsed by
``torchvision.datasets`` (MNIST, FashionMNIST, KMNIST, CIFAR10, SVHN, ImageFolder's discovery)
and the ``medmnist`` package (MedMNIST, by name through its ``INFO``). Anything wrong with the
files on disk raises :class:`~gendisc.errors.DataError` naming the path and what to do; a bad
option raises :class:`~gendisc.errors.ConfigError`.

torchvision's MNIST classes read the *decompressed* IDX files from ``<root>/<Name>/raw/`` and
accept the published ``.gz`` only through their download path (which insists on upstream MD5s,
so it refuses e.g. Debian's re-compressed Fashion-MNIST). When only the ``.gz`` files are there,
they are decompressed with torchvision's own ``extract_archive`` into ``cache_dir`` (the same
layout), so a read-only data folder is never written to, and the class reads that copy.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gendisc.errors import ConfigError, DataError

__all__ = [
    "DATASET_NAMES",
    "SPLIT_ARRAYS",
    "ImageSplits",
    "call_reader",
    "medmnist_2d_names",
    "read_cifar10",
    "read_dataset",
    "read_digits",
    "read_image_folder",
    "read_medmnist",
    "read_mnist_family",
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
# gendisc's names of the MNIST-like sets: torchvision's class (also its folder under the root)
MNIST_FAMILY = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}

log = logging.getLogger(__name__)

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
    "Set `data.download=true` to download it, or `paths.data_dir=...` (or the GENDISC_DATA_DIR "
    "environment variable) to the folder that already holds it."
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


def _missing(dataset: str, expected: list[Path], extra: str = "") -> DataError:
    """The error for a dataset whose files are not on disk and may not be downloaded."""
    listing = "\n".join(f"  {p}" for p in expected)
    return DataError(f"{dataset} not found. Expected these files:\n{listing}\n{extra}{_WHERE_HINT}")


def _unreadable(
    dataset: str, where: Path, exc: BaseException, downloading: bool = False
) -> DataError:
    """The error for files that the library cannot use, or (``downloading``) cannot fetch."""
    what = f"{type(exc).__name__}: {exc}".strip()
    if downloading:
        return DataError(
            f"{dataset} could not be downloaded or read into {where} ({what}). Without a "
            f"network, download it on a machine that has one and copy it to {where}, then run "
            f"with `data.download=false`; or set `paths.data_dir=...` (or GENDISC_DATA_DIR) to "
            f"the folder that already holds it."
        )
    return DataError(
        f"{dataset} could not be read from {where} ({what}). The files are corrupt, truncated "
        f"or not the published ones: delete them and download them again "
        f"(`data.download=true`), or copy them again from the original source."
    )


def _nchw(images: Any) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) images (array or tensor) as a contiguous uint8 (N, C, H, W)."""
    x = np.asarray(images)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.uint8)


def _labels(labels: Any) -> np.ndarray:
    """(N,) or (N, 1) labels (array, tensor or list) as int64 (N,)."""
    y = np.asarray(labels)
    return (y[:, 0] if y.ndim == 2 else y).astype(np.int64)


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


def _decompressed_copy(raw: Path, stems: list[str], cache_dir: Path, name: str) -> Path:
    """Decompress ``raw/<stem>.gz`` into ``cache_dir/<name>/raw/<stem>`` (torchvision's
    ``extract_archive``; redone when a .gz is newer than its copy) and return ``cache_dir``."""
    from torchvision.datasets.utils import extract_archive

    target = cache_dir / name / "raw"
    target.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        gz, out = raw / f"{stem}.gz", target / stem
        if out.is_file() and out.stat().st_mtime_ns >= gz.stat().st_mtime_ns:
            continue
        # decompress beside the copy, then rename: concurrent runs never see half a file
        with tempfile.TemporaryDirectory(dir=target) as tmp:
            try:
                extract_archive(gz, tmp)
            except (OSError, EOFError, zlib.error) as exc:
                raise _unreadable(name, gz, exc) from exc
            os.replace(Path(tmp) / stem, out)
    return cache_dir


def read_mnist_family(
    root: str | Path, name: str, download: bool = False, cache_dir: str | Path | None = None
) -> ImageSplits:
    """MNIST, FashionMNIST or KMNIST (torchvision's classes) from ``<root>/<name>/raw/``.

    Read in this order: the decompressed IDX files there; else the ``.gz`` files there,
    decompressed into ``cache_dir`` (default: beside them, as torchvision's download does);
    else, with ``download``, torchvision's download (published MD5s checked) into ``root``.
    """
    from torchvision import datasets

    if name not in MNIST_FAMILY.values():
        raise ConfigError(f"Unknown IDX dataset {name!r}; choose one of {sorted(MNIST_FAMILY)}.")
    cls = getattr(datasets, name)
    root = Path(root).expanduser()
    raw = root / name / "raw"
    stems = [os.path.splitext(os.path.basename(f))[0] for f, _ in cls.resources]
    read_root, fetch = root, False
    if all((raw / s).is_file() for s in stems):
        pass
    elif all((raw / f"{s}.gz").is_file() for s in stems):
        copy_root = Path(cache_dir).expanduser() if cache_dir else root
        read_root = _decompressed_copy(raw, stems, copy_root, name)
    elif download:
        fetch = True
    else:
        expected = [raw / f"{s}.gz" for s in stems]
        raise _missing(name, expected, "(decompressed files without .gz are read too.)\n")
    splits = []
    for train in (True, False):
        try:
            dataset = cls(str(read_root), train=train, download=fetch)
        except Exception as exc:  # the library's parse or download errors: RuntimeError, ...
            raise _unreadable(name, read_root / name / "raw", exc, fetch) from exc
        if len(dataset.data) != len(dataset.targets):
            raise _unreadable(
                name,
                read_root / name / "raw",
                ValueError(f"{len(dataset.data)} images but {len(dataset.targets)} labels"),
            )
        splits.append((_nchw(dataset.data.numpy()), _labels(dataset.targets.numpy())))
    (x_train, y_train), (x_test, y_test) = splits
    return ImageSplits(x_train, y_train, x_test, y_test, list(cls.classes))


def read_cifar10(root: str | Path, download: bool = False) -> ImageSplits:
    """CIFAR-10 (torchvision's class) from ``<root>/cifar-10-batches-py/``.

    torchvision checks every batch against its published MD5 before unpickling it (pickles can
    run code), so a file that is not the published one is refused, never unpickled.
    """
    from torchvision.datasets import CIFAR10

    root = Path(root).expanduser()
    folder = root / CIFAR10.base_folder
    if not download and not folder.is_dir():
        files = [folder / f for f, _ in CIFAR10.train_list + CIFAR10.test_list]
        raise _missing("CIFAR-10", files)
    splits = []
    for train in (True, False):
        try:
            dataset = CIFAR10(str(root), train=train, download=download)
        except Exception as exc:
            raise _unreadable("CIFAR-10", folder, exc, download) from exc
        splits.append((_nchw(dataset.data), _labels(dataset.targets)))
    (x_train, y_train), (x_test, y_test) = splits
    return ImageSplits(x_train, y_train, x_test, y_test, list(dataset.classes))


def read_svhn(root: str | Path, download: bool = False) -> ImageSplits:
    """SVHN cropped digits (torchvision's class, label 10 read as 0) from ``<root>/SVHN/``."""
    from torchvision.datasets import SVHN

    folder = Path(root).expanduser() / "SVHN"
    files = [folder / SVHN.split_list[s][1] for s in ("train", "test")]
    if not download and not all(f.is_file() for f in files):
        raise _missing("SVHN", files)
    splits = []
    for split in ("train", "test"):
        try:
            dataset = SVHN(str(folder), split=split, download=download)
        except Exception as exc:
            raise _unreadable("SVHN", folder, exc, download) from exc
        splits.append((np.ascontiguousarray(dataset.data, dtype=np.uint8), _labels(dataset.labels)))
    (x_train, y_train), (x_test, y_test) = splits
    return ImageSplits(x_train, y_train, x_test, y_test, [str(i) for i in range(10)])


def medmnist_2d_names() -> list[str]:
    """The 2D MedMNIST datasets the ``medmnist`` package knows (its ``INFO`` flags)."""
    from medmnist import INFO

    return [flag for flag in INFO if not flag.endswith("3d")]


def read_medmnist(
    name: str | None = None,
    root: str | Path | None = None,
    path: str | Path | None = None,
    size: int | None = None,
    download: bool = False,
) -> ImageSplits:
    """A 2D MedMNIST dataset (the ``medmnist`` package's class) with its official splits.

    By ``name`` (a flag of ``medmnist.INFO``, e.g. ``breastmnist``) from
    ``<root>/medmnist/<name>[_<size>].npz`` (the package's root layout), downloaded there with
    ``download``; or from ``path``, a file named as the package names them. Class names come
    from ``INFO``. Multi-label sets (ChestMNIST) are refused; ordinal regression (RetinaMNIST) is
    read as multi-class.
    """
    import medmnist
    from medmnist import INFO

    names = ", ".join(medmnist_2d_names())
    if path:
        file = Path(path).expanduser()
        match = re.fullmatch(r"(?P<flag>[a-z0-9]+?)(?:_(?P<size>\d+))?", file.stem.lower())
        flag = match["flag"] if match else file.stem
        if flag not in INFO:
            raise ConfigError(
                f"data.path={path}: the medmnist package reads files named <name>.npz or "
                f"<name>_<size>.npz, with <name> one of: {names}. Rename the file, or use "
                f"data.name=<name> to read it from <paths.data_dir>/medmnist/."
            )
        if name and name.lower() != flag:
            raise ConfigError(
                f"data.name={name} and data.path={path} name different MedMNIST datasets: "
                f"set only one."
            )
        file_size = int(match["size"]) if match["size"] else 28
        if size not in (None, file_size):
            raise ConfigError(f"data.size={size} but data.path={path} holds {file_size}px images.")
        size, folder = file_size, file.parent
        if not file.is_file():
            raise DataError(
                f"MedMNIST file {file} not found. Set `data.path=...` to a MedMNIST .npz, or "
                f"use data.name={flag} data.download=true to download it."
            )
    else:
        if not name:
            raise ConfigError(
                f"data=medmnist needs data.name=<name> (one of: {names}) or "
                f"data.path=<file>.npz, e.g. `data=medmnist data.name=breastmnist`."
            )
        flag = name.lower()
        if flag not in INFO:
            raise ConfigError(f"Unknown MedMNIST dataset data.name={name}; choose one of: {names}.")
        folder = Path(root or ".").expanduser() / "medmnist"
    info = INFO[flag]
    if flag.endswith("3d"):
        raise ConfigError(f"{flag} is a 3D MedMNIST dataset; only 2D ones are supported: {names}.")
    if info["task"].startswith("multi-label"):
        raise ConfigError(
            f"{flag} is a multi-label task ({info['task']}: several labels per image); gendisc "
            f"trains single-label classifiers. Choose a binary or multi-class MedMNIST dataset."
        )
    if info["task"] == "ordinal-regression":
        log.info("%s is an ordinal-regression task: treated as multi-class classification.", flag)
    cls = getattr(medmnist, info["python_class"])
    size = 28 if size is None else int(size)
    if size not in cls.available_sizes:
        raise ConfigError(
            f"data.size={size}: {flag} comes in the sizes {list(cls.available_sizes)}."
        )
    suffix = "" if size == 28 else f"_{size}"
    file = folder / f"{flag}{suffix}.npz"
    download = download and not path and not file.is_file()  # as torchvision: a file there is used
    if not download and not file.is_file():
        raise _missing(
            f"MedMNIST {flag} ({size}px)", [file], f"(published at {info['url' + suffix]})\n"
        )
    if download:
        folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "val", "test"):
        try:
            dataset = cls(split=split, root=str(folder), size=size, download=download)
            arrays[f"{split}_images"] = _nchw(dataset.imgs)
            arrays[f"{split}_labels"] = _labels(dataset.labels)
        except Exception as exc:
            raise _unreadable(f"MedMNIST {flag}", file, exc, download) from exc
        download = False  # fetched (and checked) once
    class_names = [info["label"][str(k)] for k in range(len(info["label"]))]
    return ImageSplits(class_names=class_names, **arrays)


# --------------------------------------------------------------------------------------------
# a user's folder of images


def _class_samples(folder: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """torchvision's ImageFolder discovery of ``folder``: its class sub-folders (sorted; hidden
    ones skipped) and every image file under them as (path, class index), sorted."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension, make_dataset

    classes = sorted(
        e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")
    )

    def is_image(p: str) -> bool:
        return not os.path.basename(p).startswith(".") and has_file_allowed_extension(
            p, IMG_EXTENSIONS
        )

    class_to_idx = {c: k for k, c in enumerate(classes)}
    if not classes:
        return [], []
    return classes, make_dataset(
        str(folder), class_to_idx, is_valid_file=is_image, allow_empty=True
    )


def _class_images(folder: Path) -> dict[str, list[Path]]:
    """Map each class sub-folder of ``folder`` to its images (torchvision's discovery)."""
    classes, samples = _class_samples(folder)
    return {c: [Path(p) for p, idx in samples if idx == k] for k, c in enumerate(classes)}


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


def call_reader(reader: Callable[..., ImageSplits], dataset: str, **context: Any) -> ImageSplits:
    """``reader`` (a dataset config's ``reader``) called with the entries of ``context``
    (``root``, ``download``, ``cache_dir``, ``path``) that its signature takes, so that a reader
    states only what it needs; its result must be an :class:`ImageSplits`."""
    try:
        parameters = dict(inspect.signature(reader).parameters)
    except (TypeError, ValueError):  # no signature to read: give it everything
        parameters = None
    takes_all = parameters is None or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    given = {k: v for k, v in context.items() if takes_all or k in parameters}
    splits = reader(**given)
    if not isinstance(splits, ImageSplits):
        raise DataError(
            f"data={dataset}: its reader returned {type(splits).__name__}, not ImageSplits "
            "(uint8 images (N, C, H, W), int64 labels, class names): see README 'Add a dataset'."
        )
    return splits


def read_dataset(
    name: str,
    root: str | Path,
    download: bool = False,
    path: str | None = None,
    *,
    medmnist_name: str | None = None,
    size: int | None = None,
    cache_dir: str | Path | None = None,
    **kwargs: Any,
) -> ImageSplits:
    """Read the built-in dataset called ``name`` (one of DATASET_NAMES) from under ``root``:
    what a data config without a ``reader`` (stored before readers were named) reads.

    ``path`` is the file (medmnist) or folder (image_folder) to read; ``medmnist_name`` and
    ``size`` pick a MedMNIST dataset by name; ``cache_dir`` holds decompressed copies of the
    MNIST-like ``.gz`` files. Extra keyword arguments go to :func:`read_image_folder`.
    """
    key = name.lower()
    if key == "image_folder" and not path:
        raise ConfigError(
            "data=image_folder needs `data.path=...` pointing to a folder of class sub-folders."
        )
    if key == "digits":
        return read_digits()
    if key in MNIST_FAMILY:
        return read_mnist_family(root, MNIST_FAMILY[key], download=download, cache_dir=cache_dir)
    if key == "cifar10":
        return read_cifar10(root, download=download)
    if key == "svhn":
        return read_svhn(root, download=download)
    if key == "medmnist":
        return read_medmnist(medmnist_name, root, path=path, size=size, download=download)
    if key == "image_folder":
        return read_image_folder(path, **kwargs)  # type: ignore[arg-type]
    raise ConfigError(
        f"Unknown dataset {name!r}. Choose one with `data=<name>`, one of: "
        f"{', '.join(DATASET_NAMES)}."
    )
