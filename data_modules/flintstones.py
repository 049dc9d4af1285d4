"""FlintstonesSV stories with SAGANets' variable-length caption prefixes, over the files as
flintstones_format.py reads them. SAGANets (the SAGANets paper, section 4.3) trains on a prefix of
k ~ U{0..K} caption-image pairs and the target step k+1; validation and test fix k per story
(seeded) and use the middle frame of each clip, so their scores repeat.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Container
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from data_modules.common import SkippingDataset, SplitDataModule
from data_modules.flintstones_format import FRAMES, FlintstonesIndex, read_frame
from data_modules.split_report import SplitReport
from visiontales.errors import VisionTalesError
from visiontales.vocabulary import STORY_LENGTH


def eval_prefix_length(story_id: str, max_prefix: int, seed: int) -> int:
    """A fixed k in 0..max_prefix per story (stable across runs, platforms and processes)."""
    return zlib.crc32(f"{seed}:{story_id}".encode()) % (max_prefix + 1)


class FlintstonesStories(SkippingDataset):
    """Items: `story_id`, `clip_ids` (5), `texts` (5), `settings` (5), `characters` (5x7 float),
    `prefix_len` (k), `frame_index` (5: the frame drawn from each clip), and by `image_source`:
    "files": `images` (5x3xRxR float in [-1, 1]); "target": `target_image` (3xRxR, the frame of
    step k+1 only: a fifth of the decoding and of the batch; None where its "<globalID>#<frame>"
    key is in `cached_frames`); "none": no pixels."""

    def __init__(self, index: FlintstonesIndex, stories: list[list[str]], train: bool, max_prefix: int,
                 resolution: int, eval_frame: int, seed: int) -> None:
        self.index, self.stories, self.train = index, stories, train
        self.max_prefix, self.resolution, self.eval_frame, self.seed = max_prefix, resolution, eval_frame, seed
        self.image_source: Literal["files", "target", "none"] = "files"
        self.cached_frames: Container[str] = ()

    def __len__(self) -> int:
        return len(self.stories)

    def load_item(self, i: int) -> dict[str, Any]:
        story = self.stories[i]
        clips = [self.index.clips[c] for c in story]
        k = random.randint(0, self.max_prefix) if self.train else eval_prefix_length(story[0], self.max_prefix, self.seed)
        # one frame per clip: random in training, fixed for evaluation so that scores repeat
        frames = [random.randrange(FRAMES) if self.train else self.eval_frame for _ in story]
        item = {"story_id": story[0], "clip_ids": list(story), "texts": [c.caption for c in clips],
                "settings": [c.setting for c in clips],
                "characters": torch.from_numpy(np.stack([c.characters for c in clips])), "prefix_len": k,
                "frame_index": torch.tensor(frames)}
        if self.image_source == "files":
            item["images"] = torch.stack([read_frame(self.index.frames_path(c), t, self.resolution)
                                          for c, t in zip(story, frames, strict=True)])
        elif self.image_source == "target":  # only the frame of step k+1, the one a visualizer draws
            key = f"{story[k]}#{frames[k]}"
            item["target_image"] = None if key in self.cached_frames else read_frame(
                self.index.frames_path(story[k]), frames[k], self.resolution)
        return item


class FlintstonesSVDataModule(SplitDataModule):
    """FlintstonesSV five-clip stories with a SAGANets prefix length per item."""

    name = "FlintstonesSV"

    def __init__(
        self,
        root: str = "data/flintstones",
        max_prefix_len: int = 3,
        resolution: int = 128,
        eval_frame: int = 2,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            root: FlintstonesSV folder (annotations JSON, split JSON, video_frames_sampled/).
            max_prefix_len: K: training draws the prefix length k from U{0..K} (the paper: 3);
                the target is step k+1, so K is at most 4.
            resolution: side of the square frames served (the files hold 128 px).
            eval_frame: the frame of each clip (0-4) used for validation, test and predict;
                training draws one at random.
            seed: seeds the fixed prefix length of each validation and test story.
            **kwargs: the loader options of SplitDataModule (batch_size, eval_batch_size,
                num_workers, pin_memory, predict_split).
        """
        if not 0 <= max_prefix_len <= STORY_LENGTH - 1:
            raise VisionTalesError(f"max_prefix_len must be within 0..{STORY_LENGTH - 1}, got {max_prefix_len}")
        if not 0 <= eval_frame < FRAMES:
            raise VisionTalesError(f"eval_frame must be within 0..{FRAMES - 1}, got {eval_frame}")
        super().__init__(**kwargs)
        self._index: FlintstonesIndex | None = None

    @property
    def index(self) -> FlintstonesIndex:
        if self._index is None:
            self._index = FlintstonesIndex(self.hparams.root)
        return self._index

    def frame_files(self, stage: str) -> dict[str, Path]:
        """"<globalID>#<frame>" -> frames file for every frame of every clip the stage's splits use
        (after `setup(stage)`): what a latent cache must cover, since training draws any frame."""
        clips = {c for split in self.splits_for(stage) for story in self.datasets[split].stories for c in story}
        return {f"{c}#{t}": self.index.frames_path(c) for c in sorted(clips) for t in range(FRAMES)}

    def serve_target_frames(self, splits: list[str] | None = None, cached: Container[str] = ()) -> None:
        """Serve only the frame of step k+1 (`target_image`) in these splits (default: all), for
        models that draw or score that frame alone (the LoRA visualizer); None for the frames whose
        `frame_files` keys are in `cached` (a latent cache's keys: the model reads those there; a
        worker process sees them as they were when its epoch began)."""
        for split, dataset in self.datasets.items():
            if splits is None or split in splits:
                dataset.image_source, dataset.cached_frames = "target", cached

    def load_frame(self, key: str, path: Path) -> torch.Tensor:
        """The frame named by a `frame_files` key, as served in `images`."""
        return read_frame(path, int(key.rsplit("#", 1)[1]), self.hparams.resolution)

    def build_split(self, split: str) -> tuple[FlintstonesStories, SplitReport]:
        stories, report = self.index.stories(split)
        h = self.hparams
        return FlintstonesStories(self.index, stories, split == "train", h.max_prefix_len, h.resolution,
                                  h.eval_frame, h.seed), report
