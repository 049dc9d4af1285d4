"""Evaluation: text metrics for stories and captions, character mentions (image metrics come with
the visualizers)."""

from visiontales.evaluation.character_mentions import named_characters
from visiontales.evaluation.text_metrics import CaptionScores

__all__ = ["CaptionScores", "named_characters"]
