"""VIST as the paper and Flickr have it: the paper's ~3,000-sequence subset, and photos of the real
sizes and kinds (PNG, GIF, BMP, grayscale, CMYK, EXIF-rotated) read upright as RGB."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageOps

from data_modules.synthetic import REAL_PHOTO_SIZES, write_synthetic_vist
from data_modules.vist import VISTDataModule, clip_transform, load_image


def _train_ids(root: Path, **options) -> list[str]:
    datamodule = VISTDataModule(root=str(root), **options)
    datamodule.setup("fit")
    return [group[0].story_id for group in datamodule.datasets["train"].groups]


def test_the_training_subset_is_drawn_by_seed_and_leaves_evaluation_whole(vist_root):
    everything = _train_ids(vist_root)
    first = _train_ids(vist_root, train_sequences=20, subset_seed=0)
    assert len(first) == 20 and set(first) < set(everything)
    assert first == [s for s in everything if s in set(first)]  # file order kept
    assert first == _train_ids(vist_root, train_sequences=20, subset_seed=0)
    assert first != _train_ids(vist_root, train_sequences=20, subset_seed=1)
    assert _train_ids(vist_root, train_sequences=10_000) == everything  # more than kept: all, with a warning
    whole, subset = VISTDataModule(root=str(vist_root)), VISTDataModule(root=str(vist_root), train_sequences=20)
    for datamodule in (whole, subset):
        datamodule.setup("fit")
    assert len(whole.datasets["val"]) == len(subset.datasets["val"]) > 0


def test_a_training_subset_of_nothing_is_refused():
    from visiontales.errors import VisionTalesError

    with pytest.raises(VisionTalesError, match="train_sequences must be at least 1"):
        VISTDataModule(root="x", train_sequences=0)


@pytest.fixture(scope="module")
def real_photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vist-real")
    write_synthetic_vist(root, seed=0, albums=10, photo_kinds="real")
    return root


def test_real_photo_kinds_are_written_and_loaded_upright_as_rgb(real_photos):
    found = {}
    for path in sorted((real_photos / "images").rglob("*.*")):
        try:
            with Image.open(path) as img:
                kind = "exif_rotated" if img.getexif().get(0x0112) == 6 else f"{img.format}/{img.mode}"
                found.setdefault(kind, (path, img.size))
        except OSError:
            continue  # the deliberately unreadable file
    assert {"JPEG/RGB", "PNG/RGB", "GIF/P", "BMP/RGB", "JPEG/L", "JPEG/CMYK", "exif_rotated"} <= set(found)
    assert max(max(size) for _, size in found.values()) >= 1024
    transform = clip_transform(224)
    for kind, (path, _) in found.items():
        image = load_image(path, transform)
        assert image.shape == (3, 224, 224) and torch.isfinite(image).all(), kind
    # the rotated photo is stored on its side and read upright: as exif_transpose turns it
    path, stored = found["exif_rotated"]
    with Image.open(path) as img:
        upright, sideways = ImageOps.exif_transpose(img).convert("RGB"), img.convert("RGB")
    assert upright.size == stored[::-1] and upright.size in REAL_PHOTO_SIZES
    assert torch.equal(load_image(path, transform), transform(upright))
    assert not torch.allclose(load_image(path, transform), transform(sideways), atol=0.1)


def test_the_data_module_serves_a_batch_of_real_photos(real_photos):
    datamodule = VISTDataModule(root=str(real_photos), batch_size=4)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["images"].shape == (4, 3, 3, 224, 224)
