"""Metrics beyond classification: generative quality on an in-domain evaluator."""

from gendisc.metrics.generative import (
    Evaluator,
    EvaluatorConfig,
    GenerativeScores,
    feature_distances,
    inception_score,
    knn_radii,
    load_or_train_evaluator,
    prdc_from_features,
    precision_recall_density_coverage,
    score_samples,
    train_classifier,
)

__all__ = [
    "Evaluator",
    "EvaluatorConfig",
    "GenerativeScores",
    "feature_distances",
    "inception_score",
    "knn_radii",
    "load_or_train_evaluator",
    "prdc_from_features",
    "precision_recall_density_coverage",
    "score_samples",
    "train_classifier",
]
