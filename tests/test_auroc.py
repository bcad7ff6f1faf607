"""AUROC: torchmetrics' macro one-vs-rest value, as the modules update it, against sklearn."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import roc_auc_score

from gendisc.models.evaluation import classification_metrics


def _auroc(logits: torch.Tensor, labels: torch.Tensor) -> float:
    metrics = classification_metrics(logits.shape[1])
    metrics.update(logits.softmax(dim=-1), labels)  # what ClassifierEvaluation feeds it
    return metrics.compute()["auroc"].item()


def test_binary_auroc_is_the_usual_auc():
    # 3 of the 3x3 (positive, negative) pairs are misordered: AUC = 6/9
    logits = torch.tensor([[0.0, 2.0], [0.0, 0.5], [0.0, -1.0], [0.0, 1.0], [0.0, 0.0], [0, -2.0]])
    labels = torch.tensor([1, 1, 1, 0, 0, 0])
    expected = roc_auc_score(labels.numpy(), logits.softmax(-1)[:, 1].numpy())
    assert expected == pytest.approx(6 / 9)
    assert _auroc(logits, labels) == pytest.approx(expected, abs=1e-6)


def test_three_class_auroc_is_sklearn_macro_one_vs_rest():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(30) % 3
    logits = torch.randn(30, 3, generator=generator) + 1.5 * torch.nn.functional.one_hot(labels)
    probs = logits.softmax(-1).numpy()
    expected = roc_auc_score(labels.numpy(), probs, multi_class="ovr", average="macro")
    assert 0.6 < expected < 1.0  # informative but imperfect scores
    assert _auroc(logits, labels) == pytest.approx(expected, abs=1e-6)


def test_logits_inside_zero_one_are_still_ranked_as_scores():
    # logits that happen to lie in [0, 1] are softmaxed too, so the result equals sklearn's on
    # the probabilities (torchmetrics alone would take such logits for probabilities)
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.6, 0.0, 0.3]])
    labels = torch.tensor([0, 1, 2, 2])
    expected = roc_auc_score(
        labels.numpy(), logits.softmax(-1).numpy(), multi_class="ovr", average="macro"
    )
    assert _auroc(logits, labels) == pytest.approx(expected, abs=1e-6)


def test_a_class_absent_from_the_targets_is_left_out_of_the_average():
    # class 2 never occurs (a small validation set): the macro average is over classes 0 and 1,
    # whose one-vs-rest AUROCs are sklearn's; torchmetrics alone would count class 2 as 0
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.5], [0.5, 0.2, 0.0], [0.0, 0.5, 2.0]])
    labels = torch.tensor([0, 1, 0, 1])
    probs = logits.softmax(-1).numpy()
    per_class = [roc_auc_score(labels.numpy() == k, probs[:, k]) for k in (0, 1)]
    assert _auroc(logits, labels) == pytest.approx(sum(per_class) / 2, abs=1e-6)
    single = classification_metrics(3)
    single.update(logits.softmax(-1), torch.zeros(4, dtype=torch.long))
    assert torch.isnan(single.compute()["auroc"])  # one class only: no ROC curve at all
