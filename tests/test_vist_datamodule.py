import json

import pytest
import torch

from data_modules.vist import VISTDataModule
from data_modules.vist_format import build_sequences, check_dataset, read_stories
from visiontales.errors import VisionTalesError


def test_check_counts_every_drop_reason(vist_root):
    report = check_dataset(vist_root)
    assert report["dataset"] == "vist"
    assert report["splits"]["train"] == {
        "stories": 96, "sequences": 93,
        "dropped": {"missing_image": 1, "unreadable_image": 1, "empty_caption": 1},
        "defects": {"missing_image": 1, "unreadable_image": 1, "empty_caption": 1}}
    assert report["splits"]["val"]["sequences"] == 12
    assert report["splits"]["test"]["dropped"] == {"missing_image": 0, "unreadable_image": 0, "empty_caption": 0}


def test_every_window_mode(vist_root):
    train = check_dataset(vist_root, windows="all")["splits"]["train"]
    # 3 windows per 5-photo story; the defects sit at photo 0 (1 window), 1 (2) and sentence 2 (3)
    assert train["sequences"] == 96 * 3 - 6
    assert train["dropped"] == {"missing_image": 1, "unreadable_image": 2, "empty_caption": 3}


def test_story_order_is_worker_arranged_photo_order_not_file_order(tmp_path):
    records = [{"story_id": "7", "photo_flickr_id": f"p{o}", "worker_arranged_photo_order": o,
                "text": f"sentence {o} .", "original_text": f"Sentence {o}."} for o in (3, 0, 4, 1, 2)]
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"annotations": [[r] for r in records]}))
    assert read_stories(path)["7"] == [(f"p{o}", f"sentence {o} .") for o in range(5)]
    assert read_stories(path, "original_text")["7"][0] == ("p0", "Sentence 0.")


def test_items_and_batches(vist_root):
    dm = VISTDataModule(str(vist_root), batch_size=4, eval_batch_size=5)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (4, 3, 3, 224, 224)
    assert batch["images"].dtype == torch.float32
    assert len(batch["texts"]) == 4 and all(len(t) == 3 for t in batch["texts"])
    assert all(len(p) == 3 for p in batch["photo_ids"])
    assert all(isinstance(s, str) for s in batch["story_id"])
    # CLIP normalisation: roughly zero-centred, unit-scaled values
    assert -2.0 < batch["images"].mean().item() < 2.0 and batch["images"].std().item() < 3.0


def test_evaluation_items_are_distinct_photo_sequences_with_all_references(vist_root):
    sequences, _ = build_sequences(vist_root, "val")
    dm = VISTDataModule(str(vist_root))
    dm.setup("validate")
    val = dm.datasets["val"]
    distinct = {tuple(s.photo_ids) for s in sequences}
    assert len(val) == len(distinct) < len(sequences)
    shared = [val[i] for i in range(len(val)) if len(val[i]["references"]) > 1]
    assert shared, "the synthetic data gives some photo sequences two human stories"
    item = shared[0]
    texts = {" ".join(s.texts) for s in sequences if s.photo_ids == item["photo_ids"]}
    assert set(item["references"]) == texts


def test_attached_features_replace_images(vist_root):
    dm = VISTDataModule(str(vist_root))
    dm.setup("validate")
    features = {p: torch.full((8,), float(i)) for i, p in enumerate(dm.image_paths("validate"))}
    dm.attach_image_features(features)
    item = dm.datasets["val"][0]
    assert "images" not in item
    assert item["image_features"].shape == (3, 8)
    assert torch.equal(item["image_features"][0], features[item["photo_ids"][0]])
    dm.drop_images()
    assert "image_features" not in dm.datasets["val"][0] and "images" not in dm.datasets["val"][0]


def test_malformed_json_names_the_file(tmp_path):
    sis = tmp_path / "annotations" / "sis"
    sis.mkdir(parents=True)
    (sis / "train.story-in-sequence.json").write_text('{"annotations": [[{"story_id": ')
    with pytest.raises(VisionTalesError, match=r"train\.story-in-sequence\.json: not valid JSON"):
        check_dataset(tmp_path)


def test_record_without_a_key_names_the_key(tmp_path):
    sis = tmp_path / "annotations" / "sis"
    sis.mkdir(parents=True)
    (sis / "val.story-in-sequence.json").write_text(json.dumps({"annotations": [[{"story_id": "1"}]]}))
    with pytest.raises(VisionTalesError, match=r"annotations\[0\] lacks key 'photo_flickr_id'"):
        check_dataset(tmp_path)


def test_missing_image_folder(vist_root, tmp_path):
    root = tmp_path / "vist"
    (root / "annotations" / "sis").mkdir(parents=True)
    for split in ("train", "val"):
        src = vist_root / "annotations" / "sis" / f"{split}.story-in-sequence.json"
        (root / "annotations" / "sis" / src.name).write_bytes(src.read_bytes())
    with pytest.raises(VisionTalesError, match=r"images/train: image folder not found"):
        check_dataset(root)
    with pytest.raises(VisionTalesError, match=r"images/train: image folder not found"):
        VISTDataModule(str(root)).setup("fit")
