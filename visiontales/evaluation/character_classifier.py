"""The FlintstonesSV character classifier: which of the 7 main characters a frame shows (and, on a
second head over the same features, which setting).

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
                 lr: float = 1e-3, weight_decay: float = 1e-4, settings: list[str] | None = None,
                 min_setting_share: float = 0.01) -> None:
        """
        Args:
            backbone: a torchvision classification model name (resnet18, resnet50, inception_v3, ...).
            weights: a local state dict (.pth) for the backbone (its classifier head is replaced);
                None: random initialisation.
            resolution: frame side fed to the backbone (frames are resized to it).
            lr: AdamW learning rate.
            weight_decay: AdamW weight decay.
            settings: the classes of the setting classifier (which setting a frame shows, for
                the story-consistency score): a small CNN of its own (`setting_net`), trained
                beside the characters on the same frames. Not a head on the backbone: sharing
                it, the easy setting task cost the characters a third of their Char-F1, and a
                probe on its detached features stayed at chance. None: the annotated settings
                of at least `min_setting_share` of the training clips, found when fitting starts
                and saved with the checkpoint.
            min_setting_share: see `settings`.
        """
        super().__init__()
        self.save_hyperparameters()
        from torchvision.models import get_model, list_models

        if backbone not in list_models():
            raise VisionTalesError(f"backbone '{backbone}' is not a torchvision model (see torchvision.models.list_models())")
        extra = {"aux_logits": False, "init_weights": True} if backbone == "inception_v3" else {}
        self.net = get_model(backbone, weights=None, num_classes=len(MAIN_CHARACTERS), **extra)
        self.setting_net = setting_net(len(settings or []))
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

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.hparams.settings is None:
            self.hparams.settings = self.common_settings(self.trainer.datamodule)
            self.setting_net = setting_net(len(self.hparams.settings))

    def common_settings(self, datamodule) -> list[str]:
        """The annotated settings of at least `min_setting_share` of the training clips, most common first."""
        from collections import Counter

        clips = {c for story in datamodule.datasets["train"].stories for c in story}
        counts = Counter(datamodule.index.clips[c].setting.strip().lower() for c in clips)
        counts.pop("", None)
        return [name for name, n in counts.most_common() if n >= self.hparams.min_setting_share * len(clips)]

    def normalized(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames in [-1, 1] resized to `resolution` and normalized as the backbone expects."""
        size = self.hparams.resolution
        x = (frames.float() + 1) / 2
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return (x - self.mean) / self.std

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Character logits (N, 7) for frames (N, 3, H, W) in [-1, 1]."""
        return self.net(self.normalized(frames))

    def classify(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(character logits (N, 7), setting logits (N, len(settings))) for frames (N, 3, H, W) in [-1, 1]."""
        x = self.normalized(frames)
        return self.net(x), self.setting_net(x)

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """What the backbone feeds its character head (N, D): the input of its last Linear."""
        head = [m for m in self.net.modules() if isinstance(m, torch.nn.Linear)][-1]
        captured = []
        handle = head.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
        try:
            self(frames)
        finally:
            handle.remove()
        return captured[0]

    @torch.no_grad()
    def predict_settings(self, frames: torch.Tensor) -> torch.Tensor:
        """(N,) index into `hparams.settings` of the setting each frame shows (-1 without setting classes)."""
        logits = self.classify(frames)[1]
        return logits.argmax(1) if logits.shape[1] else torch.full((len(frames),), -1, device=frames.device)


    @torch.no_grad()
    def predict_characters(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 7) 0/1 decisions (logit > 0) for frames in [-1, 1]."""
        return (self(frames) > 0).float()

    def frames_and_labels(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every frame of the batch's stories with its character labels and its setting's index
        (-100 where the setting is not a class of the head)."""
        classes = {name: i for i, name in enumerate(self.hparams.settings or [])}
        settings = [classes.get(s.strip().lower(), -100) for story in batch["settings"] for s in story]
        return (batch["images"].flatten(0, 1), batch["characters"].flatten(0, 1),
                torch.tensor(settings, device=self.device))

    def losses(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, character logits, labels, setting accuracy or NaN): binary cross-entropy of the
        characters plus cross-entropy of the settings a class names."""
        frames, labels, settings = self.frames_and_labels(batch)
        logits, setting_logits = self.classify(frames)
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        known = settings >= 0
        accuracy = torch.tensor(float("nan"))
        if known.any():
            loss = loss + F.cross_entropy(setting_logits[known], settings[known])
            accuracy = (setting_logits[known].argmax(1) == settings[known]).float().mean()
        return loss, logits, labels, accuracy

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, _, labels, _ = self.losses(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(labels))
        return loss

    def _evaluate(self, batch: dict[str, Any], split: str) -> None:
        loss, logits, labels, setting_acc = self.losses(batch)
        self.log(f"{split}/loss", loss, batch_size=len(labels), sync_dist=True)
        if not setting_acc.isnan():
            self.log(f"{split}/setting_acc", setting_acc, batch_size=len(labels), sync_dist=True)
        for name, metric in self.split_metrics[split].items():
            metric.update(logits.sigmoid(), labels.int())
            self.log(f"{split}/{name}", metric, batch_size=len(labels))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


def setting_net(classes: int) -> torch.nn.Sequential:
    """The setting classifier: three strided convolutions, global pooling, a linear layer."""
    from torch import nn

    layers, width = [], 3
    for out in (32, 64, 64):
        layers += [nn.Conv2d(width, out, 3, stride=2, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
        width = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))


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
