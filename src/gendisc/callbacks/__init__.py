"""Callbacks: reports, pictures and plots that work with every logger."""

from gendisc.callbacks.report import EvaluationReport

__all__ = ["EvaluationReport"]
