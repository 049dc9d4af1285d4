"""VIST three-image sequences (Huang et al. 2016) for the VisionTales storyteller, over the files
as vist_format.py parses them.

Training items are every kept sequence. Evaluation items (val/test/predict) are one per distinct
photo sequence, carrying every human story of that exact sequence as `references`: the protocol
of lichengunc/vist_eval, where references are keyed by the photo sequence.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torchvision.transforms import v2 as T

from data_modules.common import SkippingDataset, SplitDataModule
from data_modules.images import check_images, load_image
from data_modules.split_report import SPLITS, SplitReport
from data_modules.vist_format import Sequence, build_sequences, index_images, read_stories, sis_path
from visiontales.errors import VisionTalesError

LOG = logging.getLogger("data_modules")

# OpenAI CLIP's normalisation (open_clip.constants.OPENAI_DATASET_MEAN / _STD)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_transform(image_size: int = 224, mean: Iterable[float] = CLIP_MEAN,
                   std: Iterable[float] = CLIP_STD) -> T.Compose:
    """CLIP's preprocessing: shortest side to `image_size` (bicubic), centre crop, normalise."""
    return T.Compose([
        T.ToImage(),
        T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
        T.CenterCrop(image_size),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(list(mean), list(std)),
    ])


class VISTSequences(SkippingDataset):
    """Items for training (one per sequence) or evaluation (one per distinct photo sequence).

    An item is a dict: `story_id` (str), `photo_ids` (3 str), `texts` (3 str, story order),
    `references` (every story text of this photo sequence), and by `image_source`: "files":
    `images` (3x3xSxS float, CLIP preprocessing); "features": `image_features` (3xD, precomputed);
    "none": nothing (for models that do not look at the images).
    """

    def __init__(self, sequences: list[Sequence], transform: T.Compose, distinct: bool) -> None:
        by_photos: dict[tuple[str, ...], list[Sequence]] = defaultdict(list)
        for seq in sequences:
            by_photos[tuple(seq.photo_ids)].append(seq)
        if distinct:
            self.groups = list(by_photos.values())
        else:
            self.groups = [[seq] for seq in sequences]
        self.transform = transform
        self.image_source: Literal["files", "features", "none"] = "files"
        self.features: Mapping[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.groups)

    def load_item(self, index: int) -> dict[str, Any]:
        group = self.groups[index]
        seq = group[0]
        item = {"story_id": seq.story_id, "photo_ids": list(seq.photo_ids), "texts": list(seq.texts),
                "references": [" ".join(s.texts) for s in group]}
        if self.image_source == "features":
            item["image_features"] = torch.stack([self.features[p] for p in seq.photo_ids])
        elif self.image_source == "files":
            item["images"] = torch.stack([load_image(path, self.transform) for path in seq.image_paths])
        return item


class VISTDataModule(SplitDataModule):
    """VIST three-image sequences, as in the VisionTales paper (about 3,000 kept sequences)."""

    name = "VIST"

    def __init__(
        self,
        root: str = "data/vist",
        windows: Literal["first", "all"] = "first",
        text_field: Literal["text", "original_text"] = "text",
        image_size: int = 224,
        image_mean: tuple[float, float, float] = CLIP_MEAN,
        image_std: tuple[float, float, float] = CLIP_STD,
        batch_size: int = 1,
        train_sequences: int | None = None,
        subset_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            root: VIST folder holding annotations/sis/ and images/<split>/.
            windows: "first": the first three photos of each story (the paper); "all": every
                window of three consecutive photos.
            text_field: "text" (lower-cased, tokenised) or "original_text" (the raw sentence).
            image_size: side of the square CLIP input.
            image_mean: per-channel mean of CLIP's normalisation.
            image_std: per-channel std of CLIP's normalisation.
            batch_size: training batch size (the paper used 1).
            train_sequences: train on this many of the kept training sequences (after `windows`),
                drawn uniformly without replacement with `random.Random(subset_seed)` and kept in
                file order, as the paper trained on about 3,000; None: all. Validation and test
                stay whole.
            subset_seed: the seed of that draw.
            **kwargs: the loader options of SplitDataModule (eval_batch_size, num_workers,
                pin_memory, predict_split).
        """
        if train_sequences is not None and train_sequences < 1:
            raise VisionTalesError(f"train_sequences must be at least 1 (or null for all), got {train_sequences}")
        super().__init__(batch_size=batch_size, **kwargs)
        self.root = Path(root)
        self.transform = clip_transform(image_size, image_mean, image_std)

    @property
    def preprocessing_key(self) -> str:
        """What the image tensors depend on besides the file: part of the feature-cache key."""
        h = self.hparams
        return (f"clip-transform/size={h.image_size}/mean={tuple(h.image_mean)}/std={tuple(h.image_std)}"
                f"/bicubic/upright-rgb")

    def prepare_data(self) -> None:
        """Decode every photo the stories name, once, in worker processes (`check_images`): Lightning
        runs this on one process per machine before any process's `setup`, which then reads the kept
        verdicts in seconds."""
        for split in SPLITS:
            if sis_path(self.root, split).exists():
                images = index_images(self.root / "images" / split)
                named = {p for story in read_stories(sis_path(self.root, split)).values() for p, _ in story}
                check_images({p: images[p] for p in sorted(named) if p in images}, desc=f"checking {split} photos")

    def build_split(self, split: str) -> tuple[VISTSequences, SplitReport]:
        sequences, report = build_sequences(self.root, split, self.hparams.windows, self.hparams.text_field)
        wanted = self.hparams.train_sequences
        if split == "train" and wanted is not None:
            if wanted > len(sequences):
                LOG.warning(f"VIST train: train_sequences={wanted} but {len(sequences)} are kept: training on all")
            elif wanted < len(sequences):
                chosen = sorted(random.Random(self.hparams.subset_seed).sample(range(len(sequences)), wanted))
                sequences = [sequences[i] for i in chosen]
                report.counts["in_subset"] = wanted
        return VISTSequences(sequences, self.transform, distinct=split != "train"), report

    def image_paths(self, stage: str) -> dict[str, Path]:
        """photo_id -> file for every photo the stage's splits use (after `setup(stage)`)."""
        paths = {}
        for split in self.splits_for(stage):
            for group in self.datasets[split].groups:
                for seq in group:
                    paths.update(zip(seq.photo_ids, seq.image_paths, strict=True))
        return paths

    def load_photo(self, photo_id: str, path: Path) -> torch.Tensor:
        """The photo as served in `images` (CLIP preprocessing)."""
        return load_image(path, self.transform)

    def attach_image_features(self, features: Mapping[str, torch.Tensor]) -> None:
        """Serve precomputed per-photo features instead of decoding images (frozen CLIP)."""
        for dataset in self.datasets.values():
            dataset.image_source, dataset.features = "features", features
