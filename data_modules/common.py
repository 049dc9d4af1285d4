"""What every data module here shares: dict batches, per-split datasets built on first use and
reported, stage -> splits, loader options."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from visiontales.errors import VisionTalesError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class SplitReport:
    """What one split of a dataset yielded: counts in the order they are found and kept (e.g.
    {"stories": 96, "sequences": 93}), dropped items by reason, and, when nothing was usable, why."""

    reasons: tuple[str, ...]  # every drop reason this dataset knows, reported even when zero
    counts: dict[str, int] = field(default_factory=dict)
    dropped: Counter = field(default_factory=Counter)
    problem: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {**self.counts, "dropped": {reason: self.dropped.get(reason, 0) for reason in self.reasons}}

    def summary(self) -> str:
        counts = ", ".join(f"{n} {name}" for name, n in self.counts.items())
        return f"{counts} kept; dropped: " + ", ".join(f"{r}={self.dropped.get(r, 0)}" for r in self.reasons)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors along a new batch dim; keep everything else as per-item lists."""
    batch = {}
    for key in items[0]:
        values = [item[key] for item in items]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return batch


class SplitDataModule(L.LightningDataModule):
    """A data module with one dataset per split, built on first use by `build_split`, and the
    loader options below.

    Subclasses forward these options (`**kwargs` to `super().__init__`), set `name`, and implement
    `build_split`, which returns the split's dataset and its `SplitReport` (logged once here).
    """

    name = ""

    def __init__(
        self,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        num_workers: int = 0,
        pin_memory: bool = False,
        predict_split: Literal["train", "val", "test"] = "test",
    ) -> None:
        """
        Args:
            batch_size: training batch size.
            eval_batch_size: batch size for validation, test and predict.
            num_workers: DataLoader worker processes.
            pin_memory: pin host memory for faster copies to the GPU.
            predict_split: the split that `predict` runs on.
        """
        super().__init__()
        self.save_hyperparameters()
        self.datasets: dict[str, Dataset] = {}
        self.reports: dict[str, SplitReport] = {}

    def build_split(self, split: str) -> tuple[Dataset, SplitReport]:
        raise NotImplementedError

    def splits_for(self, stage: str) -> list[str]:
        return {"fit": ["train", "val"], "validate": ["val"], "test": ["test"],
                "predict": [self.hparams.predict_split]}[stage]

    def setup(self, stage: str) -> None:
        for split in self.splits_for(stage):
            if split not in self.datasets:
                dataset, report = self.build_split(split)
                log.info("%s %s: %s", self.name, split, report.summary())
                if len(dataset) == 0:
                    raise VisionTalesError(report.problem)
                self.datasets[split], self.reports[split] = dataset, report

    def drop_images(self, splits: list[str] | None = None) -> None:
        """Serve no image data in these splits (default: all), for models that do not look at the
        images or read them from a cache."""
        for split, dataset in self.datasets.items():
            if splits is None or split in splits:
                dataset.image_source = "none"

    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        # workers are not persistent: each epoch's are seeded from the main process's RNG, which a
        # checkpoint restores, so a resumed run draws the prefix lengths and frames a straight one would
        return DataLoader(self.datasets[split], batch_size=batch_size, shuffle=shuffle,
                          num_workers=self.hparams.num_workers, pin_memory=self.hparams.pin_memory,
                          collate_fn=collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.hparams.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.hparams.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.predict_split, False, self.hparams.eval_batch_size)
