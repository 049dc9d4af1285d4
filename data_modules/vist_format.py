"""The VIST files as released (lichengunc/vist_api reads this layout), parsed into three-image
sequences and checked: what `visiontales data check` and the data module (vist.py) read. Imports
no Lightning.

    <root>/annotations/sis/{train,val,test}.story-in-sequence.json
    <root>/images/{train,val,test}/<photo_flickr_id>.{jpg,png,gif,bmp}

A story is the five records sharing `story_id`, ordered by `worker_arranged_photo_order` (not by
file order). From each story we take three-image sequences: the first three photos (the paper's
setting) or every window of three. A sequence is dropped, and counted by reason, when one of its
images is missing or unreadable or one of its sentences is empty.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from data_modules.images import check_images
from data_modules.split_report import SPLITS, SplitReport
from visiontales.errors import VisionTalesError, read_json

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
DROP_REASONS = ("missing_image", "unreadable_image", "empty_caption")
SEQUENCE_LENGTH = 3
REQUIRED_KEYS = ("story_id", "photo_flickr_id", "worker_arranged_photo_order", "text", "original_text")


def sis_path(root: Path, split: str) -> Path:
    return root / "annotations" / "sis" / f"{split}.story-in-sequence.json"


@dataclass
class Sequence:
    """Three consecutive photos of one story and their sentences, in story order."""

    story_id: str
    photo_ids: list[str]
    texts: list[str]
    image_paths: list[Path]


def read_stories(path: Path, text_field: str = "text") -> dict[str, list[tuple[str, str]]]:
    """Read one SIS JSON: story_id -> [(photo_id, sentence)] in worker_arranged_photo_order."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise VisionTalesError(f"{path}: expected a JSON object with an 'annotations' list (VIST SIS format)")
    records: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for i, ann in enumerate(data["annotations"]):
        # every SIS annotation is a one-element list; the reference loaders all read ann[0]
        record = ann[0] if isinstance(ann, list) and ann else None
        if not isinstance(record, dict):
            raise VisionTalesError(f"{path}: annotations[{i}] is not a one-element list holding a record")
        missing = [k for k in REQUIRED_KEYS if k not in record]
        if missing:
            raise VisionTalesError(f"{path}: annotations[{i}] lacks key '{missing[0]}'")
        try:
            order = int(record["worker_arranged_photo_order"])
        except (TypeError, ValueError) as e:
            raise VisionTalesError(f"{path}: annotations[{i}] has a non-integer "
                                   f"worker_arranged_photo_order {record['worker_arranged_photo_order']!r}") from e
        records[str(record["story_id"])].append(
            (order, str(record["photo_flickr_id"]), str(record[text_field] or "").strip()))
    return {sid: [(photo, text) for _, photo, text in sorted(recs)] for sid, recs in records.items()}


def index_images(image_dir: Path) -> dict[str, Path]:
    """photo_id -> image file, from one listing of the split's image folder (empty if absent)."""
    if not image_dir.is_dir():
        return {}
    return {entry.stem: entry for entry in image_dir.iterdir() if entry.suffix.lower() in IMAGE_EXTENSIONS}


def build_sequences(root: Path, split: str, windows: Literal["first", "all"] = "first",
                    text_field: str = "text", check_workers: int | None = None) -> tuple[list[Sequence], SplitReport]:
    """Three-image sequences of one split and the report of what was kept and dropped: each
    sequence under its first problem (a missing, then an unreadable photo, then an empty sentence),
    and in `defects` every missing or unreadable photo and every empty sentence by its id."""
    stories = read_stories(sis_path(root, split), text_field)
    image_dir = root / "images" / split
    images = index_images(image_dir)
    report = SplitReport(DROP_REASONS, {"stories": len(stories)}, defect_reasons=DROP_REASONS)
    windows_of = {story_id: [story[start:start + SEQUENCE_LENGTH] for start in
                             ([0] if windows == "first" else range(len(story) - SEQUENCE_LENGTH + 1))]
                  for story_id, story in sorted(stories.items())}
    used = {p for story in windows_of.values() for window in story if len(window) == SEQUENCE_LENGTH
            for p, _ in window}
    problems = check_images({p: images[p] for p in sorted(used) if p in images}, check_workers,
                            desc=f"checking {split} photos")
    for p in sorted(used):
        if p not in images:
            report.defects["missing_image"][p] = f"{image_dir}: no {p}{'|'.join(IMAGE_EXTENSIONS)}"
        elif problems[p]:
            report.defects["unreadable_image"][p] = f"{images[p]}: {problems[p]}"
    sequences = []
    for story_id, story_windows in windows_of.items():
        for window in story_windows:
            if len(window) < SEQUENCE_LENGTH:
                continue
            photo_ids = [p for p, _ in window]
            texts = [t for _, t in window]
            for p, t in window:
                if not t:
                    report.defects["empty_caption"][f"{story_id}/{p}"] = f"{sis_path(root, split)}: story {story_id}, photo {p}"
            if any(p not in images for p in photo_ids):
                report.dropped["missing_image"] += 1
            elif any(problems[p] for p in photo_ids):
                report.dropped["unreadable_image"] += 1
            elif not all(texts):
                report.dropped["empty_caption"] += 1
            else:
                sequences.append(Sequence(story_id, photo_ids, texts, [images[p] for p in photo_ids]))
    report.counts["sequences"] = len(sequences)
    report.log_defects(f"VIST {split}", ("unreadable_image",))
    if not sequences:
        if not image_dir.is_dir():
            report.problem = f"{image_dir}: image folder not found (expected images/{split}/<photo_id>.jpg)"
        else:
            dropped = ", ".join(f"{r}={n}" for r, n in sorted(report.dropped.items())) or "no stories"
            report.problem = f"{sis_path(root, split)}: no usable three-image sequence ({dropped})"
    return sequences, report


def check_dataset(root: str | Path, windows: Literal["first", "all"] = "first", list_bad: bool = False,
                  workers: int | None = None) -> dict[str, Any]:
    """The report of `visiontales data check --dataset vist`: per split found on disk; with
    `list_bad`, each split's defective photos and sentences by id (`bad`)."""
    root = Path(root)
    if not root.is_dir():
        raise VisionTalesError(f"{root}: dataset folder not found")
    reports = {split: build_sequences(root, split, windows, check_workers=workers)[1]
               for split in SPLITS if sis_path(root, split).exists()}
    if not reports:
        raise VisionTalesError(f"{root / 'annotations' / 'sis'}: no <split>.story-in-sequence.json found "
                               f"for any of {', '.join(SPLITS)}")
    if not any(r.counts["sequences"] for r in reports.values()):
        raise VisionTalesError(next(iter(reports.values())).problem)
    return {"dataset": "vist", "splits": {split: r.as_dict(list_bad) for split, r in reports.items()}}
