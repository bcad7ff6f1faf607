"""Callbacks: reports, pictures and plots that work with every logger."""

from gendisc.callbacks.run_report import EvaluationReport

__all__ = ["EvaluationReport"]
