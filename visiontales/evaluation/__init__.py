"""Evaluation: text metrics for stories and captions (image metrics come with the visualizers)."""

from visiontales.evaluation.text_metrics import CaptionScores

__all__ = ["CaptionScores"]
