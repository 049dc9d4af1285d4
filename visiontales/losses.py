"""Losses shared by the visualizers (shared/papers/saganets.md, section 4.4).

    L_G = lambda_adv L_adv + lambda_img L_img + lambda_clip L_clip + lambda_char L_char + lambda_coher L_coher

Frames are (N, 3, H, W) in [-1, 1]; a story's frames are consecutive along a `steps` dimension,
(B, S, ...), where the consecutive-frame terms apply.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def image_loss(fake: torch.Tensor, real: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """L_img: pixel L1 (the GAN approach) or L2 (the CLIP-centric and coherence approaches)."""
    if kind == "l1":
        return F.l1_loss(fake, real)
    if kind == "l2":
        return F.mse_loss(fake, real)
    raise ValueError(f"image loss must be 'l1' or 'l2', got {kind!r}")


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """L_clip = 1 - cos(E_img(G(z)), E_text(caption)), averaged over frames."""
    return (1.0 - F.cosine_similarity(image_features, text_features, dim=-1)).mean()


def consecutive_distance(features: torch.Tensor) -> torch.Tensor:
    """sum_k ||f_{k+1} - f_k||^2 over a story's steps (B, S, ...), averaged over stories and
    over the feature elements (so the scale does not grow with the feature size)."""
    diff = features[:, 1:] - features[:, :-1]  # (B, S-1, ...)
    return diff.pow(2).flatten(2).mean(dim=2).sum(dim=1).mean()


def character_loss(image_features: torch.Tensor) -> torch.Tensor:
    """L_char: consecutive generated frames of a story should show the same characters, so their
    (L2-normalised) feature-extractor embeddings (B, S, D) should stay close."""
    return consecutive_distance(F.normalize(image_features, dim=-1))


def coherence_loss(latents: torch.Tensor) -> torch.Tensor:
    """L_coher = sum_k ||L_{k+1} - L_k||^2 on encoder latents (B, S, C, h, w) of consecutive frames."""
    return consecutive_distance(latents)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """D's loss: the non-saturating GAN loss (log D(x) + log(1 - D(G(z)))) or the hinge loss."""
    if kind == "bce":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    raise ValueError(f"adversarial loss must be 'bce' or 'hinge', got {kind!r}")


def generator_adversarial_loss(fake_logits: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """L_adv for G: non-saturating -log D(G(z)), or -D(G(z)) with the hinge loss."""
    if kind == "bce":
        return F.softplus(-fake_logits).mean()
    if kind == "hinge":
        return -fake_logits.mean()
    raise ValueError(f"adversarial loss must be 'bce' or 'hinge', got {kind!r}")


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): E ||grad_x D(x)||^2 on real frames (times gamma / 2 by the caller)."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return grad.pow(2).flatten(1).sum(dim=1).mean()
