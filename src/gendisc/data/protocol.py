"""The few-label protocol: which training images are labeled, which validate, which stay unlabeled.

Everything here depends only on the labels and ``data_seed``, never on the training seed, so every
method run with one ``data_seed`` sees exactly the same labeled examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gendisc.errors import ConfigError


@dataclass(frozen=True)
class LabelSplit:
    """Indices into the training set (sorted, int64)."""

    labeled: np.ndarray
    validation: np.ndarray
    unlabeled: (
        np.ndarray
    )  # every training index outside the validation split, labeled ones included


def resolve_val_size(val_size: int | float, num_train: int) -> int:
    """``val_size`` as a count: an int is a count, a float in (0, 1) a fraction of the training set."""
    if isinstance(val_size, float) and 0 < val_size < 1:
        return round(val_size * num_train)
    count = int(val_size)
    if count < 0 or count >= num_train:
        raise ConfigError(
            f"data.val_size={val_size} must be a count in [0, {num_train - 1}] or a fraction in "
            f"(0, 1) of the {num_train} training images."
        )
    return count


def split_labels(
    labels: np.ndarray,
    labels_per_class: int | None,
    val_size: int | float,
    data_seed: int,
    class_names: list[str] | None = None,
) -> LabelSplit:
    """Carve a validation split and a class-balanced labeled set from one seeded permutation.

    The permutation of the training indices is drawn from ``data_seed``. Its first ``val_size``
    entries are the validation split; walking the rest in permutation order, the first
    ``labels_per_class`` images of each class are labeled (all of them when it is None). The
    unlabeled pool is every non-validation image, the labeled ones included (as in the paper).
    """
    labels = np.asarray(labels)
    num_train = len(labels)
    num_val = resolve_val_size(val_size, num_train)
    order = np.random.default_rng(data_seed).permutation(num_train)
    validation, rest = order[:num_val], order[num_val:]

    if labels_per_class is None:
        labeled = rest
    else:
        per_class = int(labels_per_class)
        if per_class < 1:
            raise ConfigError(
                f"data.labels_per_class={labels_per_class} must be at least 1 (or null for all labels)."
            )
        classes, available = np.unique(labels[rest], return_counts=True)
        num_classes = int(labels.max()) + 1
        missing = sorted(set(range(num_classes)) - set(classes.tolist()))
        short = [(int(c), int(n)) for c, n in zip(classes, available, strict=True) if n < per_class]
        if missing or short:
            name = (lambda c: class_names[c]) if class_names else str
            worst = min([n for _, n in short] + [0 if missing else per_class])
            where = ", ".join(f"'{name(c)}' has {n}" for c, n in short[:5])
            if missing:
                where = ", ".join(filter(None, [where, f"'{name(missing[0])}' has 0"]))
            raise ConfigError(
                f"data.labels_per_class={per_class} is more than some classes have outside the "
                f"validation split ({where}). Use data.labels_per_class<={worst}, lower "
                f"data.val_size (now {num_val}), or data.labels_per_class=null for all labels."
            )
        rest_labels = labels[rest]
        picked = [rest[rest_labels == c][:per_class] for c in range(num_classes)]
        labeled = np.concatenate(picked)

    return LabelSplit(
        labeled=np.sort(labeled).astype(np.int64),
        validation=np.sort(validation).astype(np.int64),
        unlabeled=np.sort(rest).astype(np.int64),
    )
