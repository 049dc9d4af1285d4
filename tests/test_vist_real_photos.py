"""VIST as the paper and Flickr have it: the paper's ~3,000-sequence subset, and photos of the real
sizes and kinds (PNG, GIF, BMP, grayscale, CMYK, EXIF-rotated) read upright as RGB."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2 as T

from data_modules.images import load_image
from data_modules.synthetic import (
    REAL_PHOTO_SIZES,
    draw_photo,
    save_real_photo,
    write_synthetic_vist,
)
from data_modules.vist import VISTDataModule, clip_transform
from data_modules.vist_format import IMAGE_EXTENSIONS
from visiontales.errors import VisionTalesError

AS_STORED = T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True)])  # no resize, no crop
FORMAT_OF_SUFFIX = {".jpg": "JPEG", ".png": "PNG", ".gif": "GIF", ".bmp": "BMP"}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def warnings_logged():
    """WARNING records of the "data_modules" logger (attached there: the CLI stops propagation)."""
    handler, logger = _Records(), logging.getLogger("data_modules")
    logger.addHandler(handler)
    yield lambda: [r.getMessage() for r in handler.records if r.levelno == logging.WARNING and "train_sequences" in r.getMessage()]
    logger.removeHandler(handler)


def _sequences(root: Path, split: str = "train", **options) -> list[tuple[str, tuple[str, ...]]]:
    datamodule = VISTDataModule(root=str(root), **options)
    datamodule.setup({"train": "fit", "val": "validate", "test": "test"}[split])
    return [(g[0].story_id, tuple(g[0].photo_ids)) for g in datamodule.datasets[split].groups]


def test_the_training_subset_is_drawn_by_seed_in_file_order(vist_root, warnings_logged):
    everything = _sequences(vist_root)
    first = _sequences(vist_root, train_sequences=20, subset_seed=0)
    assert len(everything) == 93 and len(first) == 20 and len(set(first)) == 20
    assert first == [s for s in everything if s in set(first)]  # file order kept
    assert first == _sequences(vist_root, train_sequences=20, subset_seed=0)
    assert first != _sequences(vist_root, train_sequences=20, subset_seed=1)
    assert first == [everything[i] for i in sorted(random.Random(0).sample(range(93), 20))]
    assert warnings_logged() == []
    assert _sequences(vist_root, train_sequences=93) == everything
    assert warnings_logged() == []  # exactly what is kept: all, silently
    assert _sequences(vist_root, train_sequences=10_000) == everything
    assert warnings_logged() == ["VIST train: train_sequences=10000 but 93 are kept: training on all"]


def test_the_training_subset_is_drawn_after_windows(vist_root):
    windows = _sequences(vist_root, windows="all")
    subset = _sequences(vist_root, windows="all", train_sequences=200, subset_seed=3)
    assert len(windows) == 282 and len(subset) == 200
    assert subset == [s for s in windows if s in set(subset)]


def test_the_training_subset_leaves_validation_and_test_whole(vist_root):
    for split in ("val", "test"):
        whole = _sequences(vist_root, split)
        assert len(whole) > 0
        assert _sequences(vist_root, split, train_sequences=1, subset_seed=5) == whole


@pytest.mark.parametrize("bad", [0, -3])
def test_a_training_subset_of_nothing_is_refused(bad):
    with pytest.raises(VisionTalesError, match=f"^train_sequences must be at least 1 .*got {bad}$"):
        VISTDataModule(root="x", train_sequences=bad)


def _picture() -> Image.Image:
    """64x48 and asymmetric: a red block top left, a horizontal and a vertical gradient."""
    y, x = np.mgrid[0:48, 0:64]
    pixels = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    pixels[:12, :16] = (255, 0, 0)
    return Image.fromarray(pixels)


def test_a_photo_stored_on_its_side_with_exif_orientation_6_loads_upright(tmp_path):
    upright = _picture()
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.jpg", quality=95, exif=exif)
    with Image.open(tmp_path / "phone.jpg") as img:
        assert img.size == (48, 64)  # stored sideways
    loaded = load_image(tmp_path / "phone.jpg", AS_STORED)
    assert loaded.shape == (3, 48, 64)
    assert (loaded - AS_STORED(upright)).abs().mean() < 0.02
    assert (loaded - AS_STORED(upright.rotate(180))).abs().mean() > 0.1
    assert loaded[0, :12, :16].mean() > 0.9 and loaded[1:, :12, :16].mean() < 0.1  # red is top left


def test_photos_of_any_mode_load_as_rgb(tmp_path):
    picture = _picture()
    rgb = AS_STORED(picture)
    palette = picture.convert("P", palette=Image.Palette.ADAPTIVE)
    palette.save(tmp_path / "trns_bytes.png", transparency=bytes([0, 128] + [255] * 254))
    palette.save(tmp_path / "trns_index.gif", transparency=0)
    picture.convert("RGBA").save(tmp_path / "rgba.png")
    picture.convert("LA").save(tmp_path / "la.png")
    picture.convert("L").save(tmp_path / "grey.bmp")
    picture.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    Image.fromarray(np.full((48, 64), 40_000, np.uint16)).save(tmp_path / "grey16.png")
    blue = Image.new("RGB", picture.size, (0, 0, 255))
    blue.save(tmp_path / "animated.gif", save_all=True, append_images=[picture], duration=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # palette transparency goes through RGBA without a warning
        loaded = {p.name: load_image(p, AS_STORED) for p in sorted(tmp_path.iterdir())}
    for name, image in loaded.items():
        assert image.shape == (3, 48, 64) and image.dtype == torch.float32, name
    assert torch.equal(loaded["rgba.png"], rgb)
    assert torch.equal(loaded["trns_bytes.png"], AS_STORED(palette.convert("RGB")))
    assert torch.equal(loaded["la.png"], loaded["grey.bmp"])
    assert torch.equal(loaded["la.png"][0], loaded["la.png"][2])
    assert (loaded["cmyk.jpg"] - rgb).abs().mean() < 0.02
    assert torch.allclose(loaded["grey16.png"], torch.tensor(156 / 255))  # 40000 / 256, not clipped
    assert torch.equal(loaded["animated.gif"][:, 0, 0], torch.tensor([0.0, 0.0, 1.0]))  # first frame


# an EXIF block with Orientation 6 that Pillow reads and then fails to rewrite (struct.error)
BROKEN_EXIF = (b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x04\x01\x0f\x00\x02\x00\x00\x00\x06\x00\x00\x00>"
               b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00\x01\xa9\x00\x05\x00\x00\x00\x01\x00\x00\x00D"
               b"\x01B\x00\x02\x00\x00\x00\x14\x00\x00\x00L\x90\x00\x00\x00Canon\x00\x00\x00\x00H\x00\x00\x00\x01"
               b"2016:01:01 12:00:00\x00")


def test_an_unreadable_photo_names_itself_and_a_broken_exif_block_is_survived(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"this is not an image")
    with pytest.raises(VisionTalesError, match=r"bad\.jpg: cannot decode image"):
        load_image(tmp_path / "bad.jpg", AS_STORED)
    _picture().resize((640, 480)).save(tmp_path / "whole.jpg", quality=95)
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:5000])
    with pytest.raises(VisionTalesError, match=r"cut\.jpg: cannot decode image \(image file is truncated"):
        load_image(tmp_path / "cut.jpg", AS_STORED)
    upright = _picture()
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "exif.jpg", quality=95, exif=BROKEN_EXIF)
    loaded = load_image(tmp_path / "exif.jpg", AS_STORED)
    assert loaded.shape == (3, 48, 64) and (loaded - AS_STORED(upright)).abs().mean() < 0.02


def test_every_real_kind_saves_the_picture_at_a_real_size(tmp_path):
    picture = draw_photo("beach", "dog", random.Random(0))
    kinds = {}
    for seed in range(60):
        path = save_real_photo(picture, tmp_path / str(seed), random.Random(seed))
        with Image.open(path) as img:
            kind = "exif_rotated" if img.getexif().get(0x0112) == 6 else f"{img.format}/{img.mode}"
            stored = img.size
            assert FORMAT_OF_SUFFIX[path.suffix] == img.format, path
        size = stored[::-1] if kind == "exif_rotated" else stored
        assert size in REAL_PHOTO_SIZES, path
        expected = picture.resize(size, Image.BICUBIC)
        if kind == "JPEG/L":
            expected = expected.convert("L").convert("RGB")
        assert (load_image(path, AS_STORED) - AS_STORED(expected)).abs().mean() < 0.01, kind
        kinds[kind] = size
    assert set(kinds) == {"JPEG/RGB", "PNG/RGB", "GIF/P", "BMP/RGB", "JPEG/L", "JPEG/CMYK", "exif_rotated"}


@pytest.fixture(scope="module")
def real_photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vist-real")
    write_synthetic_vist(root, seed=0, albums=10, photo_kinds="real")
    return root


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_real_photo_kinds_are_written_deterministically_beside_the_same_stories(real_photos, tmp_path):
    found, sizes = {}, set()
    for path in sorted(p for p in (real_photos / "images").rglob("*") if p.is_file()):
        assert path.suffix in IMAGE_EXTENSIONS and path.parent.parent.name == "images"
        try:
            with Image.open(path) as img:
                kind = "exif_rotated" if img.getexif().get(0x0112) == 6 else f"{img.format}/{img.mode}"
                upright = ImageOps.exif_transpose(img).size
        except OSError:
            assert path.name == "10001001.jpg"  # the deliberately unreadable file
            continue
        assert upright in REAL_PHOTO_SIZES, path
        found.setdefault(kind, path)
        sizes.add(upright)
    assert set(found) == {"JPEG/RGB", "PNG/RGB", "GIF/P", "BMP/RGB", "JPEG/L", "JPEG/CMYK", "exif_rotated"}
    assert len(sizes) >= 5 and (375, 500) in sizes
    transform = clip_transform(224)
    for kind, path in found.items():
        image = load_image(path, transform)
        assert image.shape == (3, 224, 224) and torch.isfinite(image).all(), kind
    write_synthetic_vist(tmp_path / "again", seed=0, albums=10, photo_kinds="real")
    assert _digests(real_photos) == _digests(tmp_path / "again")
    write_synthetic_vist(tmp_path / "plain", seed=0, albums=10)
    for split in ("train", "val", "test"):
        sis = f"annotations/sis/{split}.story-in-sequence.json"
        assert json.loads((real_photos / sis).read_text()) == json.loads((tmp_path / "plain" / sis).read_text())
        assert ({p.stem for p in (real_photos / "images" / split).iterdir()}
                == {p.stem for p in (tmp_path / "plain" / "images" / split).iterdir()})


def test_the_data_module_serves_a_batch_of_real_photos(real_photos):
    datamodule = VISTDataModule(root=str(real_photos), batch_size=4, train_sequences=8, subset_seed=1)
    datamodule.setup("fit")
    assert len(datamodule.datasets["train"]) == 8
    assert datamodule.reports["train"].dropped == {"missing_image": 1, "unreadable_image": 1, "empty_caption": 1}
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["images"].shape == (4, 3, 3, 224, 224) and torch.isfinite(batch["images"]).all()
    val = next(iter(datamodule.val_dataloader()))
    assert val["images"].shape[1:] == (3, 3, 224, 224)
