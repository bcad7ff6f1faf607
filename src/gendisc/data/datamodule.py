"""One LightningDataModule for every dataset, with the few-label protocol built in."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from lightning import LightningDataModule
from torch import Tensor

from gendisc.data.augment import Augment
from gendisc.data.batches import EvalBatches, TrainBatches, to_unit_range
from gendisc.data.protocol import (
    ALL_LABELS_VAL_SIZE,
    OFFICIAL,
    LabelSplit,
    split_labels,
    validation_setting,
)
from gendisc.data.readers import SPLIT_ARRAYS, ImageSplits, call_reader, read_dataset
from gendisc.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class FewLabelDataModule(LightningDataModule):
    """Holds a dataset in memory and serves the few-label protocol.

    Args:
        dataset: the dataset's name (run folders, reports, caches).
        reader: the function that reads it (a partial from the data config: ``conf/data/*.yaml``
            name theirs, e.g. ``gendisc.data.readers.read_mnist_family``), returning an
            :class:`~gendisc.data.readers.ImageSplits`; it is called with those of ``root``
            (``data_dir``), ``download``, ``cache_dir`` and ``path`` that it takes. None: the
            built-in dataset called ``dataset`` (configs stored before readers were named).
        data_dir: root folder of the downloadable datasets (``paths.data_dir``).
        path: the file (medmnist) or folder (image_folder) to read.
        name: the MedMNIST dataset (a flag of ``medmnist.INFO``, e.g. ``breastmnist``), read from
            ``<data_dir>/medmnist/`` (the package's root layout).
        size: MedMNIST image size (28 or a MedMNIST+ size the dataset has: 64, 128, 224).
        cache_dir: where the MNIST-like ``.gz`` files are decompressed for torchvision (None:
            beside them).
        download: fetch missing files from the dataset's public mirror.
        labels_per_class: labeled examples per class, or None for all labels.
        val_size: validation images carved from the training set first (a count or a
            fraction), or ``"official"``: the dataset's own validation split (MedMNIST).
        val_per_class: labeled validation images per class, drawn from the training set after
            the labeled ones with the same ``data_seed``. Set at most one of the two; neither
            (the default): ``val_per_class = labels_per_class`` with a label budget, and
            ``val_size = all_labels_val_size`` with all labels
            (:func:`~gendisc.data.protocol.validation_setting`).
        all_labels_val_size: ``val_size`` when all labels are used and neither option is set
            (the data configs': 200 on digits, 5000 on MNIST-like sets, official on MedMNIST).
        data_seed: seeds the permutation that picks validation and labeled images; independent
            of the training seed.
        batch_size: labeled images per training step.
        balanced_batches: draw the labeled batches class-balanced (each class equally often, with
            replacement) for a labeled set whose classes differ in size (all labels of an
            imbalanced dataset, an image folder); choose it on validation metrics, never on test.
        unlabeled_batch_size: unlabeled images per stream per step (default: batch_size).
        eval_batch_size: images per validation/test batch.
        device_memory_mb: keep the uint8 dataset on the training accelerator when it needs less
            than this; batches are then sliced there with no host-to-device copies.
        reader_options: extra keyword arguments of a built-in reader chosen by ``dataset``
            (configs stored before readers were named; a config with ``reader`` binds them there).
        augment: classical augmentation of the training batches (``augment=`` config group),
            applied on the training device after the transfer; never to validation or test.

    Attributes:
        unlabeled_streams: independent unlabeled batches per training step (0 for supervised
            modules). The model decides it; ``gendisc.utils.build.build`` copies the model's
            value here, so the data never looks up the module it serves.
    """

    def __init__(
        self,
        dataset: str = "digits",
        reader: Callable[..., ImageSplits] | None = None,
        data_dir: str = "data",
        path: str | None = None,
        name: str | None = None,
        size: int | None = None,
        cache_dir: str | None = None,
        download: bool = False,
        labels_per_class: int | None = 10,
        val_size: int | float | str | None = None,
        val_per_class: int | None = None,
        all_labels_val_size: int | float | str | None = ALL_LABELS_VAL_SIZE,
        data_seed: int = 0,
        batch_size: int = 100,
        balanced_batches: bool = False,
        unlabeled_batch_size: int | None = None,
        eval_batch_size: int = 1000,
        device_memory_mb: float = 4096,
        reader_options: dict | None = None,
        augment: Augment | None = None,
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.reader = reader
        self.data_dir = data_dir
        self.path = path
        self.name = name
        self.size = size
        self.cache_dir = cache_dir
        self.download = download
        self.labels_per_class = labels_per_class
        self.val_size = val_size
        self.val_per_class = val_per_class
        self.all_labels_val_size = all_labels_val_size
        self.data_seed = data_seed
        self.batch_size = batch_size
        self.balanced_batches = bool(balanced_batches)
        self.unlabeled_batch_size = unlabeled_batch_size or batch_size
        self.eval_batch_size = eval_batch_size
        self.device_memory_mb = device_memory_mb
        self.reader_options = dict(reader_options or {})
        self.augment = augment
        self.unlabeled_streams = 0
        if batch_size < 1 or self.unlabeled_batch_size < 1:
            raise ConfigError("data.batch_size and data.unlabeled_batch_size must be at least 1.")
        # what validates (one of the two None): the options as set, or the default
        self.validation = validation_setting(
            labels_per_class, val_size, val_per_class, all_labels_val_size
        )
        self.class_names: list[str] = []
        self.split: LabelSplit | None = None
        self.train_images = self.train_labels = self.val_images = self.val_labels = None
        self.test_images = self.test_labels = None

    # ----------------------------------------------------------------------------------- loading
    def prepare_data(self) -> None:
        """Download missing files (rank 0 only, as Lightning calls it)."""
        if self.download:
            self._read()

    def _read(self) -> ImageSplits:
        root = Path(self.data_dir).expanduser()
        if self.reader is not None:
            return call_reader(
                self.reader,
                self.dataset,
                root=root,
                download=self.download,
                cache_dir=self.cache_dir,
                path=self.path,
            )
        return read_dataset(
            self.dataset,
            root=root,
            download=self.download,
            path=self.path,
            medmnist_name=self.name,
            size=self.size,
            cache_dir=self.cache_dir,
            **self.reader_options,
        )

    def load(self) -> FewLabelDataModule:
        """Read the dataset and apply the label protocol (once; later calls do nothing)."""
        if self.split is not None:
            return self
        splits = self._read()
        self.class_names = list(splits.class_names)
        val_size, val_per_class = self.validation
        if val_size == OFFICIAL:
            if splits.val_images is None:
                raise ConfigError(
                    f"data.val_size={OFFICIAL} asks for the official validation split, which "
                    f"{self.dataset} does not have: set data.val_size to a count or fraction, "
                    f"or data.val_per_class to a count per class."
                )
            split = split_labels(
                splits.train_labels, self.labels_per_class, 0, self.data_seed, self.class_names
            )
            val_images, val_labels = splits.val_images, splits.val_labels
        else:
            try:
                split = split_labels(
                    splits.train_labels,
                    self.labels_per_class,
                    val_size,
                    self.data_seed,
                    self.class_names,
                    val_per_class=val_per_class,
                )
            except DataError as error:
                if self.val_per_class is not None or val_per_class is None:
                    raise
                raise DataError(
                    f"{error} data.val_per_class was not set: by default it is "
                    f"data.labels_per_class={self.labels_per_class}; set data.val_per_class or "
                    f"data.val_size instead."
                ) from error
            val_images = splits.train_images[split.validation]
            val_labels = splits.train_labels[split.validation]
        self.train_images = torch.from_numpy(np.ascontiguousarray(splits.train_images))
        self.train_labels = torch.from_numpy(splits.train_labels.astype(np.int64))
        self.val_images = torch.from_numpy(np.ascontiguousarray(val_images))
        self.val_labels = torch.from_numpy(np.asarray(val_labels, dtype=np.int64))
        self.test_images = torch.from_numpy(np.ascontiguousarray(splits.test_images))
        self.test_labels = torch.from_numpy(splits.test_labels.astype(np.int64))
        self.split = split
        log.info("Data %s: %s", self.dataset, self.counts)
        if self.val_size is None and self.val_per_class is None:
            setting = "val_size" if val_per_class is None else "val_per_class"
            value = val_size if val_per_class is None else val_per_class
            log.info(
                "Validation: the default data.%s=%s (data.labels_per_class=%s)",
                setting,
                value,
                self.labels_per_class,
            )
        return self

    def setup(self, stage: str | None = None) -> None:
        self.load()
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        if (
            device is not None
            and device.type != "cpu"
            and self._nbytes() <= self.device_memory_mb * 2**20
        ):
            self._move(device)

    def _tensors(self) -> list[str]:
        return list(SPLIT_ARRAYS)

    def _nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in self._tensors())

    def _move(self, device: torch.device) -> None:
        for name in self._tensors():
            setattr(self, name, getattr(self, name).to(device))

    # ------------------------------------------------------------------------------- properties
    @property
    def num_classes(self) -> int:
        return len(self.load().class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.load().train_images.shape[1:])

    @property
    def labeled_index(self) -> Tensor:
        return torch.from_numpy(self.load().split.labeled)

    @property
    def unlabeled_index(self) -> Tensor:
        return torch.from_numpy(self.load().split.unlabeled)

    @property
    def counts(self) -> dict[str, int]:
        """Sizes of the four sets, as reported in metrics.json."""
        split = self.load().split
        return {
            "data/labeled": len(split.labeled),
            "data/unlabeled": len(split.unlabeled),
            "data/val": len(self.val_labels),
            "data/test": len(self.test_labels),
        }

    def unlabeled_sample(self, count: int, seed: int = 0) -> Tensor:
        """``count`` unlabeled training images in [-1, 1] (e.g. for data-dependent init)."""
        pool = self.unlabeled_index
        pick = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:count]
        return to_unit_range(self.train_images[pool[pick].to(self.train_images.device)])

    def labeled_sample(self, count: int, seed: int = 0) -> Tensor:
        """``count`` labeled training images in [-1, 1], the labeled set shuffled and tiled
        as the training batches tile it when it has fewer images."""
        pool = self.labeled_index
        generator = torch.Generator().manual_seed(seed)
        repeats = -(-count // len(pool))
        pick = torch.cat([torch.randperm(len(pool), generator=generator) for _ in range(repeats)])
        return to_unit_range(self.train_images[pool[pick[:count]].to(self.train_images.device)])

    # ------------------------------------------------------------------------------ dataloaders
    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self) -> TrainBatches:
        rank, world = self._rank_world()
        return TrainBatches(
            self.train_images,
            self.train_labels,
            self.labeled_index,
            self.unlabeled_index,
            batch_size=self.batch_size,
            unlabeled_batch_size=self.unlabeled_batch_size,
            unlabeled_streams=self.unlabeled_streams,
            seed=torch.initial_seed() % 2**31,
            rank=rank,
            world_size=world,
            current_epoch=(lambda: self.trainer.current_epoch) if self.trainer else None,
            balanced=self.balanced_batches,
        )

    def on_after_batch_transfer(self, batch: object, dataloader_idx: int) -> object:
        """Augment training batches on the device they were moved to (evaluation untouched)."""
        augment = self.augment
        if augment is None or not augment.active or not isinstance(batch, dict):
            return batch
        if self.trainer is None or not self.trainer.training:
            return batch
        return augment.augment_batch(batch)

    def val_dataloader(self) -> EvalBatches:
        return EvalBatches(
            self.val_images, self.val_labels, self.eval_batch_size, *self._rank_world()
        )

    def test_dataloader(self) -> EvalBatches:
        return EvalBatches(
            self.test_images, self.test_labels, self.eval_batch_size, *self._rank_world()
        )
