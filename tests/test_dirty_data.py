"""Real data, dirty: photos as they come from Flickr read right or counted, every defect of a
FlintstonesSV story reported, verdicts kept, and a file that changes after the check skipped."""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import data_modules.images as images
from data_modules.common import collate
from data_modules.flintstones_format import ANNOTATIONS, FRAMES_DIR
from data_modules.flintstones_format import check_dataset as check_flintstones
from data_modules.synthetic import write_synthetic_flintstones, write_synthetic_vist
from data_modules.vist import VISTDataModule
from data_modules.vist_format import build_sequences, check_dataset
from visiontales.callbacks import SkippedItems
from visiontales.cli import main

KEPT_KINDS = ("exif_rotated", "cmyk", "palette_transparent", "animated_gif", "rgba", "grayscale", "png_named_jpg")
DROPPED_KINDS = ("truncated", "bomb", "empty")


@pytest.fixture(autouse=True)
def own_home(tmp_path, monkeypatch):
    """Verdicts of this test only (they are kept under $VISIONTALES_HOME)."""
    monkeypatch.setenv("VISIONTALES_HOME", str(tmp_path / "home"))


def _upright_picture() -> Image.Image:
    """Red above, blue below: which way up it is shows in the pixels."""
    img = Image.new("RGB", (320, 240), (0, 0, 230))
    img.paste((230, 0, 0), (0, 0, 320, 120))
    return img


def _bomb_png(path: Path) -> None:
    """A valid PNG whose header says 15000 x 15000 px (225 Mpx, past Pillow's bomb limit)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", 15000, 15000)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    path.write_bytes(bytes(data))


def write_kind(path: Path, kind: str) -> Path:
    """Overwrite the photo at `path` (a .jpg) as one dirty kind; returns where it now lies."""
    picture = _upright_picture()
    path.unlink()
    if kind == "exif_rotated":  # stored on its side, as a phone held upright writes it
        exif = Image.Exif()
        exif[0x0112] = 6
        picture.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif)
    elif kind == "cmyk":
        picture.convert("CMYK").save(path)
    elif kind == "palette_transparent":
        path = path.with_suffix(".png")
        p = picture.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
        p.info["transparency"] = 0
        p.save(path, transparency=0)
    elif kind == "animated_gif":
        path = path.with_suffix(".gif")
        picture.save(path, save_all=True, append_images=[Image.new("RGB", picture.size, (0, 255, 0))], duration=100)
    elif kind == "rgba":
        path = path.with_suffix(".png")
        rgba = picture.convert("RGBA")
        rgba.putalpha(200)
        rgba.save(path)
    elif kind == "grayscale":
        picture.convert("L").save(path)
    elif kind == "png_named_jpg":
        picture.save(path, format="PNG")
    elif kind == "truncated":
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=95)
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    elif kind == "bomb":
        path = path.with_suffix(".png")
        _bomb_png(path)
    elif kind == "empty":
        path.write_bytes(b"")
    return path


@pytest.fixture
def dirty_vist(tmp_path) -> tuple[Path, dict[str, str], int, dict]:
    """A synthetic VIST whose train photos include every dirty kind, one per kept sequence:
    (root, kind -> photo id, sequences the dropped kinds cost, the train report before)."""
    root = tmp_path / "vist"
    write_synthetic_vist(root, seed=3, albums=20)
    sequences, clean = build_sequences(root, "train")
    chosen: dict[str, str] = {}
    taken: set[str] = set()
    for kind, seq in zip(KEPT_KINDS + DROPPED_KINDS, sequences, strict=False):
        photo = next(p for p in seq.photo_ids if p not in taken)
        taken.add(photo)
        write_kind(root / "images" / "train" / f"{photo}.jpg", kind)
        chosen[kind] = photo
    bad = {chosen[k] for k in DROPPED_KINDS}
    lost = sum(any(p in bad for p in seq.photo_ids) for seq in sequences)
    return root, chosen, lost, clean.as_dict()


def test_dirty_photos_are_kept_or_dropped_and_counted_exactly(dirty_vist, capsys):
    root, chosen, lost, clean = dirty_vist  # clean: the synthetic set's own defects, before the kinds
    assert main(["data", "check", "--dataset", "vist", "--root", str(root), "--json", "--list-bad"]) == 0
    train = json.loads(capsys.readouterr().out)["splits"]["train"]
    assert train["defects"]["unreadable_image"] == 3 + 1  # truncated, bomb, empty; the synthetic set's own
    assert train["defects"]["missing_image"] == clean["defects"]["missing_image"] == 1
    assert train["dropped"]["unreadable_image"] == lost + clean["dropped"]["unreadable_image"]
    assert train["sequences"] == clean["sequences"] - lost
    bad = train["bad"]["unreadable_image"]
    assert {chosen[k] for k in DROPPED_KINDS} < set(bad)
    assert "truncated" in bad[chosen["truncated"]] or "decode" in bad[chosen["truncated"]]
    assert "decompression bomb" in bad[chosen["bomb"]] and "empty file" in bad[chosen["empty"]]
    assert not {chosen[k] for k in KEPT_KINDS} & set(bad)

    datamodule = VISTDataModule(root=str(root))
    datamodule.setup("fit")
    dataset = datamodule.datasets["train"]
    assert len(dataset) == train["sequences"]
    items = [dataset[i] for i in range(len(dataset))]
    assert all("skipped" not in item and item["images"].shape == (3, 3, 224, 224) for item in items)
    served = {p for item in items for p in item["photo_ids"]}
    assert {chosen[k] for k in KEPT_KINDS} <= served and not {chosen[k] for k in DROPPED_KINDS} & served
    # the photo stored on its side reaches CLIP upright: red above blue
    path = next((root / "images" / "train").glob(f"{chosen['exif_rotated']}.*"))
    red = datamodule.load_photo(chosen["exif_rotated"], path)[0]
    assert red[:80].mean() > red[-80:].mean() + 1.0


def test_list_bad_prints_each_bad_photo_with_its_file(dirty_vist, capsys):
    root, chosen, _, _ = dirty_vist
    assert main(["data", "check", "--dataset", "vist", "--root", str(root), "--list-bad"]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines() if "\t" in line]
    listed = {(split, reason, item) for split, reason, item, _ in lines}
    for kind in DROPPED_KINDS:
        assert ("train", "unreadable_image", chosen[kind]) in listed
    assert sum(reason == "missing_image" for _, reason, _ in listed) == 1
    assert all(str(root) in detail for _, reason, _, detail in lines if reason != "empty_caption")


def test_verdicts_are_kept_and_a_changed_photo_is_checked_again(dirty_vist, monkeypatch):
    root, chosen, _, _ = dirty_vist
    first = check_dataset(root)
    decoded: list[Path] = []
    original = images.image_problem
    monkeypatch.setattr(images, "image_problem", lambda path: decoded.append(path) or original(path))
    assert check_dataset(root) == first and decoded == []  # every verdict from the cache
    photo = next((root / "images" / "train").glob(f"{chosen['truncated']}.*"))
    _upright_picture().save(photo, format="JPEG")  # repaired: new size and mtime
    os.utime(photo, ns=(photo.stat().st_atime_ns, photo.stat().st_mtime_ns + 10**9))
    again = check_dataset(root)["splits"]["train"]
    assert decoded == [photo]
    assert again["defects"]["unreadable_image"] == first["splits"]["train"]["defects"]["unreadable_image"] - 1


def test_the_check_in_worker_processes_gives_the_same_verdicts(dirty_vist):
    root, chosen, _, _ = dirty_vist
    paths = {p.stem: p for p in (root / "images" / "train").iterdir()}
    in_process = images.check_images(paths, workers=0)
    os.environ["VISIONTALES_HOME"] = str(root.parent / "other-home")  # no verdicts kept: decode again
    assert images.check_images(paths, workers=2) == in_process
    assert {k for k, v in in_process.items() if v} >= {chosen[k] for k in DROPPED_KINDS}


def test_a_photo_damaged_after_the_check_is_skipped_and_reported(dirty_vist, caplog):
    root, *_ = dirty_vist
    datamodule = VISTDataModule(root=str(root))
    datamodule.setup("fit")
    dataset = datamodule.datasets["train"]
    victim = dataset.groups[0][0]
    victim.image_paths[0].write_bytes(b"not a photo any more")
    item = dataset[0]
    assert item["story_id"] != victim.story_id or item["photo_ids"] != victim.photo_ids
    notes = item["skipped"]
    assert len(notes) == 1 and str(victim.image_paths[0]) in notes[0]
    batch = collate([item, dataset[1]])
    assert batch["skipped"] == notes and batch["images"].shape[0] == 2
    callback = SkippedItems()
    callback.on_train_batch_start(None, None, batch, 0)
    assert "skipped" not in batch  # taken off before the model sees it
    with caplog.at_level(logging.WARNING):
        callback.on_train_epoch_end(SimpleNamespace(current_epoch=0, world_size=1, global_rank=0), None)
    assert "1 item(s) could not be read and were skipped" in caplog.text and str(victim.image_paths[0]) in caplog.text
    assert callback.notes == []


def test_a_story_with_three_defective_clips_reports_all_three(tmp_path, capsys):
    root = tmp_path / "flintstones"
    write_synthetic_flintstones(root, seed=0, episodes=10)
    before = check_flintstones(root)["splits"]["train"]
    splits = json.loads((root / "train-val-test_split.json").read_text())
    followings = __import__("pickle").loads((root / "following_cache4.pkl").read_bytes())
    before_bad = check_flintstones(root, list_bad=True)["splits"]["train"]["bad"]
    known = {c for items in before_bad.values() for c in items}
    story = next([c, *followings[c]] for c in splits["train"]
                 if c in followings and not known & {c, *followings[c]})
    missing, wrong_shape, no_caption = story[1], story[2], story[3]
    (root / FRAMES_DIR / f"{missing}.npy").unlink()
    np.save(root / FRAMES_DIR / f"{wrong_shape}.npy", np.zeros((5, 64, 64, 3), np.uint8))
    records = json.loads((root / ANNOTATIONS).read_text())
    for record in records:
        if record["globalID"] == no_caption:
            record["description"] = ""
    (root / ANNOTATIONS).write_text(json.dumps(records))

    assert main(["data", "check", "--dataset", "flintstones", "--root", str(root), "--json", "--list-bad"]) == 0
    train = json.loads(capsys.readouterr().out)["splits"]["train"]
    for reason in ("missing_frames", "bad_frames", "empty_caption"):
        assert train["defects"][reason] == before["defects"][reason] + 1
    bad = train["bad"]
    assert missing in bad["missing_frames"] and wrong_shape in bad["bad_frames"] and no_caption in bad["empty_caption"]
    assert "(5, 64, 64, 3)" in bad["bad_frames"][wrong_shape]
    assert train["stories"] < before["stories"]
    assert sum(train["dropped"].values()) - sum(before["dropped"].values()) == before["stories"] - train["stories"]


def test_loaders_that_would_exhaust_shared_memory_fail_at_once_in_one_line(flintstones_root, monkeypatch):
    from data_modules.flintstones import FlintstonesSVDataModule
    from visiontales.errors import VisionTalesError

    datamodule = FlintstonesSVDataModule(str(flintstones_root), resolution=512, batch_size=8, num_workers=4)
    datamodule.setup("fit")
    monkeypatch.setattr("shutil.disk_usage", lambda path: SimpleNamespace(free=64 * 2**20, total=64 * 2**20))
    with pytest.raises(VisionTalesError, match=r"4 workers x 2 batches of 120 MB need 960 MB .*--shm-size"):
        datamodule.train_dataloader()
    datamodule.hparams.num_workers = 0  # no workers, no shared memory
    assert datamodule.train_dataloader() is not None
