"""A disk cache of frozen-encoder outputs (CLIP image features, VAE posteriors, caption states), so
expensive frozen work is done once, in shards that scale past RAM.

Under one key (encoder weights fingerprint + preprocessing) the items, sorted by id, are cut into
shards of `shard_size`; a shard is one `.npy` array (n, *feature shape) in the cache's dtype, named
by the hash of its items' ids and source-file signatures (size, mtime), written whole and then
renamed into place. So:

- a crash loses at most the shard being written: finished shards are found again by name;
- a regenerated or replaced source file changes its shard's name: that shard is encoded again;
- reading is lazy (`CachedFeatures`: a row read when asked for, through the page cache every
  process shares), and building holds one shard in memory: peak RAM does not grow with the dataset;
- with several processes (DDP) each encodes every `world_size`-th missing shard, then all meet at
  the barrier and read every shard.

`FeatureCache.filling` is the other way to build it, for training that draws a few of many items
per epoch (the LoRA visualizer: one of each clip's five frames): nothing is encoded up front; the
model looks each batch's items up, encodes the ones not there yet (work it would do uncached) and
adds them, one `.npy` file per item under `items/` (written whole, then renamed into place). The
first epoch costs what an uncached one does, and every later one (or run) less.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from visiontales.errors import VisionTalesError

log = logging.getLogger(__name__)

DTYPES = (torch.float32, torch.float16)  # what a shard may store


def file_signature(path: Path | None) -> tuple[int, int]:
    """(size, mtime) of the source file; (0, 0) for entries keyed by their content (no file)."""
    if path is None:
        return 0, 0
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


class _Items(Dataset):
    def __init__(self, items: list[tuple[str, Path | None]], load: Callable[[str, Path], torch.Tensor]) -> None:
        self.items, self.load = items, load

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.load(*self.items[index])


class CachedFeatures(Mapping[str, torch.Tensor]):
    """id -> feature (float32), each row read from its shard on demand (`os.pread` at the row's
    offset: the kernel's page cache is shared by every process, and nothing stays mapped into this
    one, so its memory does not grow with the dataset). Pickles as the index and file names only
    (cheap to send to DataLoader workers, which open the shards themselves)."""

    def __init__(self, files: list[Path], index: dict[str, tuple[int, int]]) -> None:
        self.files, self.index = files, index
        self._open: dict[int, tuple[int, int, int, np.dtype, tuple[int, ...]]] = {}

    def _shard(self, i: int) -> tuple[int, int, int, np.dtype, tuple[int, ...]]:
        """(file descriptor, data offset, bytes per row, dtype, row shape) of shard i."""
        if i not in self._open:
            with open(self.files[i], "rb") as f:
                fmt = np.lib.format
                header = fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) else fmt.read_array_header_2_0
                shape, _, dtype = header(f)
                offset = f.tell()
            row_shape = tuple(shape[1:])
            self._open[i] = (os.open(self.files[i], os.O_RDONLY), offset,
                             int(np.prod(row_shape)) * dtype.itemsize, dtype, row_shape)
        return self._open[i]

    def __getitem__(self, key: str) -> torch.Tensor:
        shard, row = self.index[key]
        fd, offset, size, dtype, shape = self._shard(shard)
        data = np.frombuffer(os.pread(fd, size, offset + row * size), dtype=dtype).reshape(shape)
        return torch.from_numpy(data.astype(np.float32))

    def __iter__(self) -> Iterator[str]:
        return iter(self.index)

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:
        return {"files": self.files, "index": self.index, "_open": {}}

    def __del__(self) -> None:
        for fd, *_ in getattr(self, "_open", {}).values():
            os.close(fd)


class FillingFeatures:
    """A cache filled as training reads it (`FeatureCache.filling`): `lookup` the features of some
    ids (None where not cached yet), `add` the ones the caller encoded. Serves the shards of a full
    build under the same key too, where there are any."""

    def __init__(self, cache: FeatureCache, paths: Mapping[str, Path | None]) -> None:
        self.cache = cache
        self.files = {i: cache.item_file(i, path) for i, path in paths.items()}  # named once, not per step
        built = [(file, ids) for file, ids in cache.plan(paths) if file.exists()]
        self.shards = CachedFeatures([file for file, _ in built],
                                     {i: (s, row) for s, (_, ids) in enumerate(built) for row, i in enumerate(ids)})
        self.present = set(self.shards.index) | {i for i, file in self.files.items() if file.exists()}

    @property
    def complete(self) -> bool:
        """Every id is cached: the inputs need not be read any more."""
        return len(self.present) == len(self.files)

    def __len__(self) -> int:
        return len(self.present)

    def __contains__(self, key: object) -> bool:
        return key in self.present

    def __getitem__(self, key: str) -> torch.Tensor:
        found = self.lookup([key])[0]
        if found is None:
            raise KeyError(key)
        return found

    def lookup(self, keys: list[str]) -> list[torch.Tensor | None]:
        """The features of these ids (float32), None for each one not cached yet."""
        out: list[torch.Tensor | None] = []
        for key in keys:
            if key not in self.files:
                raise KeyError(f"{key}: not one of the items this cache was opened for")
            if key in self.shards.index:
                out.append(self.shards[key])
            elif key in self.present:
                out.append(torch.from_numpy(np.load(self.files[key]).astype(np.float32)))
            else:
                out.append(None)
        return out

    def fetch(self, keys: list[str], encode: Callable[[list[int]], torch.Tensor]) -> torch.Tensor:
        """The features of these ids stacked (float32): the cached ones read, the others encoded
        by `encode(their positions in keys)` and added."""
        found = self.lookup(keys)
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            encoded = encode(missing)
            self.add([keys[i] for i in missing], encoded)
            for i, features in zip(missing, encoded, strict=True):
                found[i] = features.float()
        return torch.stack(found)

    def add(self, keys: list[str], features: torch.Tensor) -> None:
        """Store the features (one row per id) the caller encoded for these ids."""
        rows = features.detach().float().to(self.cache.dtype).cpu().numpy()
        for key, row in zip(keys, rows, strict=True):
            if key not in self.present:
                self.files[key].parent.mkdir(parents=True, exist_ok=True)
                FeatureCache._write(self.files[key], row)
                self.present.add(key)


class FeatureCache:
    """Features of many items under one key (e.g. CLIP weights fingerprint + preprocessing)."""

    def __init__(self, directory: str | Path, key: str, dtype: torch.dtype = torch.float32,
                 shard_size: int = 1024) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"cache dtype must be one of {list(DTYPES)}, got {dtype}")
        self.key, self.dtype, self.shard_size = key, dtype, shard_size
        self.root = Path(directory) / hashlib.sha1(f"{key}/{dtype}".encode()).hexdigest()[:20]

    def plan(self, paths: Mapping[str, Path | None]) -> list[tuple[Path, list[str]]]:
        """(shard file, its ids) for every shard of these items."""
        ids = sorted(paths)
        shards = []
        for start in range(0, len(ids), self.shard_size):
            chunk = ids[start:start + self.shard_size]
            digest = hashlib.sha1(self.key.encode())
            for i in chunk:
                digest.update(f"\n{i}\t{file_signature(paths[i])}".encode())
            shards.append((self.root / f"{digest.hexdigest()[:24]}.npy", chunk))
        return shards

    def item_file(self, key: str, path: Path | None) -> Path:
        """Where `filling` keeps one item: named by the hash of its id and its file's signature."""
        digest = hashlib.sha1(f"{self.key}\n{key}\t{file_signature(path)}".encode()).hexdigest()
        return self.root / "items" / digest[:2] / f"{digest[2:24]}.npy"

    def filling(self, paths: Mapping[str, Path | None]) -> FillingFeatures:
        """The cache of these items as it stands, to be filled by its user (`FillingFeatures`)."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "key.txt").write_text(self.key + "\n")
        features = FillingFeatures(self, paths)
        log.info("feature cache %s: %d of %d items cached; the rest are added as training encodes them",
                 self.root, len(features), len(paths))
        return features

    def get(self, paths: Mapping[str, Path | None], load: Callable[[str, Path | None], torch.Tensor],
            encode: Callable[[torch.Tensor], torch.Tensor], *, batch_size: int = 64, num_workers: int = 0,
            rank: int = 0, world_size: int = 1, barrier: Callable[[], None] = lambda: None) -> CachedFeatures:
        """Features for every id in `paths`, encoding only the shards not on disk (or whose files
        changed). `load(id, path)` gives the encoder's input for one id; `encode` maps a batch of
        them to features. Process `rank` of `world_size` encodes its share of the missing shards;
        all wait at `barrier`, then read all."""
        shards = self.plan(paths)
        missing = [(i, shard) for i, shard in enumerate(shards) if not shard[0].exists()]
        mine = [shard for i, shard in missing if i % world_size == rank]
        if missing:
            log.info("feature cache %s: %d of %d shards to encode (%d by this process)", self.root, len(missing),
                     len(shards), len(mine))
        if mine:
            self._encode(mine, paths, load, encode, batch_size, num_workers)
        barrier()
        absent = [str(file) for file, _ in shards if not file.exists()]
        if absent:
            raise VisionTalesError(f"feature cache {self.root}: {len(absent)} shard(s) were not written "
                                   f"(e.g. {absent[0]}); did another process fail?")
        return CachedFeatures([file for file, _ in shards],
                              {i: (s, row) for s, (_, ids) in enumerate(shards) for row, i in enumerate(ids)})

    def _encode(self, shards: list[tuple[Path, list[str]]], paths, load, encode, batch_size: int,
                num_workers: int) -> None:
        """Encode the items of `shards` in order, writing each shard as soon as it is complete."""
        from tqdm import tqdm

        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "key.txt").write_text(self.key + "\n")
        items = [(i, paths[i]) for _, ids in shards for i in ids]
        loader = DataLoader(_Items(items, load), batch_size=batch_size, num_workers=num_workers)
        pending = iter(shards)
        file, ids = next(pending)
        rows: list[np.ndarray] = []
        filled = 0
        with tqdm(total=len(items), desc=f"caching {self.root.name}", unit="item", disable=None) as bar:
            for batch in loader:
                encoded = encode(batch).detach().float().to(self.dtype).cpu().numpy()
                bar.update(len(encoded))
                while len(encoded):
                    take = len(ids) - filled
                    rows.append(encoded[:take])
                    encoded, filled = encoded[take:], filled + len(encoded[:take])
                    if filled == len(ids):
                        self._write(file, np.concatenate(rows))
                        rows, filled = [], 0
                        file, ids = next(pending, (None, []))

    @staticmethod
    def _write(file: Path, array: np.ndarray) -> None:
        tmp = file.with_name(f"{file.stem}.tmp-{os.getpid()}.npy")
        np.save(tmp, array)
        os.replace(tmp, file)  # atomic: a shard is there whole or not at all
