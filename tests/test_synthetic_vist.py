import hashlib
import json

from PIL import Image

from data_modules.synthetic import OBJECTS, SCENES, write_synthetic_vist


def _digest(root):
    h = hashlib.sha1()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_writes_the_real_vist_layout(vist_root):
    for split, stories in (("train", 96), ("val", 12), ("test", 12)):
        sis = json.loads((vist_root / "annotations" / "sis" / f"{split}.story-in-sequence.json").read_text())
        assert {"images", "albums", "annotations"} <= set(sis)
        assert all(isinstance(a, list) and len(a) == 1 for a in sis["annotations"])
        records = [a[0] for a in sis["annotations"]]
        assert len({r["story_id"] for r in records}) == stories
        assert len(records) == 5 * stories
        assert {"original_text", "album_id", "photo_flickr_id", "setting", "worker_id", "story_id", "tier",
                "worker_arranged_photo_order", "text", "storylet_id"} <= set(records[0])
        assert all(isinstance(r["story_id"], str) and isinstance(r["worker_arranged_photo_order"], int)
                   for r in records)
        assert any(p.suffix == ".png" for p in (vist_root / "images" / split).iterdir())


def test_records_are_not_in_story_order(vist_root):
    sis = json.loads((vist_root / "annotations" / "sis" / "train.story-in-sequence.json").read_text())
    first = [a[0] for a in sis["annotations"][:20]]
    # shuffled: consecutive records rarely belong to the same story in order
    in_order = sum(a["story_id"] == b["story_id"] and b["worker_arranged_photo_order"] == a["worker_arranged_photo_order"] + 1
                   for a, b in zip(first, first[1:], strict=False))
    assert in_order < 5


def test_captions_name_what_the_images_show(vist_root):
    sis = json.loads((vist_root / "annotations" / "sis" / "val.story-in-sequence.json").read_text())
    albums = {a["id"]: a["title"] for a in sis["albums"]}
    for ann in sis["annotations"]:
        record = ann[0]
        scene = albums[record["album_id"]]
        assert scene in SCENES
        if record["worker_arranged_photo_order"] == 0:
            assert scene in record["text"]
        else:
            assert any(obj in record["text"] for obj in OBJECTS)
    image = Image.open(next((vist_root / "images" / "val").glob("*.jpg")))
    assert image.size == (256, 192)


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    write_synthetic_vist(tmp_path / "a", seed=3, albums=10)
    write_synthetic_vist(tmp_path / "b", seed=3, albums=10)
    write_synthetic_vist(tmp_path / "c", seed=4, albums=10)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
