"""What every data module here shares: dict batches, per-split datasets, stage -> splits."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from visiontales.errors import VisionTalesError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors along a new batch dim; keep everything else as per-item lists."""
    batch = {}
    for key in items[0]:
        values = [item[key] for item in items]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return batch


class SplitDataModule(L.LightningDataModule):
    """A data module with one dataset per split, built on first use by `build_split`.

    Subclasses take `batch_size`, `eval_batch_size`, `num_workers`, `pin_memory` and
    `predict_split` among their (saved) hyper-parameters and implement `build_split`, which
    returns the split's dataset and a report whose `problem` says why nothing was usable.
    """

    def __init__(self) -> None:
        super().__init__()
        self.datasets: dict[str, Dataset] = {}
        self.reports: dict[str, Any] = {}

    def build_split(self, split: str) -> tuple[Dataset, Any]:
        raise NotImplementedError

    def splits_for(self, stage: str) -> list[str]:
        return {"fit": ["train", "val"], "validate": ["val"], "test": ["test"],
                "predict": [self.hparams.predict_split]}[stage]

    def setup(self, stage: str) -> None:
        for split in self.splits_for(stage):
            if split not in self.datasets:
                dataset, report = self.build_split(split)
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
        return DataLoader(self.datasets[split], batch_size=batch_size, shuffle=shuffle,
                          num_workers=self.hparams.num_workers, pin_memory=self.hparams.pin_memory,
                          collate_fn=collate, persistent_workers=self.hparams.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.hparams.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.hparams.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.predict_split, False, self.hparams.eval_batch_size)
