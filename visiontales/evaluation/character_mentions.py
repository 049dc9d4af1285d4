"""Which of the 7 FlintstonesSV main characters a caption names, for the captioner's Char-F1."""

from __future__ import annotations

import re

import torch

from data_modules.flintstones import MAIN_CHARACTERS

# "Mr Slate" is also written "Mr. Slate" or just "Slate"
_PATTERNS = [re.compile(r"\b" + (r"(?:mr\.?\s+)?slate" if name == "Mr Slate" else re.escape(name.casefold())) + r"\b")
             for name in MAIN_CHARACTERS]


def named_characters(texts: list[str]) -> torch.Tensor:
    """(N, 7) multi-hot of the main characters each text names, in the labels' order."""
    return torch.tensor([[1.0 if p.search(text.casefold()) else 0.0 for p in _PATTERNS] for text in texts])
