"""FlintstonesSV stories with SAGANets' variable-length caption prefixes.

Reads the layout of adymaharana/storydalle (flintstones_dataloader.py) and xichenpan/ARLDM:

    <root>/flintstones_annotations_v1-0.json      per-clip records: globalID, description, setting, characters
    <root>/train-val-test_split.json              {"train": [globalID, ...], "val": [...], "test": [...]}
    <root>/following_cache4.pkl                   {globalID: [next 4 globalIDs]}   (rebuilt when absent)
    <root>/labels.pkl                             {globalID: 7-dim multi-hot}      (derived when absent)
    <root>/video_frames_sampled/<globalID>.npy    uint8 (5, 128, 128, 3), read memory-mapped

A story is a clip and its 4 followers (same season and episode), kept only when all five have
frames of the right shape and a caption; a story belongs to the split of its first clip, as in
StoryDALL-E. SAGANets (the SAGANets paper, section 4.3) trains on a prefix of k ~ U{0..K}
caption-image pairs and the target step k+1; validation and test fix k per story (seeded) and
use the middle frame of each clip, so their scores repeat.
"""

from __future__ import annotations

import logging
import pickle
import random
import zlib
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from data_modules.common import SPLITS, SkippingDataset, SplitDataModule, SplitReport
from visiontales.errors import UnreadableItem, VisionTalesError, read_json
from visiontales.vocabulary import MAIN_CHARACTERS, STORY_LENGTH

log = logging.getLogger(__name__)

ANNOTATIONS = "flintstones_annotations_v1-0.json"
SPLIT_FILE = "train-val-test_split.json"
FOLLOWINGS = "following_cache4.pkl"
LABELS = "labels.pkl"
FRAMES_DIR = "video_frames_sampled"
FRAMES = 5
FRAME_SHAPE = (FRAMES, 128, 128, 3)
DEFECT_REASONS = ("missing_frames", "bad_frames", "empty_caption")  # of a clip; a story is dropped for its first
DROP_REASONS = (*DEFECT_REASONS, "no_followers")


def main_character_labels(characters: list[dict]) -> np.ndarray:
    """7-dim multi-hot of the main characters among annotated entities (labels stripped, case-folded)."""
    order = [name.casefold() for name in MAIN_CHARACTERS]
    labels = np.zeros(len(order), dtype=np.float32)
    for entity in characters:
        name = str(entity.get("entityLabel", "")).strip().casefold()
        if name in order:
            labels[order.index(name)] = 1.0
    return labels


def rebuild_following_cache(clip_ids: list[str], length: int = 4) -> dict[str, list[str]]:
    """{clip: next `length` clips of the same season and episode}, as StoryDALL-E rebuilds it:
    sort all globalIDs, keep a clip when its next `length` clips share `id.split('_')[1]` and [3]."""
    ordered = sorted(clip_ids)
    followings = {}
    for i, clip in enumerate(ordered):
        parts = clip.split("_")
        nxt = ordered[i + 1:i + 1 + length]
        if len(nxt) == length and all(c.split("_")[1] == parts[1] and c.split("_")[3] == parts[3] for c in nxt):
            followings[clip] = nxt
    return followings


@dataclass
class Clip:
    caption: str
    setting: str
    characters: np.ndarray  # (7,) multi-hot


def _load_pickle(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
        raise VisionTalesError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from e


class FlintstonesIndex:
    """Everything read from the dataset folder once: clips, splits, followings, frame checks."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise VisionTalesError(f"{self.root}: dataset folder not found")
        records = read_json(self.root / ANNOTATIONS)
        if not isinstance(records, list):
            raise VisionTalesError(f"{self.root / ANNOTATIONS}: expected a list of per-clip records")
        labels = _load_pickle(self.root / LABELS) if (self.root / LABELS).exists() else {}
        self.clips: dict[str, Clip] = {}
        for i, record in enumerate(records):
            if not isinstance(record, dict) or "globalID" not in record:
                raise VisionTalesError(f"{self.root / ANNOTATIONS}: record [{i}] has no 'globalID'")
            gid = record["globalID"]
            derived = main_character_labels(record.get("characters") or [])
            self.clips[gid] = Clip(str(record.get("description") or "").strip(), str(record.get("setting") or ""),
                                   np.asarray(labels.get(gid, derived), dtype=np.float32))
        splits = read_json(self.root / SPLIT_FILE)
        if not isinstance(splits, dict):
            raise VisionTalesError(f"{self.root / SPLIT_FILE}: expected {{\"train\": [...], \"val\": [...], \"test\": [...]}}")
        self.splits: dict[str, list[str]] = {s: list(splits[s]) for s in SPLITS if s in splits}
        unknown = {s: [c for c in ids if c not in self.clips] for s, ids in self.splits.items()}
        for split, ids in unknown.items():
            if ids:
                log.warning("%s: %d clip(s) of split '%s' are not in %s (e.g. %s): they have no caption, "
                            "and stories that hold one are dropped", self.root / SPLIT_FILE, len(ids), split,
                            ANNOTATIONS, ids[0])
        if (self.root / FOLLOWINGS).exists():
            self.followings: dict[str, list[str]] = _load_pickle(self.root / FOLLOWINGS)
        else:  # StoryDALL-E's rebuild: over every clip the split file names
            self.followings = rebuild_following_cache([c for ids in self.splits.values() for c in ids])
        self._frame_defects: dict[str, tuple[str, str]] = {}

    def frames_path(self, clip: str) -> Path:
        return self.root / FRAMES_DIR / f"{clip}.npy"

    def clip_defects(self, clip: str) -> list[tuple[str, str]]:
        """Every defect of one clip as (reason, what is wrong): its frames file missing, or not
        (5, 128, 128, 3) uint8 (the header is read, memory-mapped), its caption empty or absent."""
        if clip not in self._frame_defects:
            path = self.frames_path(clip)
            if not path.exists():
                self._frame_defects[clip] = ("missing_frames", str(path))
            else:
                try:
                    frames = np.load(path, mmap_mode="r")  # reads the header only
                    found = f"{tuple(frames.shape)} {frames.dtype}"
                    ok = frames.shape == FRAME_SHAPE and frames.dtype == np.uint8
                except (ValueError, OSError, EOFError, pickle.UnpicklingError) as e:
                    found, ok = f"not a readable .npy ({type(e).__name__}: {e})", False
                self._frame_defects[clip] = ("", "") if ok else (
                    "bad_frames", f"{path}: {found}, expected {FRAME_SHAPE} uint8")
        defects = [self._frame_defects[clip]] if self._frame_defects[clip][0] else []
        if clip not in self.clips:
            defects.append(("empty_caption", f"{clip}: not in {ANNOTATIONS}"))
        elif not self.clips[clip].caption:
            defects.append(("empty_caption", f"{clip}: empty description in {ANNOTATIONS}"))
        return defects

    def stories(self, split: str) -> tuple[list[list[str]], SplitReport]:
        """The split's stories (5 clip ids each) and the report: each dropped story under its
        first problem, and every defect of every clip of the split's stories, by clip id."""
        ids = self.splits.get(split, [])
        report = SplitReport(DROP_REASONS, {"clips": len(ids)}, defect_reasons=DEFECT_REASONS)
        kept = []
        for clip in ids:
            followers = self.followings.get(clip)
            if not followers or len(followers) < STORY_LENGTH - 1:
                report.dropped["no_followers"] += 1
                continue
            story = [clip, *followers[: STORY_LENGTH - 1]]
            reasons = set()
            for c in story:
                for reason, detail in self.clip_defects(c):
                    report.defects[reason][c] = detail
                    reasons.add(reason)
            first = next((r for r in DEFECT_REASONS if r in reasons), None)
            if first:
                report.dropped[first] += 1
            else:
                kept.append(story)
        report.counts["stories"] = len(kept)
        report.log_defects(f"FlintstonesSV {split}", DEFECT_REASONS)
        if not kept:
            frames_dir = self.root / FRAMES_DIR
            if ids and not frames_dir.is_dir():
                report.problem = f"{frames_dir}: frames folder not found (expected {FRAMES_DIR}/<globalID>.npy)"
            else:
                dropped = ", ".join(f"{r}={n}" for r, n in sorted(report.dropped.items())) or "no clips"
                report.problem = f"{self.root / SPLIT_FILE}: no usable story in split '{split}' ({dropped})"
        return kept, report


def check_dataset(root: str | Path, list_bad: bool = False, workers: int | None = None) -> dict[str, Any]:
    """The report of `visiontales data check --dataset flintstones`; with `list_bad`, each split's
    defective clips by id (`bad`). (`workers`: unused, the frames files' headers are read here.)"""
    index = FlintstonesIndex(root)
    reports = {split: index.stories(split)[1] for split in index.splits}
    if not any(r.counts["stories"] for r in reports.values()):
        problems = [r.problem for r in reports.values()] or [f"{Path(root) / SPLIT_FILE}: no split listed"]
        raise VisionTalesError(problems[0])
    return {"dataset": "flintstones", "splits": {split: r.as_dict(list_bad) for split, r in reports.items()}}


def read_frame(path: Path, t: int, resolution: int) -> torch.Tensor:
    """Frame t of a frames file (memory-mapped) as (3, R, R) in [-1, 1]."""
    try:
        frames = np.load(path, mmap_mode="r")
        frame = np.array(frames[t])
    except (ValueError, OSError, EOFError, IndexError, pickle.UnpicklingError) as e:
        raise UnreadableItem(f"{path}: cannot read frame {t} ({type(e).__name__}: {e})") from e
    image = torch.from_numpy(frame).permute(2, 0, 1).float() / 127.5 - 1.0
    if resolution != image.shape[-1]:
        image = F.interpolate(image[None], size=(resolution, resolution), mode="bilinear", antialias=True,
                              align_corners=False)[0]
    return image


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
