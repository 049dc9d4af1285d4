"""The FlintstonesSV files as released (adymaharana/storydalle's flintstones_dataloader.py and
xichenpan/ARLDM read this layout), indexed and checked: what `visiontales data check` and the data
module (flintstones.py) read. Imports no Lightning.

    <root>/flintstones_annotations_v1-0.json      per-clip records: globalID, description, setting, characters
    <root>/train-val-test_split.json              {"train": [globalID, ...], "val": [...], "test": [...]}
    <root>/following_cache4.pkl                   {globalID: [next 4 globalIDs]}   (rebuilt when absent)
    <root>/labels.pkl                             {globalID: 7-dim multi-hot}      (derived when absent)
    <root>/video_frames_sampled/<globalID>.npy    uint8 (5, 128, 128, 3), read memory-mapped

A story is a clip and its 4 followers (same season and episode), kept only when all five have
frames of the right shape and a caption; a story belongs to the split of its first clip, as in
StoryDALL-E.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from data_modules.split_report import SPLITS, SplitReport
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
