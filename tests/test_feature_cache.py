"""The sharded feature cache: shards written as they fill, kept after a crash, encoded again only
where a source file changed, shared among processes, read lazily."""

from __future__ import annotations

import os
import pickle
import threading
from pathlib import Path

import pytest
import torch

from visiontales.errors import VisionTalesError
from visiontales.feature_cache import CachedFeatures, FeatureCache


def _sources(folder: Path, n: int) -> dict[str, Path]:
    folder.mkdir(exist_ok=True)
    paths = {}
    for i in range(n):
        paths[f"item{i:03d}"] = folder / f"item{i:03d}.txt"
        paths[f"item{i:03d}"].write_text(str(i))
    return paths


def _load(key: str, path: Path) -> torch.Tensor:
    return torch.full((2, 3), float(path.read_text())) / 7


class Encoder:
    """Counts what it encodes; fails after `fail_after` batches (a crash mid-build)."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.seen, self.batches, self.fail_after = 0, 0, fail_after

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.fail_after is not None and self.batches == self.fail_after:
            raise RuntimeError("power cut")
        self.batches += 1
        self.seen += len(batch)
        return batch * 2


def test_features_come_back_in_the_cache_dtype_from_shards(tmp_path):
    paths = _sources(tmp_path / "src", 25)
    cache = FeatureCache(tmp_path / "cache", "key", dtype=torch.float16, shard_size=10)
    features = cache.get(paths, _load, Encoder(), batch_size=4)
    assert len(features) == 25 and len(list(cache.root.glob("*.npy"))) == 3  # 10 + 10 + 5
    for key, path in paths.items():
        expected = (_load(key, path) * 2).half().float()
        assert features[key].dtype == torch.float32 and torch.equal(features[key], expected)
    # a worker gets the index and file names, not the data
    clone = pickle.loads(pickle.dumps(features))
    assert isinstance(clone, CachedFeatures) and torch.equal(clone["item007"], features["item007"])
    assert len(pickle.dumps(features)) < 4000


def test_a_crash_keeps_finished_shards_and_a_rerun_encodes_the_rest(tmp_path):
    paths = _sources(tmp_path / "src", 30)
    cache = FeatureCache(tmp_path / "cache", "key", shard_size=10)
    with pytest.raises(RuntimeError, match="power cut"):
        cache.get(paths, _load, Encoder(fail_after=4), batch_size=5)  # 20 items: two shards done
    assert len(list(cache.root.glob("*.npy"))) == 2 and not list(cache.root.glob("*.tmp-*"))
    encoder = Encoder()
    features = cache.get(paths, _load, encoder, batch_size=5)
    assert encoder.seen == 10 and len(features) == 30
    again = Encoder()
    cache.get(paths, _load, again, batch_size=5)
    assert again.seen == 0


def test_a_changed_source_file_encodes_its_shard_again(tmp_path):
    paths = _sources(tmp_path / "src", 30)
    cache = FeatureCache(tmp_path / "cache", "key", shard_size=10)
    cache.get(paths, _load, Encoder(), batch_size=5)
    paths["item015"].write_text("1500")
    stat = paths["item015"].stat()
    os.utime(paths["item015"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    encoder = Encoder()
    features = cache.get(paths, _load, encoder, batch_size=5)
    assert encoder.seen == 10
    assert torch.allclose(features["item015"], torch.full((2, 3), 1500 / 7 * 2))


def test_processes_share_the_work_and_read_every_shard(tmp_path):
    paths = _sources(tmp_path / "src", 40)
    cache = FeatureCache(tmp_path / "cache", "key", shard_size=10)
    with pytest.raises(VisionTalesError, match="2 shard"):  # rank 1 of 2 alone: rank 0's shards never come
        cache.get(paths, _load, Encoder(), batch_size=5, rank=1, world_size=2)
    for file in cache.root.glob("*.npy"):
        file.unlink()
    # two ranks at once (threads), meeting at the barrier as DDP processes would
    barrier, encoders, results = threading.Barrier(2), [Encoder(), Encoder()], {}

    def rank(r: int) -> None:
        results[r] = cache.get(paths, _load, encoders[r], batch_size=5, rank=r, world_size=2,
                               barrier=barrier.wait)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert encoders[0].seen == encoders[1].seen == 20
    for r in (0, 1):
        assert len(results[r]) == 40 and torch.equal(results[r]["item039"], torch.full((2, 3), 39 / 7 * 2))


def test_a_filling_cache_holds_what_its_user_adds_across_runs_and_source_changes(tmp_path):
    paths = _sources(tmp_path / "src", 12)
    cache = FeatureCache(tmp_path / "cache", "key", dtype=torch.float16, shard_size=5)
    filling = cache.filling(paths)
    assert len(filling) == 0 and not filling.complete
    assert filling.lookup(["item001", "item002"]) == [None, None]
    with pytest.raises(KeyError, match="item999"):
        filling.lookup(["item999"])
    filling.add(["item001", "item002"], torch.stack([_load(k, paths[k]) for k in ("item001", "item002")]))
    assert len(filling) == 2 and "item001" in filling and "item003" not in filling
    assert torch.equal(filling["item002"], _load("item002", paths["item002"]).half().float())
    assert len(list((cache.root / "items").rglob("*.npy"))) == 2 and not list(cache.root.rglob("*.tmp-*"))
    # a later run finds them; a changed source file is not served stale
    paths["item002"].write_text("42")
    again = FeatureCache(tmp_path / "cache", "key", dtype=torch.float16, shard_size=5).filling(paths)
    assert len(again) == 1 and again.lookup(["item001", "item002"])[1] is None
    rest = [k for k in paths if k not in again]
    again.add(rest, torch.stack([_load(k, paths[k]) for k in rest]))
    assert again.complete and torch.equal(again["item002"], torch.full((2, 3), 6.0).half().float())
    # the shards of a full build under the same key are served too, nothing re-encoded
    other = _sources(tmp_path / "other", 7)
    FeatureCache(tmp_path / "cache", "key", shard_size=5).get(other, _load, Encoder())
    built = FeatureCache(tmp_path / "cache", "key", shard_size=5).filling(other)
    assert built.complete and torch.equal(built["item004"], _load("item004", other["item004"]) * 2)
