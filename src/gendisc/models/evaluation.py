"""Classification metrics shared by every module whose network predicts class logits."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning import LightningModule
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from torchmetrics.utilities import dim_zero_cat

from gendisc.models.contract import Batch


class MacroAUROC(MulticlassAUROC):
    """Macro one-vs-rest AUROC over the classes that have positives and negatives in the
    targets (exact, ``thresholds=None``: the epoch's scores are kept and synced over ranks).

    torchmetrics' own macro average counts a class absent from a small evaluation set as an
    AUROC of 0; such a class has no ROC curve and is left out here (NaN when none has one).
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes, average=None, thresholds=None)

    def compute(self) -> Tensor:
        per_class = super().compute()
        counts = torch.bincount(dim_zero_cat(self.target).long(), minlength=self.num_classes)
        defined = (counts > 0) & (counts < counts.sum())
        if not defined.any():
            return torch.tensor(float("nan"), device=per_class.device)
        return per_class[defined].mean()


def classification_metrics(num_classes: int) -> MetricCollection:
    """Accuracy, macro precision/recall/F1 and macro one-vs-rest AUROC (scalars).

    Updated with class probabilities (softmax of the logits): AUROC ranks them, the others take
    their argmax. With two classes the macro one-vs-rest AUROC is the usual binary AUC (both
    classes' curves are the same curve).
    """
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "precision": MulticlassPrecision(num_classes, average="macro"),
            "recall": MulticlassRecall(num_classes, average="macro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
            "auroc": MacroAUROC(num_classes),
        }
    )


def per_class_metrics(num_classes: int) -> MetricCollection:
    """Per-class precision and recall and the confusion matrix (tensors, for the report)."""
    return MetricCollection(
        {
            "precision_per_class": MulticlassPrecision(num_classes, average=None),
            "recall_per_class": MulticlassRecall(num_classes, average=None),
            "confusion_matrix": MulticlassConfusionMatrix(num_classes),
        }
    )


class ClassifierEvaluation(LightningModule):
    """The base of every gendisc model: validation and test from ``self.classify(x) -> logits``
    (the evaluation half of the model contract, ``gendisc.models.contract``).

    Logs ``val/loss``, ``val/acc``, ``val/precision``, ``val/recall``, ``val/f1``, ``val/auroc``
    each validation epoch and the same under ``test/`` at test time, where per-class precision/recall and the
    confusion matrix are also computed (synced over ranks) and kept in ``self.test_results``
    for the report callback.
    """

    def __init__(self, num_classes: int, class_names: list[str] | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.class_names = (
            list(class_names) if class_names else [str(k) for k in range(num_classes)]
        )
        self.val_metrics = classification_metrics(num_classes).clone(prefix="val/")
        self.test_metrics = classification_metrics(num_classes).clone(prefix="test/")
        self.test_details = per_class_metrics(num_classes)
        self.test_results: dict[str, Any] = {}

    def classify(self, x: Tensor) -> Tensor:
        """Class logits used for evaluation (subclasses may use e.g. an EMA of their weights)."""
        return self(x)

    def ensure_minibatch_reference(
        self,
        net: nn.Module,
        images: Callable[[int], Tensor],
        copies: Sequence[nn.Module] = (),
    ) -> None:
        """Give ``net`` (and ``copies`` of it, e.g. its EMA) the fixed reference batch that its
        minibatch discrimination compares with in eval mode, from ``images(count)``; nothing
        when it has no such layer or already has a reference (restored from a checkpoint)."""
        if getattr(net, "minibatch_disc", None) is None or net.has_minibatch_reference():
            return
        reference = images(net.minibatch_reference_size).to(self.device)
        for target in (net, *copies):
            target.set_minibatch_reference(reference)

    def _evaluate(self, batch: Batch, stage: str, metrics: MetricCollection) -> Tensor:
        images, labels = batch["x"], batch["y"]
        logits = self.classify(images)
        loss = F.cross_entropy(logits, labels)
        # probabilities, not logits: torchmetrics' AUROC would take logits that happen to lie
        # in [0, 1] for probabilities
        metrics.update(logits.float().softmax(dim=-1), labels)
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(labels))
        return logits

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)
        self.log_dict(self.val_metrics, on_epoch=True)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        logits = self._evaluate(batch, "test", self.test_metrics)
        self.test_details.update(logits, batch["y"])
        self.log_dict(self.test_metrics, on_epoch=True)

    def on_test_epoch_end(self) -> None:
        details = {key: value.cpu() for key, value in self.test_details.compute().items()}
        self.test_details.reset()
        self.test_results = {
            "test/precision_per_class": details["precision_per_class"].tolist(),
            "test/recall_per_class": details["recall_per_class"].tolist(),
            "test/confusion_matrix": details["confusion_matrix"].to(torch.int64).tolist(),
            "class_names": self.class_names,
        }
