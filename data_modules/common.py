"""What every data module here shares: dict batches, per-split datasets built on first use and
reported, stage -> splits, loader options."""

from __future__ import annotations

import logging
import shutil
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from data_modules.split_report import SplitReport
from visiontales.errors import UnreadableItem, VisionTalesError

log = logging.getLogger(__name__)

SKIPPED = "skipped"  # the batch key of the notes on items skipped as unreadable


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors along a new batch dim; keep everything else (and tensors some items left out:
    None) as per-item lists. Items that stood in for unreadable ones (`SkippingDataset`) pass their
    notes on as `batch["skipped"]`."""
    skipped = [note for item in items for note in item.pop(SKIPPED, [])]
    batch = {SKIPPED: skipped} if skipped else {}
    for key in items[0]:
        values = [item[key] for item in items]
        batch[key] = torch.stack(values) if all(isinstance(v, torch.Tensor) for v in values) else values
    return batch


class SkippingDataset(Dataset):
    """A dataset whose items never end a run: when `load_item(i)` raises `UnreadableItem`, the next
    readable item stands in and carries a note (`"skipped"`, one line per skipped file) that the
    `SkippedItems` callback (every model adds it) reports at the end of the epoch."""

    def load_item(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        notes = []
        for step in range(len(self)):
            try:
                item = self.load_item((index + step) % len(self))
            except UnreadableItem as e:
                notes.append(str(e))
                continue
            if notes:
                item[SKIPPED] = notes
            return item
        raise VisionTalesError(f"no item of the dataset can be read any more, e.g. {notes[0]}")


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
        dataset, sampler = self.datasets[split], None
        trainer = self.trainer
        if not shuffle and trainer is not None and trainer.world_size > 1:
            # evaluation under DDP: each item on one rank, none repeated to even the ranks out (as
            # Lightning's DistributedSampler would), so metrics equal a single process's
            sampler = UnrepeatedDistributedSampler(dataset, num_replicas=trainer.world_size,
                                                   rank=trainer.global_rank, shuffle=False)
        if self.hparams.num_workers:
            self.check_shared_memory(split, batch_size)
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                          num_workers=self.hparams.num_workers, pin_memory=self.hparams.pin_memory,
                          collate_fn=collate)

    def check_shared_memory(self, split: str, batch_size: int, prefetch_factor: int = 2) -> None:
        """Workers hand batches over through /dev/shm (a container's default: 64 MB): fail now, in
        one line, if the batches in flight (one item's tensors x batch x workers x prefetched)
        would not fit, rather than with a killed worker later."""
        try:
            free = shutil.disk_usage("/dev/shm").free
        except OSError:
            return  # no /dev/shm (not Linux): nothing to check
        item = self.datasets[split][0]
        batch_bytes = batch_size * sum(v.numel() * v.element_size() for v in item.values() if torch.is_tensor(v))
        need = batch_bytes * self.hparams.num_workers * prefetch_factor
        if need > free:
            mb = 2**20
            raise VisionTalesError(
                f"{self.name} {split} loader: {self.hparams.num_workers} workers x {prefetch_factor} batches of "
                f"{batch_bytes / mb:.0f} MB need {need / mb:.0f} MB of shared memory and /dev/shm has "
                f"{free / mb:.0f} MB free: give the container more (docker run --shm-size=8g) or lower "
                f"--data.init_args.num_workers (0: no workers) or the batch size")

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.hparams.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.hparams.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.predict_split, False, self.hparams.eval_batch_size)
