"""Batches sliced from in-memory tensors: no Dataset, no per-item Python work.

Images are stored as one uint8 tensor (on the training device when it fits) and turned into
floats in [-1, 1] one batch at a time. Each loader shards itself across distributed ranks, so the
trainer runs with ``use_distributed_sampler=False``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor


def to_unit_range(images: Tensor) -> Tensor:
    """uint8 images in 0..255 -> float32 in [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


def tiled_permutation(size: int, length: int, generator: torch.Generator) -> Tensor:
    """Concatenated independent permutations of ``range(size)``, cut to ``length``."""
    repeats = math.ceil(length / size)
    return torch.cat([torch.randperm(size, generator=generator) for _ in range(repeats)])[:length]


class EvalBatches:
    """Sequential ``{"x": images, "y": labels}`` batches over this rank's shard, for validation
    and test (the same batch type as training: ``gendisc.models.contract.Batch``)."""

    def __init__(
        self, images: Tensor, labels: Tensor, batch_size: int, rank: int = 0, world_size: int = 1
    ) -> None:
        self.images = images[rank::world_size]
        self.labels = labels[rank::world_size]
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        for start in range(0, len(self.labels), self.batch_size):
            stop = start + self.batch_size
            yield {"x": to_unit_range(self.images[start:stop]), "y": self.labels[start:stop]}


class TrainBatches:
    """Training batches for one epoch = one pass over the unlabeled pool.

    Every step yields a dict with the labeled batch ``x``/``y`` (the small labeled set tiled to
    the length of the epoch, freshly permuted each time round, as in Salimans et al.) and, for
    semi-supervised modules, ``unlabeled_streams`` independent unlabeled batches ``x_unl``,
    ``x_unl2``, ... drawn from the pool. The permutations depend only on ``seed`` and the epoch
    number (read from ``current_epoch`` when given, so a resumed run replays the same batches).
    ``balanced``: the labeled stream draws each class equally often (each labeled image with
    probability inversely proportional to its class's count, with replacement), for labeled sets
    whose classes are not the same size; the few-label protocol's sets are balanced already.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        labeled_index: Tensor,
        unlabeled_index: Tensor,
        batch_size: int,
        unlabeled_batch_size: int,
        unlabeled_streams: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        current_epoch: Callable[[], int] | None = None,
        balanced: bool = False,
    ) -> None:
        self.seed = seed
        self.balanced = balanced
        self.epochs_started = 0
        self.current_epoch = current_epoch
        self.images, self.labels = images, labels
        self.labeled_index = labeled_index
        self.unlabeled_index = unlabeled_index
        self.batch_size = batch_size
        self.unlabeled_batch_size = unlabeled_batch_size
        self.unlabeled_streams = unlabeled_streams
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        step = max(self.batch_size, self.unlabeled_batch_size if self.unlabeled_streams else 0)
        return max(1, len(self.unlabeled_index) // (step * self.world_size))

    def _stream(
        self, index: Tensor, batch: int, generator: torch.Generator, weights: Tensor | None = None
    ) -> Tensor:
        """This rank's share of a tiled permutation of ``index`` (or of draws with replacement
        by ``weights``), as (steps, batch) positions."""
        steps = len(self)
        length = steps * batch * self.world_size
        if weights is None:
            order = tiled_permutation(len(index), length, generator)
        else:
            order = torch.multinomial(weights, length, replacement=True, generator=generator)
        order = order.view(steps, self.world_size, batch)[:, self.rank]
        return index[order]

    def _class_balancing_weights(self) -> Tensor:
        """1 / (its class's count) for each labeled image: every class drawn equally often."""
        labels = self.labels[self.labeled_index].cpu().long()
        counts = torch.bincount(labels)
        return 1.0 / counts[labels].double()

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        epoch = self.current_epoch() if self.current_epoch else self.epochs_started
        self.epochs_started += 1
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        device = self.images.device
        weights = self._class_balancing_weights() if self.balanced else None
        labeled = self._stream(self.labeled_index, self.batch_size, generator, weights).to(device)
        unlabeled = [
            self._stream(self.unlabeled_index, self.unlabeled_batch_size, generator).to(device)
            for _ in range(self.unlabeled_streams)
        ]
        for step in range(len(self)):
            batch = {
                "x": to_unit_range(self.images[labeled[step]]),
                "y": self.labels[labeled[step]],
            }
            for stream, index in enumerate(unlabeled):
                key = "x_unl" if stream == 0 else f"x_unl{stream + 1}"
                batch[key] = to_unit_range(self.images[index[step]])
            yield batch
