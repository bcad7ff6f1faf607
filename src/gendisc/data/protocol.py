"""The few-label protocol: which training images are labeled, which validate, which stay unlabeled.

Everything here depends only on the labels and ``data_seed``, never on the training seed, so every
method run with one ``data_seed`` sees exactly the same labeled examples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gendisc.errors import ConfigError, DataError


@dataclass(frozen=True)
class LabelSplit:
    """Indices into the training set (sorted, int64)."""

    labeled: np.ndarray
    validation: np.ndarray
    unlabeled: (
        np.ndarray
    )  # every training index outside the validation split, labeled ones included


# data.val_size's value for the dataset's own validation split (MedMNIST's)
OFFICIAL = "official"
# data.all_labels_val_size where a data config has none (that of conf/data/digits.yaml)
ALL_LABELS_VAL_SIZE = 200


def resolve_val_size(val_size: int | float | str, num_train: int) -> int:
    """``val_size`` as a count: an int is a count, a float in (0, 1) a fraction of the training set."""
    if isinstance(val_size, float) and 0 < val_size < 1:
        return round(val_size * num_train)
    try:
        count = int(val_size)
    except (TypeError, ValueError):
        count = -1
    if count < 0 or count >= num_train or count != val_size:
        raise ConfigError(
            f"data.val_size={val_size} must be a count in [0, {num_train - 1}], a fraction in "
            f"(0, 1) of the {num_train} training images, or {OFFICIAL} (the dataset's own "
            f"validation split, where it has one)."
        )
    return count


def check_validation_settings(
    val_size: int | float | str | None, val_per_class: int | None
) -> None:
    """A ConfigError when both ``data.val_size`` and ``data.val_per_class`` are set."""
    if val_size is not None and val_per_class is not None:
        raise ConfigError(
            f"data.val_size={val_size} and data.val_per_class={val_per_class} are both set: "
            f"keep one: data.val_per_class={val_per_class} alone ({val_per_class} validation "
            f"images per class; data.val_size=null if a config sets it), or "
            f"data.val_size={val_size} alone (data.val_per_class=null if a config sets it)."
        )


def migrate_stored_validation(data: dict) -> bool:
    """Spell out the validation of a data config stored before the default changed (issue 22):
    there, ``val_size`` and ``val_per_class`` both null meant the official validation split
    (MedMNIST's default); now it means the default, so such a config (known by its missing
    ``all_labels_val_size``) gets ``val_size="official"``. True when it changed ``data``."""
    if "all_labels_val_size" in data:
        return False
    if data.get("val_size") is not None or data.get("val_per_class") is not None:
        return False
    data["val_size"] = OFFICIAL
    return True


def validation_setting(
    labels_per_class: int | None,
    val_size: int | float | str | None,
    val_per_class: int | None,
    all_labels_val_size: int | float | str | None = ALL_LABELS_VAL_SIZE,
) -> tuple[int | float | str | None, int | None]:
    """The validation a run uses, as ``(val_size, val_per_class)`` with at most one not None.

    The one place the default is decided. ``data.val_size`` or ``data.val_per_class`` as set
    (both: a ConfigError). Neither set: with a label budget, ``labels_per_class`` validation
    images per class (no more validation labels than training labels, Oliver et al. 2018); with
    all labels (``labels_per_class`` None), ``val_size = all_labels_val_size`` (the data
    config's count, fraction or ``official``).
    """
    check_validation_settings(val_size, val_per_class)
    if val_size is not None or val_per_class is not None:
        return val_size, val_per_class
    if labels_per_class is not None:
        return None, int(labels_per_class)
    if all_labels_val_size is None:
        raise ConfigError(
            "data.labels_per_class=null (all labels) with neither data.val_size nor "
            "data.val_per_class set, and no data.all_labels_val_size to fall back on: set one "
            "of them."
        )
    return all_labels_val_size, None


def split_labels(
    labels: np.ndarray,
    labels_per_class: int | None,
    val_size: int | float | None,
    data_seed: int,
    class_names: list[str] | None = None,
    val_per_class: int | None = None,
) -> LabelSplit:
    """Carve a validation split and a class-balanced labeled set from one seeded permutation.

    The permutation of the training indices is drawn from ``data_seed``. With ``val_size`` its
    first ``val_size`` entries are the validation split; walking the rest in permutation order,
    the first ``labels_per_class`` images of each class are labeled (all of them when it is
    None). With ``val_per_class`` instead (``val_size`` None), the labeled images are picked
    first, exactly as with ``val_size=0``, and the next ``val_per_class`` images of each class in
    the same order validate (with all labels: the first ``val_per_class`` of each class validate
    and the rest are labeled). The unlabeled pool is every non-validation image, the labeled ones
    included (as in the paper).
    """
    labels = np.asarray(labels)
    num_train = len(labels)
    check_validation_settings(val_size, val_per_class)
    if val_per_class is not None:
        return _split_per_class(
            labels, labels_per_class, int(val_per_class), data_seed, class_names
        )
    num_val = resolve_val_size(0 if val_size is None else val_size, num_train)
    order = np.random.default_rng(data_seed).permutation(num_train)
    validation, rest = order[:num_val], order[num_val:]
    lower_val = f"lower data.val_size (now {num_val}), "
    labeled = _pick_labeled(labels, rest, labels_per_class, class_names, lower_val)
    return LabelSplit(
        labeled=np.sort(labeled).astype(np.int64),
        validation=np.sort(validation).astype(np.int64),
        unlabeled=np.sort(rest).astype(np.int64),
    )


def _class_name(class_names: list[str] | None) -> Callable[[int], str]:
    return (lambda c: class_names[c]) if class_names else str


def _pick_labeled(
    labels: np.ndarray,
    pool: np.ndarray,
    labels_per_class: int | None,
    class_names: list[str] | None,
    lower_val: str = "",
) -> np.ndarray:
    """The first ``labels_per_class`` indices of each class in ``pool`` (in its order), or the
    whole pool when it is None; a ConfigError when a class has fewer (``lower_val``: the advice
    on the validation setting that makes room, if any)."""
    if labels_per_class is None:
        return pool
    per_class = int(labels_per_class)
    if per_class < 1:
        raise ConfigError(
            f"data.labels_per_class={labels_per_class} must be at least 1 (or null for all labels)."
        )
    classes, available = np.unique(labels[pool], return_counts=True)
    num_classes = int(labels.max()) + 1
    missing = sorted(set(range(num_classes)) - set(classes.tolist()))
    short = sorted(
        ((int(c), int(n)) for c, n in zip(classes, available, strict=True) if n < per_class),
        key=lambda item: item[1],
    )  # the smallest classes first
    if missing or short:
        name = _class_name(class_names)
        worst = min([n for _, n in short] + [0 if missing else per_class])
        where = ", ".join(f"'{name(c)}' has {n}" for c, n in short[:5])
        if missing:
            where = ", ".join(filter(None, [where, f"'{name(missing[0])}' has 0"]))
        raise ConfigError(
            f"data.labels_per_class={per_class} is more than some classes have"
            f"{' outside the validation split' if lower_val else ''} ({where}). Use data.labels_per_class<={worst}, {lower_val}"
            f"or data.labels_per_class=null for all labels."
        )
    pool_labels = labels[pool]
    return np.concatenate([pool[pool_labels == c][:per_class] for c in range(num_classes)])


def _split_per_class(
    labels: np.ndarray,
    labels_per_class: int | None,
    val_per_class: int,
    data_seed: int,
    class_names: list[str] | None,
) -> LabelSplit:
    """:func:`split_labels` with ``val_per_class`` validation images of each class, drawn in
    the permutation's order after the labeled ones."""
    if val_per_class < 1:
        raise ConfigError(
            f"data.val_per_class={val_per_class} must be at least 1 (or null to use data.val_size)."
        )
    num_train = len(labels)
    order = np.random.default_rng(data_seed).permutation(num_train)
    num_classes = int(labels.max()) + 1
    taken = 0 if labels_per_class is None else int(labels_per_class)
    if labels_per_class is not None:
        labeled = _pick_labeled(labels, order, labels_per_class, class_names)
    counts = np.bincount(labels, minlength=num_classes)
    short = sorted(
        ((c, int(n)) for c, n in enumerate(counts) if n - taken < val_per_class),
        key=lambda item: item[1],
    )
    if short:
        name = _class_name(class_names)
        left = min(n for _, n in short) - taken
        where = ", ".join(f"'{name(c)}' has {n}" for c, n in short[:5])
        labeled_note = f", {taken} of each class labeled" if taken else ""
        raise DataError(
            f"data.val_per_class={val_per_class} asks for more validation images than there are "
            f"({where} training images{labeled_note}, so {left} are left for validation). Use "
            f"data.val_per_class<={left}" + (" or lower data.labels_per_class." if taken else ".")
        )
    order_labels = labels[order]
    validation = np.concatenate(
        [order[order_labels == c][taken : taken + val_per_class] for c in range(num_classes)]
    )
    rest = np.setdiff1d(order, validation)
    if labels_per_class is None:
        labeled = rest
    return LabelSplit(
        labeled=np.sort(labeled).astype(np.int64),
        validation=np.sort(validation).astype(np.int64),
        unlabeled=np.sort(rest).astype(np.int64),
    )
