"""Evaluation: text metrics (pycocoevalcap), image metrics (FID, CLIPScore), the character
classifier (Char-Acc, Char-F1) and the `visiontales evaluate` command."""
