"""What the text-generating models share: validation/test plumbing, checkpointing by CIDEr, sample
logging, prediction files, decoding options, and AdamW with linear warm-up."""

from __future__ import annotations

import importlib
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import Metric

from visiontales.callbacks import JSONPredictionWriter, TextSamples
from visiontales.errors import VisionTalesError


def decoding_options(decoding: str, num_beams: int, top_p: float, temperature: float) -> dict[str, Any]:
    """`generate` keyword arguments for greedy, beam or nucleus decoding."""
    if decoding == "greedy":
        return {"num_beams": 1, "do_sample": False}
    if decoding == "beam":
        return {"num_beams": num_beams, "do_sample": False, "early_stopping": True}
    if decoding == "nucleus":
        return {"num_beams": 1, "do_sample": True, "top_p": top_p, "top_k": 0, "temperature": temperature}
    raise ValueError(f"decoding must be greedy, beam or nucleus, got {decoding!r}")


CLASS_KEY = "visiontales_class"  # which module wrote a checkpoint, for `load_any_checkpoint`


class TrainableWeightsCheckpoint(L.LightningModule):
    """Checkpoints hold the trainable weights only; frozen ones are rebuilt from their spec.

    A frozen CLIP, a frozen GPT-2 or a Stable Diffusion base would otherwise fill every checkpoint
    (350 MB, 500 MB, 3.4 GB). On load the frozen weights of the freshly built module fill the
    gaps before strict loading, so a trainable key that is missing still fails loudly. Tied
    parameters are matched under every name they have (GPT-2's lm_head is its wte).
    """

    def trainable_keys(self) -> set[str]:
        """The trainable parameters, and the buffers of the modules that own them (BatchNorm's
        running statistics, spectral norm's power-iteration vectors): state learned in training."""
        keys = {name for name, p in self.named_parameters(remove_duplicate=False) if p.requires_grad}
        for prefix, module in self.named_modules(remove_duplicate=False):
            if any(p.requires_grad for p in module.parameters(recurse=False)):
                keys |= {f"{prefix}.{name}" if prefix else name for name, _ in module.named_buffers(recurse=False)}
        return keys

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self.trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint[CLASS_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {**self.state_dict(), **checkpoint["state_dict"]}


class TextGenerationModule(TrainableWeightsCheckpoint):
    """Base of the models that write text and are scored on it.

    A subclass calls `init_metrics` with its metric factories, implements
    `evaluation_step(batch, split)` (update `self.split_metrics[split]`, return
    {"samples": [...]} for TensorBoard) and `predict_step`, and has `lr`, `weight_decay`,
    `warmup_steps` and `samples_to_log` among its hyper-parameters. A metric may compute one
    value (logged as `<split>/<name>`) or a dict of them (each logged as `<split>/<key>`).
    """

    def init_metrics(self, factories: dict[str, Callable[[], Metric]]) -> None:
        self.split_metrics = nn.ModuleDict(
            {split: nn.ModuleDict({name: make() for name, make in factories.items()}) for split in ("val", "test")})

    def evaluation_step(self, batch: dict[str, Any], split: str) -> dict[str, Any]:
        raise NotImplementedError

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return self.evaluation_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return self.evaluation_step(batch, "test")

    def log_split_metrics(self, split: str) -> None:
        metrics = self.split_metrics[split]
        if not self.trainer.sanity_checking:  # two sanity batches are no score worth a METEOR run
            values = {}
            for name, metric in metrics.items():
                result = metric.compute()
                if isinstance(result, dict):
                    values.update({f"{split}/{key}": value for key, value in result.items()})
                else:
                    values[f"{split}/{name}"] = result
            self.log_dict(values)
        for metric in metrics.values():
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self.log_split_metrics("val")

    def on_test_epoch_end(self) -> None:
        self.log_split_metrics("test")

    def configure_optimizers(self):
        """AdamW over the trainable parameters (a list, so clipping and resuming see them all),
        with an optional linear warm-up stepped every batch."""
        h = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=h.lr, weight_decay=h.weight_decay)
        if not h.warmup_steps:
            return optimizer
        warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / h.warmup_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}

    def configure_callbacks(self) -> list[L.Callback]:
        from lightning.pytorch.callbacks import ModelCheckpoint

        return [
            ModelCheckpoint(monitor="val/cider", mode="max", save_last=True,
                            filename="epoch{epoch:02d}-cider{val/cider:.4f}", auto_insert_metric_name=False),
            TextSamples(self.hparams.samples_to_log),
            JSONPredictionWriter(),
        ]


def load_checkpoint(cls: type[L.LightningModule], path) -> L.LightningModule:
    """`cls.load_from_checkpoint` on the CPU, in eval mode, with one-line errors for a checkpoint
    that does not exist or is not one."""
    if not Path(path).is_file():
        raise VisionTalesError(f"{path}: checkpoint not found")
    try:
        return cls.load_from_checkpoint(path, map_location="cpu").eval()
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, KeyError) as e:
        raise VisionTalesError(f"{path}: not a readable {cls.__name__} checkpoint ({type(e).__name__}: {e})") from e


def load_any_checkpoint(path) -> L.LightningModule:
    """Load a checkpoint of whichever of our modules wrote it (its class is recorded inside)."""
    if not Path(path).is_file():
        raise VisionTalesError(f"{path}: checkpoint not found")
    try:
        class_path = torch.load(path, map_location="cpu", weights_only=False, mmap=True).get(CLASS_KEY)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError) as e:
        raise VisionTalesError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not class_path:
        raise VisionTalesError(f"{path}: no '{CLASS_KEY}' in this checkpoint; it was not written by visiontales fit")
    module, name = class_path.rsplit(".", 1)
    return load_checkpoint(getattr(importlib.import_module(module), name), path)
