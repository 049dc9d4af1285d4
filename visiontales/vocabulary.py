"""What the SAGANets models and the FlintstonesSV data module agree on: the seven main characters
(in the order of the dataset's 7-dim labels), the names captions use for them, and the length of a
story. Models import these from here, never from data_modules."""

from __future__ import annotations

import re

import torch

# the order of the 7-dim character labels in StoryGAN / StoryDALL-E / AR-LDM
MAIN_CHARACTERS = ("Wilma", "Fred", "Betty", "Barney", "Dino", "Pebbles", "Mr Slate")
STORY_LENGTH = 5  # clips (caption-frame pairs) per FlintstonesSV story

# "Mr Slate" is also written "Mr. Slate" or just "Slate"
_PATTERNS = [re.compile(r"\b" + (r"(?:mr\.?\s+)?slate" if name == "Mr Slate" else re.escape(name.casefold())) + r"\b")
             for name in MAIN_CHARACTERS]


def named_characters(texts: list[str]) -> torch.Tensor:
    """(N, 7) multi-hot of the main characters each text names, in the labels' order."""
    return torch.tensor([[1.0 if p.search(text.casefold()) else 0.0 for p in _PATTERNS] for text in texts])
