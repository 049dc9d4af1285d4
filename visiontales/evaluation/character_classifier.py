"""The FlintstonesSV character classifier: which of the 7 main characters a frame shows.

The evaluation protocol of StoryGAN / StoryDALL-E / StoryGPT-V scores generated frames with a
multi-label classifier trained on the dataset's frames: Char-Acc is the exact match of the whole
7-dim label vector per frame, Char-F1 the micro F1 over all (frame, character) decisions. Those
projects used Inception-v3 and rarely published the weights; ours trains from its own config
(`experiments/character_classifier.yaml`), any torchvision classification backbone, randomly
initialised or from a local state dict, and is reused through its checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics.classification import MultilabelExactMatch, MultilabelF1Score

from visiontales.errors import VisionTalesError
from visiontales.models.base import VisionTalesModule
from visiontales.vocabulary import MAIN_CHARACTERS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def character_metrics(prefix: str) -> torch.nn.ModuleDict:
    """Char-Acc (exact match of the label vector) and micro Char-F1, as torchmetrics objects."""
    n = len(MAIN_CHARACTERS)
    return torch.nn.ModuleDict({f"{prefix}char_acc": MultilabelExactMatch(num_labels=n),
                                f"{prefix}char_f1": MultilabelF1Score(num_labels=n, average="micro")})


class CharacterClassifier(VisionTalesModule, kind="character_classifier"):
    """Multi-label classifier of the 7 main characters on frames in [-1, 1]."""

    monitor = ("val/char_f1", "max")

    def __init__(self, backbone: str = "resnet18", weights: str | None = None, resolution: int = 128,
                 lr: float = 1e-3, weight_decay: float = 1e-4) -> None:
        """
        Args:
            backbone: a torchvision classification model name (resnet18, resnet50, inception_v3, ...).
            weights: a local state dict (.pth) for the backbone (its classifier head is replaced);
                None: random initialisation.
            resolution: frame side fed to the backbone (frames are resized to it).
            lr: AdamW learning rate.
            weight_decay: AdamW weight decay.
        """
        super().__init__()
        self.save_hyperparameters()
        from torchvision.models import get_model, list_models

        if backbone not in list_models():
            raise VisionTalesError(f"backbone '{backbone}' is not a torchvision model (see torchvision.models.list_models())")
        extra = {"aux_logits": False, "init_weights": True} if backbone == "inception_v3" else {}
        self.net = get_model(backbone, weights=None, num_classes=len(MAIN_CHARACTERS), **extra)
        if weights:
            self.load_backbone(Path(weights))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.split_metrics = torch.nn.ModuleDict({split: character_metrics("") for split in ("val", "test")})

    def load_backbone(self, path: Path) -> None:
        """Pretrained features from a local state dict; the 7-way head stays freshly initialised."""
        if not path.is_file():
            raise VisionTalesError(f"{path}: backbone weights not found")
        state = torch.load(path, map_location="cpu", weights_only=True)
        own = self.net.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not usable:
            raise VisionTalesError(f"{path}: no tensor matches the {self.hparams.backbone} backbone")
        self.net.load_state_dict(usable, strict=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Logits (N, 7) for frames (N, 3, H, W) in [-1, 1]."""
        size = self.hparams.resolution
        x = (frames.float() + 1) / 2
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return self.net((x - self.mean) / self.std)

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """What the backbone feeds its classification head (N, D): the input of its last Linear."""
        head = [m for m in self.net.modules() if isinstance(m, torch.nn.Linear)][-1]
        captured = []
        handle = head.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
        try:
            self(frames)
        finally:
            handle.remove()
        return captured[0]

    @torch.no_grad()
    def predict_characters(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 7) 0/1 decisions (logit > 0) for frames in [-1, 1]."""
        return (self(frames) > 0).float()

    def frames_and_labels(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return batch["images"].flatten(0, 1), batch["characters"].flatten(0, 1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        frames, labels = self.frames_and_labels(batch)
        loss = F.binary_cross_entropy_with_logits(self(frames), labels)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(frames))
        return loss

    def _evaluate(self, batch: dict[str, Any], split: str) -> None:
        frames, labels = self.frames_and_labels(batch)
        logits = self(frames)
        self.log(f"{split}/loss", F.binary_cross_entropy_with_logits(logits, labels), batch_size=len(frames),
                 sync_dist=True)
        for name, metric in self.split_metrics[split].items():
            metric.update(logits.sigmoid(), labels.int())
            self.log(f"{split}/{name}", metric, batch_size=len(frames))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


@torch.no_grad()
def score_frames(classifier: CharacterClassifier, frames: torch.Tensor, labels: torch.Tensor,
                 batch_size: int = 64) -> dict[str, float]:
    """Char-Acc and micro Char-F1 of frames (N, 3, H, W) in [-1, 1] against labels (N, 7)."""
    metrics = character_metrics("").to(classifier.device)
    classifier.eval()
    for start in range(0, len(frames), batch_size):
        probs = classifier(frames[start:start + batch_size].to(classifier.device)).sigmoid()
        for metric in metrics.values():
            metric.update(probs, labels[start:start + batch_size].to(classifier.device).int())
    return {name: float(metric.compute()) for name, metric in metrics.items()}
