"""What the text-writing models (CLIPStoryteller, SAGANetsCaptioner) share: the optimiser and
decoding options, validation/test plumbing and metric logging, checkpointing by CIDEr, text samples
for TensorBoard and prediction files."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

import lightning as L
import torch
from torch import nn
from torchmetrics import Metric

from visiontales.callbacks import JSONPredictionWriter, TextSamples
from visiontales.models.base import VisionTalesModule


class TextGenerationModule(VisionTalesModule):
    """Base of the models that write text and are scored on it.

    A subclass forwards the options below (`**kwargs` to `super().__init__`), calls `init_metrics`
    with its metric factories, implements `evaluation_step(batch, split)` (update
    `self.split_metrics[split]`, return {"samples": [...]} for TensorBoard) and `predict_step`, and
    passes `self.decoding_options()` to `generate`. A metric may compute one value (logged as
    `<split>/<name>`) or a dict of them (each logged as `<split>/<key>`).
    """

    monitor = ("val/cider", "max")
    compile_targets = ("gpt2",)
    datamodule_class: ClassVar[str] = ""  # what `evaluate` scores it on when its checkpoint does not say

    def __init__(
        self,
        lr: float = 5e-5,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        decoding: Literal["greedy", "beam", "nucleus"] = "greedy",
        num_beams: int = 4,
        top_p: float = 0.9,
        temperature: float = 1.0,
        max_new_tokens: int = 40,
        samples_to_log: int = 4,
    ) -> None:
        """
        Args:
            lr: AdamW learning rate (5e-5: the VisionTales paper's, and GPT-2 fine-tuning's usual).
            weight_decay: AdamW weight decay.
            warmup_steps: linear learning-rate warm-up steps (0: none, as in both papers).
            decoding: "greedy", "beam" or "nucleus" sampling.
            num_beams: beams for "beam" decoding.
            top_p: nucleus mass for "nucleus" decoding.
            temperature: sampling temperature for "nucleus" decoding.
            max_new_tokens: longest text generated, in tokens.
            samples_to_log: generated / reference pairs logged to TensorBoard per validation epoch.
        """
        super().__init__()
        self.save_hyperparameters()

    def decoding_options(self) -> dict[str, Any]:
        """`generate` keyword arguments for the chosen decoding."""
        h = self.hparams
        if h.decoding == "greedy":
            return {"num_beams": 1, "do_sample": False, "max_new_tokens": h.max_new_tokens}
        if h.decoding == "beam":
            return {"num_beams": h.num_beams, "do_sample": False, "early_stopping": True,
                    "max_new_tokens": h.max_new_tokens}
        if h.decoding == "nucleus":
            return {"num_beams": 1, "do_sample": True, "top_p": h.top_p, "top_k": 0, "temperature": h.temperature,
                    "max_new_tokens": h.max_new_tokens}
        raise ValueError(f"decoding must be greedy, beam or nucleus, got {h.decoding!r}")

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
        return [*super().configure_callbacks(), TextSamples(self.hparams.samples_to_log), JSONPredictionWriter()]
