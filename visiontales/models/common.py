"""Pieces the text models share: decoding options and the optimizer with linear warm-up."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def decoding_options(decoding: str, num_beams: int, top_p: float, temperature: float) -> dict[str, Any]:
    """`generate` keyword arguments for greedy, beam or nucleus decoding."""
    if decoding == "greedy":
        return {"num_beams": 1, "do_sample": False}
    if decoding == "beam":
        return {"num_beams": num_beams, "do_sample": False, "early_stopping": True}
    if decoding == "nucleus":
        return {"num_beams": 1, "do_sample": True, "top_p": top_p, "top_k": 0, "temperature": temperature}
    raise ValueError(f"decoding must be greedy, beam or nucleus, got {decoding!r}")


def adamw_with_warmup(module: nn.Module, lr: float, weight_decay: float, warmup_steps: int):
    """AdamW over the trainable parameters (a list, so clipping and resuming see them all), with
    an optional linear warm-up stepped every batch."""
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if not warmup_steps:
        return optimizer
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup_steps))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}
