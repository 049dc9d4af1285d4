"""Image metrics for generated frames: FID (by a named protocol) and CLIPScore.

FID follows the story-visualization literature (StoryGAN, StoryDALL-E, AR-LDM): frames are
resized to 64x64 first, then torchmetrics' FrechetInceptionDistance resizes them to 299 for the
InceptionV3 pool features (torch-fidelity's FID network). Those weights cannot be downloaded
here; when their file is not on disk, FID is computed on the character classifier's
penultimate features instead and every output names that protocol, so that nobody compares it
with published numbers.

CLIPScore (Hessel et al. 2021, as torchmetrics scales it): 100 * max(cos(E_image, E_caption), 0),
averaged, with the project's open_clip model (torchmetrics' CLIPScore takes Hugging Face CLIP
models only, hence these few lines).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from visiontales.errors import VisionTalesError

FID_RESOLUTION = 64
# torch-fidelity's InceptionV3 (the TF FID network ported), as torchmetrics loads it
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
PROTOCOL_INCEPTION = "inception-v3 pool3 (2048-d), frames at 64x64: the literature's protocol"
PROTOCOL_CLASSIFIER = ("character-classifier features, frames at 64x64: NOT comparable with published FID "
                       "(no local InceptionV3 weights)")


def find_inception_weights(path: str | Path | None = None) -> Path | None:
    """The InceptionV3 FID weights: `path` if given (it must exist), else torch-fidelity's file in
    the torch hub cache ($TORCH_HOME/hub/checkpoints) if it is there, else None."""
    if path is not None:
        if not Path(path).is_file():
            raise VisionTalesError(f"{path}: InceptionV3 FID weights not found (--inception-weights)")
        return Path(path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    return cached if cached.is_file() and os.path.getsize(cached) > 0 else None


def to_uint8(frames: torch.Tensor, size: int = FID_RESOLUTION) -> torch.Tensor:
    """Frames (N, 3, H, W) in [-1, 1] -> uint8 (N, 3, size, size), resized with antialiasing."""
    x = (frames.float().clamp(-1, 1) + 1) / 2
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


class ClassifierFeatures(nn.Module):
    """uint8 frames -> the character classifier's penultimate features (a FID feature network)."""

    def __init__(self, classifier) -> None:
        super().__init__()
        self.classifier = classifier.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images.float() / 127.5 - 1)


def fid_metric(classifier=None, inception_weights: str | Path | None = None):
    """(torchmetrics FrechetInceptionDistance, protocol name). Inception when its weights are on
    disk (or given); otherwise the character classifier's features (then `classifier` is needed)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    weights = find_inception_weights(inception_weights)
    if weights is not None:
        return FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(weights)), PROTOCOL_INCEPTION
    if classifier is None:
        raise VisionTalesError("FID needs InceptionV3 weights on disk or a character classifier (--classifier)")
    return FrechetInceptionDistance(feature=ClassifierFeatures(classifier), input_img_size=(3, 64, 64)), \
        PROTOCOL_CLASSIFIER


@torch.no_grad()
def frechet_distance(real: torch.Tensor, fake: torch.Tensor, classifier=None,
                     inception_weights: str | Path | None = None, batch_size: int = 64) -> tuple[float, str]:
    """(FID between frames `real` and `fake` (N, 3, H, W) in [-1, 1], its protocol name)."""
    metric, protocol = fid_metric(classifier, inception_weights)
    device = classifier.device if classifier is not None else torch.device("cpu")
    metric = metric.to(device)
    for frames, is_real in ((real, True), (fake, False)):
        for start in range(0, len(frames), batch_size):
            metric.update(to_uint8(frames[start:start + batch_size]).to(device), real=is_real)
    return max(float(metric.compute()), 0.0), protocol


@torch.no_grad()
def clip_score(clip_model: nn.Module, frames: torch.Tensor, captions: list[str], batch_size: int = 64) -> float:
    """Mean CLIPScore of frames (N, 3, H, W) in [-1, 1] against their captions."""
    import open_clip

    from visiontales.backbones import clip_preprocessing

    if len(frames) != len(captions):
        raise ValueError(f"{len(frames)} frames for {len(captions)} captions")
    size, mean, std = clip_preprocessing(clip_model)
    mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    device = next(clip_model.parameters()).device
    scores = []
    for start in range(0, len(frames), batch_size):
        x = (frames[start:start + batch_size].float().clamp(-1, 1) + 1) / 2
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        image = clip_model.encode_image(((x - mean) / std).to(device), normalize=True)
        text = clip_model.encode_text(open_clip.tokenize(captions[start:start + batch_size]).to(device), normalize=True)
        scores.append(100 * (image * text).sum(dim=1).clamp(min=0))
    return float(torch.cat(scores).mean())
