import hashlib
import json
import logging
import pickle
import shutil

import numpy as np
import pytest
import torch

from data_modules.flintstones import FlintstonesSVDataModule
from data_modules.flintstones_format import (
    FRAMES_DIR,
    FlintstonesIndex,
    check_dataset,
    main_character_labels,
    rebuild_following_cache,
)
from data_modules.synthetic import write_synthetic_flintstones
from visiontales.errors import VisionTalesError
from visiontales.vocabulary import MAIN_CHARACTERS


def _copy_without_pickles(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.pkl"))
    return dst


def test_writes_the_real_layout(flintstones_root):
    records = json.loads((flintstones_root / "flintstones_annotations_v1-0.json").read_text())
    assert {"globalID", "description", "setting", "characters"} <= set(records[0])
    assert all("entityLabel" in c for r in records for c in r["characters"])
    splits = json.loads((flintstones_root / "train-val-test_split.json").read_text())
    assert set(splits) == {"train", "val", "test"}
    assert len(splits["train"]) == 16 * 14 + 1 and len(splits["val"]) == len(splits["test"]) == 2 * 14
    frames = np.load(next((flintstones_root / FRAMES_DIR).glob("*.npy")))
    assert frames.shape == (5, 128, 128, 3) and frames.dtype == np.uint8
    moving = [np.load(p) for p in sorted((flintstones_root / FRAMES_DIR).glob("*.npy"))[:40]]
    assert any(not np.array_equal(f[0], f[4]) for f in moving)  # walking and running clips move
    for name in ("following_cache4.pkl", "labels.pkl"):
        assert (flintstones_root / name).is_file()


def test_same_seed_same_files(tmp_path):
    def digest(root):
        return hashlib.sha1(b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())).hexdigest()

    write_synthetic_flintstones(tmp_path / "a", seed=5, episodes=10)
    write_synthetic_flintstones(tmp_path / "b", seed=5, episodes=10)
    write_synthetic_flintstones(tmp_path / "c", seed=6, episodes=10)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")


def test_check_counts_every_drop_reason(flintstones_root):
    report = check_dataset(flintstones_root)
    assert report["dataset"] == "flintstones"
    # 16 train episodes of 14 clips: 10 stories each, minus 5 per defect; the last 4 clips of each
    # episode and the clip the annotations lack have no 4 followers
    assert report["splits"]["train"] == {"clips": 225, "stories": 16 * 10 - 15, "dropped": {
        "missing_frames": 5, "bad_frames": 5, "empty_caption": 5, "no_followers": 16 * 4 + 1},
        "defects": {"missing_frames": 1, "bad_frames": 1, "empty_caption": 1}}  # one clip each, in 5 stories
    assert report["splits"]["val"] == {"clips": 28, "stories": 20, "dropped": {
        "missing_frames": 0, "bad_frames": 0, "empty_caption": 0, "no_followers": 8},
        "defects": {"missing_frames": 0, "bad_frames": 0, "empty_caption": 0}}


def test_rebuilt_followings_and_derived_labels_equal_the_pickles(flintstones_root, tmp_path):
    with_pickles = FlintstonesIndex(flintstones_root)
    without = FlintstonesIndex(_copy_without_pickles(flintstones_root, tmp_path / "f"))
    with open(flintstones_root / "following_cache4.pkl", "rb") as f:
        assert without.followings == pickle.load(f) == with_pickles.followings
    with open(flintstones_root / "labels.pkl", "rb") as f:
        labels = pickle.load(f)
    assert len(labels) == len(without.clips)
    assert all(np.array_equal(labels[gid], clip.characters) for gid, clip in without.clips.items())
    for split in ("train", "val", "test"):
        assert with_pickles.stories(split)[0] == without.stories(split)[0]


def test_entity_labels_are_normalised_and_npcs_ignored():
    labels = main_character_labels([{"entityLabel": " FRED "}, {"entityLabel": "mr slate"},
                                    {"entityLabel": "policeman"}, {"entityLabel": "Wilma"}])
    assert labels.tolist() == [1, 1, 0, 0, 0, 0, 1]
    assert MAIN_CHARACTERS[0] == "Wilma" and MAIN_CHARACTERS[-1] == "Mr Slate"


def test_following_cache_stays_within_an_episode():
    ids = [f"s_01_e_0{e}_shot_{s:06d}_{s + 9:06d}" for e in (1, 2) for s in range(0, 60, 10)]
    followings = rebuild_following_cache(ids)
    assert set(followings) == {ids[0], ids[1], ids[6], ids[7]}
    assert followings[ids[1]] == ids[2:6]


def test_items(flintstones_root):
    dm = FlintstonesSVDataModule(str(flintstones_root), batch_size=3)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (3, 5, 3, 128, 128)
    assert batch["images"].min() >= -1.0 and batch["images"].max() <= 1.0
    assert batch["characters"].shape == (3, 5, 7)
    assert all(len(t) == 5 and all(t) for t in batch["texts"]) and all(len(s) == 5 for s in batch["settings"])
    assert all(len(c) == 5 for c in batch["clip_ids"]) and all(0 <= k <= 3 for k in batch["prefix_len"])
    # characters named in a caption are the ones its label vector holds
    text, labels = batch["texts"][0][0], batch["characters"][0][0]
    for name, flag in zip(MAIN_CHARACTERS, labels.tolist(), strict=True):
        assert (name in text) == bool(flag)
    small = FlintstonesSVDataModule(str(flintstones_root), resolution=64)
    small.setup("validate")
    assert small.datasets["val"][0]["images"].shape == (5, 3, 64, 64)
    small.drop_images()
    assert "images" not in small.datasets["val"][0]


def test_prefix_lengths_random_in_training_fixed_in_evaluation(flintstones_root):
    dm = FlintstonesSVDataModule(str(flintstones_root))
    dm.setup("fit")
    dm.drop_images()
    assert {dm.datasets["train"][0]["prefix_len"] for _ in range(200)} == {0, 1, 2, 3}
    val = [dm.datasets["val"][i]["prefix_len"] for i in range(len(dm.datasets["val"]))]
    again = FlintstonesSVDataModule(str(flintstones_root))
    again.setup("validate")
    again.drop_images()
    assert val == [again.datasets["val"][i]["prefix_len"] for i in range(len(val))]
    assert len(set(val)) > 1
    none = FlintstonesSVDataModule(str(flintstones_root), max_prefix_len=0)
    none.setup("fit")
    none.drop_images()
    assert {none.datasets["train"][i]["prefix_len"] for i in range(20)} == {0}
    with pytest.raises(VisionTalesError, match="max_prefix_len must be within 0..4"):
        FlintstonesSVDataModule(str(flintstones_root), max_prefix_len=5)


def test_evaluation_frames_are_fixed_training_frames_vary(flintstones_root):
    dm = FlintstonesSVDataModule(str(flintstones_root))
    dm.setup("fit")
    val = dm.datasets["val"]
    assert torch.equal(val[0]["images"], val[0]["images"])
    moving = next(i for i in range(len(dm.datasets["train"])) if "running" in dm.datasets["train"][i]["texts"][0])
    draws = [dm.datasets["train"][moving]["images"][0] for _ in range(12)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])


def test_missing_frames_folder_is_one_line(flintstones_root, tmp_path):
    root = tmp_path / "f"
    shutil.copytree(flintstones_root, root, ignore=shutil.ignore_patterns(FRAMES_DIR))
    with pytest.raises(VisionTalesError, match=r"video_frames_sampled: frames folder not found") as info:
        check_dataset(root)
    assert "\n" not in str(info.value)


def test_split_file_naming_unknown_clips_is_reported(flintstones_root, caplog):
    with caplog.at_level(logging.WARNING, logger="data_modules.flintstones_format"):
        FlintstonesIndex(flintstones_root)
    (record,) = caplog.records
    assert "train-val-test_split.json: 1 clip(s) of split 'train' are not in flintstones_annotations_v1-0.json" \
        in record.getMessage()


def test_malformed_annotations_name_the_file(flintstones_root, tmp_path):
    root = _copy_without_pickles(flintstones_root, tmp_path / "f")
    (root / "flintstones_annotations_v1-0.json").write_text("[{")
    with pytest.raises(VisionTalesError, match=r"flintstones_annotations_v1-0.json: not valid JSON"):
        check_dataset(root)


def test_serving_the_target_frame_only_gives_frame_k_plus_1_of_the_five(flintstones_root):
    datamodule = FlintstonesSVDataModule(str(flintstones_root), resolution=32)
    datamodule.setup("validate")
    everything = [datamodule.datasets["val"][i] for i in range(4)]
    datamodule.serve_target_frames()
    for i, whole in enumerate(everything):
        item = datamodule.datasets["val"][i]
        assert "images" not in item and item["target_image"].shape == (3, 32, 32)
        assert torch.equal(item["target_image"], whole["images"][whole["prefix_len"]])
