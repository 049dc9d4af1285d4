"""A disk cache of frozen-encoder features, so expensive frozen work is done once.

One file per (encoder weights, preprocessing) key, holding item id -> (file signature, feature).
The file signature (size, mtime) of the source image makes a regenerated or replaced image
recompute instead of serving a stale feature.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)


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


class FeatureCache:
    """Features of files under one key (e.g. CLIP weights fingerprint + preprocessing)."""

    def __init__(self, directory: str | Path, key: str) -> None:
        self.path = Path(directory) / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.pt"
        self.key = key

    def _read(self) -> dict[str, tuple[tuple[int, int], torch.Tensor]]:
        if not self.path.exists():
            return {}
        stored = torch.load(self.path, map_location="cpu", weights_only=True)
        return stored["features"] if stored.get("key") == self.key else {}

    def _write(self, features: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        torch.save({"key": self.key, "features": features}, tmp)
        os.replace(tmp, self.path)  # atomic: readers see the old or the new file, never half of one

    def get(self, paths: dict[str, Path | None], load: Callable[[str, Path | None], torch.Tensor],
            encode: Callable[[torch.Tensor], torch.Tensor], *, batch_size: int = 64, num_workers: int = 0,
            writer: bool = True, barrier: Callable[[], None] = lambda: None) -> dict[str, torch.Tensor]:
        """Features for every id in `paths`, encoding only those not cached (or whose file changed).

        `load(id, path)` gives the encoder's input for one id; `encode` maps a batch of them to
        features.
        With several processes, only the `writer` encodes and writes; the others wait at
        `barrier` and read its file.
        """
        if writer:
            cached = self._read()
            stale = [i for i, p in paths.items() if i not in cached or cached[i][0] != file_signature(p)]
            if stale:
                log.info("feature cache %s: encoding %d of %d images", self.path, len(stale), len(paths))
                loader = DataLoader(_Items([(i, paths[i]) for i in stale], load), batch_size=batch_size,
                                    num_workers=num_workers)
                encoded = torch.cat([encode(images).float().cpu() for images in loader])
                for i, feature in zip(stale, encoded, strict=True):
                    cached[i] = (file_signature(paths[i]), feature.clone())
                self._write(cached)
        barrier()
        cached = self._read()
        return {i: cached[i][1] for i in paths}
