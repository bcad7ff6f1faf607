"""Metrics beyond classification: generative quality on an in-domain evaluator."""

from gendisc.metrics.generative import (
    Evaluator,
    EvaluatorConfig,
    GenerativeScores,
    feature_distances,
    inception_score,
    load_or_train_evaluator,
    score_samples,
    train_classifier,
)

__all__ = [
    "Evaluator",
    "EvaluatorConfig",
    "GenerativeScores",
    "feature_distances",
    "inception_score",
    "load_or_train_evaluator",
    "score_samples",
    "train_classifier",
]
