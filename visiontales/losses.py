"""Losses shared by the visualizers (the SAGANets paper, section 4.4), normalised so that each
lambda weighs a term of order one.

The paper's generator objective (its section 4.4) is

    L_G = L_adv + lambda_img L_img + lambda_clip L_clip + lambda_char L_char + lambda_coher L_coher,
    L_char  = sum_k || f(G(z)_k) - f(G(z)_{k+1}) ||_2          (f: a feature extractor, here CLIP)
    L_coher = sum_k || L_{k+1} - L_k ||_2^2                     (L: encoder latents, here the SD VAE's)

Taken literally, the sums grow with the story length and the squared distance with the latent
size (tens for 16x16x4 latents), while a unit-vector distance averaged per dimension is ~1e-3:
the same lambda would mean very different things. Here every term is a mean of order one for
unrelated frames, and the direct terms are 0 when G is perfect:

    L_img   = mean |x_hat - x|  (l1)  or  mean (x_hat - x)^2  (l2), pixels in [-1, 1]
    L_adv   = -log D(G(z)) (0.69 at D's indifference) or -D(G(z)) (hinge)
    L_clip  = mean_n (1 - cos(E_img(G(z)_n), E_text(c_n)))                         in [0, 2]
    L_char  = mean_k 1/2 || f_k / |f_k| - f_{k+1} / |f_{k+1}| ||^2 = mean_k (1 - cos)  in [0, 2]
    L_coher = mean_k 1/(2 D) || L_{k+1} - L_k ||^2, latents scaled to unit variance  (~1 unrelated)

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


def character_loss(image_features: torch.Tensor) -> torch.Tensor:
    """L_char: consecutive generated frames of a story should show the same characters, so their
    feature-extractor embeddings (B, S, D) should point the same way: mean over consecutive pairs
    of 1 - cos."""
    return (1.0 - F.cosine_similarity(image_features[:, 1:], image_features[:, :-1], dim=-1)).mean()


def coherence_loss(latents: torch.Tensor) -> torch.Tensor:
    """L_coher on unit-variance encoder latents (B, S, C, h, w) of consecutive frames: the squared
    distance per element, halved, averaged over consecutive pairs (about 1 for unrelated frames)."""
    return (latents[:, 1:] - latents[:, :-1]).pow(2).mean() / 2


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
