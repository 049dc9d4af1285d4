"""The Visualizer interface: what a model that draws story frames from captions offers.

The SAGANets pipeline, `visiontales evaluate`, `visiontales story` and `visiontales reproduce` use
nothing else, so a new visualizer is one class (and its YAML):

    class MyVisualizer(Visualizer, kind="my_visualizer"):
        def __init__(self, resolution: int = 64, ...): ...   # save_hyperparameters()
        def generate(self, captions, seeds, *, previous=None, strength=1.0, lora_alpha=None): ...
        def training_step(self, batch, batch_idx): ...
        def validation_step(self, batch, batch_idx): ...   # logs val/loss (best.ckpt follows it)
        def configure_optimizers(self): ...

with `resolution` among its hyper-parameters. docs/extending.md walks through one.
"""

from __future__ import annotations

import abc
import zlib
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.utils import make_grid

from visiontales.models.base import VisionTalesModule


@dataclass
class Drawing:
    """Frames drawn by a visualizer, and what carries their look into the next frame."""

    frames: torch.Tensor  # (N, 3, R, R) in [-1, 1]
    latents: torch.Tensor | None  # (N, ...): what `generate(previous=...)` takes; None if nothing can


class Visualizer(VisionTalesModule, abc.ABC):
    """A model that draws one frame per caption (FlintstonesSV batches: `texts`, `prefix_len`,
    `images`, `characters`, `clip_ids`, `frame_index`)."""

    @property
    def resolution(self) -> int:
        """Side of the frames `generate` draws, in pixels."""
        return self.hparams.resolution

    @abc.abstractmethod
    def generate(self, captions: list[str], seeds: list[int], *, previous: torch.Tensor | None = None,
                 strength: float = 1.0, lora_alpha: float | None = None) -> Drawing:
        """One frame per caption; the same caption and seed draw the same frame.

        previous, strength: continue from `previous` latents (a Drawing's, or `latents_of` given
            frames), one per caption: `strength` in (0, 1] is how much of them is replaced by
            fresh noise (1: none of their look is kept).
        lora_alpha: draw with LoRA adapters at this alpha (a visualizer without adapters refuses
            one); None: as configured.
        """

    @property
    def default_lora_alpha(self) -> float | None:
        """The LoRA alpha it draws with when given none, or None for a visualizer without adapters
        (whose `generate` refuses an alpha)."""
        return None

    def latents_of(self, frames: torch.Tensor) -> torch.Tensor | None:
        """The latents of given frames (N, 3, H, W) in [-1, 1], to continue a story from them;
        None when the visualizer has no way back from frames to its latents."""
        return None

    @torch.no_grad()
    def draw(self, captions: list[str], seeds: list[int], lora_alpha: float | None = None,
             batch_size: int = 16) -> torch.Tensor:
        """Frames (N, 3, R, R) on the CPU for many captions, drawn `batch_size` at a time on the
        model's device, with a progress bar on a terminal."""
        from tqdm import tqdm

        frames = [torch.empty(0, 3, self.resolution, self.resolution)]
        for start in tqdm(range(0, len(captions), batch_size), desc="drawing", unit="batch", disable=None,
                          total=-(-len(captions) // batch_size)):
            drawing = self.generate(captions[start:start + batch_size], seeds[start:start + batch_size],
                                    lora_alpha=lora_alpha)
            frames.append(drawing.frames.float().cpu())
        return torch.cat(frames)

    @staticmethod
    def item_seed(seed: int, item: str) -> int:
        """A seed for one evaluation item (e.g. a story id): the same whatever batch, rank or order
        the item comes in, so validation scores equal a single process's under DDP."""
        return zlib.crc32(f"{seed}:{item}".encode())

    @staticmethod
    def seeded_noise(shape: tuple[int, ...], seeds: list[int], device: Any = "cpu") -> torch.Tensor:
        """(N, *shape) standard normal noise, row i drawn on the CPU from seeds[i] (the same on every
        device and batch size)."""
        return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]).to(device)

    def log_frame_grid(self, drawn: torch.Tensor, truth: torch.Tensor | None, nrow: int,
                       captions: list[str] | None = None) -> None:
        """Drawn frames above their ground truth as one TensorBoard image (`val/frames`), with the
        captions as text (`val/frame_captions`); rank zero only."""
        experiment = getattr(self.logger, "experiment", None)
        if not self.trainer.is_global_zero or not hasattr(experiment, "add_image"):
            return
        rows = drawn.float() if truth is None else torch.cat([drawn.float(), truth.to(drawn.device).float()])
        experiment.add_image("val/frames", make_grid((rows.clamp(-1, 1) + 1) / 2, nrow=nrow), global_step=self.global_step)
        if captions:
            experiment.add_text("val/frame_captions", "\n".join(f"{i}. {c}" for i, c in enumerate(captions)),
                                global_step=self.global_step)
