"""The SAGANets story loop (the SAGANets paper, sections 4 and 5.1): from a prefix of k
caption-frame pairs (k may be 0, a first caption alone), the captioner writes caption k+1, the
visualizer draws frame k+1, and the two alternate until the story has N frames.

Beyond the paper (off by default): `continuity_strength` starts each frame from the previous
frame's latents (the Visualizer interface's `previous`, `strength`), so that frames carry each
other's look; the LoRA visualizer re-noises them to that fraction of the schedule (img2img).

Outputs a person can look at: `storyboard.png` (frames in a row, each caption under its frame,
the given prefix framed in green and marked "given") and `story.json`.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from visiontales.errors import VisionTalesError, read_json
from visiontales.visualizer import Visualizer

PANEL = 256  # storyboard frame side in pixels
GIVEN, DRAWN = (40, 170, 60), (150, 150, 150)


@dataclass
class Story:
    captions: list[str]
    given_captions: list[bool]
    given_frames: list[bool]
    frames: torch.Tensor  # (N, 3, S, S) in [-1, 1]
    settings: dict[str, Any] = field(default_factory=dict)


class SAGANetsPipeline:
    """Alternates a captioner (`continue_story`) and any Visualizer (`generate`, `latents_of`,
    `resolution`)."""

    def __init__(self, captioner, visualizer: Visualizer, lora_alpha: float | None = None,
                 continuity_strength: float | None = None) -> None:
        if continuity_strength is not None and not 0.0 < continuity_strength <= 1.0:
            raise VisionTalesError(f"continuity strength must be within (0, 1], got {continuity_strength}")
        self.captioner, self.visualizer = captioner, visualizer
        self.lora_alpha, self.continuity_strength = lora_alpha, continuity_strength

    def draw(self, caption: str, seed: int, previous: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(frame (3, S, S), its latents or None), continuing from `previous` latents if asked."""
        options: dict[str, Any] = {"lora_alpha": self.lora_alpha}
        if previous is not None and self.continuity_strength is not None:
            options.update(previous=previous[None], strength=self.continuity_strength)
        drawing = self.visualizer.generate([caption], [seed], **options)
        return drawing.frames[0], None if drawing.latents is None else drawing.latents[0]

    def check(self, captions: list[str], frames: list[torch.Tensor], n_frames: int) -> None:
        if not captions:
            raise VisionTalesError("a story needs at least one caption to start from")
        if len(frames) > len(captions):
            raise VisionTalesError(f"{len(frames)} frames given for {len(captions)} captions")
        if n_frames < len(captions):
            raise VisionTalesError(f"--frames {n_frames} is fewer than the {len(captions)} captions given")

    @torch.no_grad()
    def __call__(self, captions: list[str], frames: list[torch.Tensor] | None = None, n_frames: int = 5,
                 seed: int = 0) -> Story:
        """Continue a story given `captions` (at least one) and the first len(frames) of their
        frames (none, some or all), until it has `n_frames` frames."""
        return self.many([(captions, list(frames or []))], n_frames, seed)[0]

    @torch.no_grad()
    def one_by_one(self, captions: list[str], n_frames: int = 5, seed: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
        """(caption, frame (3, S, S)) of each step as soon as it is drawn, for a story continued from
        `captions` alone until `n_frames`: the story `__call__` tells for the same seed, one frame
        at a time (for an app that shows progress)."""
        self.check(captions, [], n_frames)
        story, previous = list(captions), None
        for step in range(n_frames):
            if step == len(story):
                story.append(self.captioner.continue_story(story, 1)[0])
            frame, previous = self.draw(story[step], seed + step, previous)
            yield story[step], frame.cpu()

    @torch.no_grad()
    def many(self, starts: list[tuple[list[str], list[torch.Tensor]]], n_frames: int = 5, seed: int = 0,
             batch_size: int = 16) -> list[Story]:
        """Continue several stories, each from (captions, frames). The captioner writes every
        missing caption first; then, unless frames continue from each other (continuity), the
        visualizer draws every missing frame of every story in batches: caption k+1 depends on
        the captions before it, frame k+1 only on its caption and seed."""
        size = self.visualizer.resolution
        stories, given = [], []
        for captions, frames in starts:
            self.check(captions, frames, n_frames)
            story = list(captions)
            while len(story) < n_frames:
                story.append(self.captioner.continue_story(story, 1)[0])
            stories.append(story)
            given.append([F.interpolate(f[None].float(), size=(size, size), mode="bilinear", antialias=True)[0]
                          for f in frames])
        if self.continuity_strength is None:
            todo = [(i, step) for i, frames in enumerate(given) for step in range(len(frames), n_frames)]
            drawn = self.visualizer.draw([stories[i][step] for i, step in todo], [seed + step for _, step in todo],
                                         self.lora_alpha, batch_size)
            for (i, _), frame in zip(todo, drawn, strict=True):
                given[i].append(frame)
        else:
            for story, frames in zip(stories, given, strict=True):
                latents = self.visualizer.latents_of(frames[-1][None]) if frames else None
                previous = None if latents is None else latents[0]
                for step in range(len(frames), n_frames):
                    frame, previous = self.draw(story[step], seed + step, previous)
                    frames.append(frame.cpu())
        return [self.story(story, done, len(captions), len(frames), seed)
                for story, done, (captions, frames) in zip(stories, given, starts, strict=True)]

    def story(self, captions: list[str], frames: list[torch.Tensor], given_captions: int, given_frames: int,
              seed: int) -> Story:
        """The Story of `captions` and `frames`, the first `given_*` of them given, with the settings
        it was told with."""
        n = len(captions)
        settings = {"seed": seed, "frames": n, "lora_alpha": self.lora_alpha,
                    "continuity_strength": self.continuity_strength, "resolution": self.visualizer.resolution}
        return Story(list(captions), [i < given_captions for i in range(n)], [i < given_frames for i in range(n)],
                     torch.stack([f.cpu() for f in frames]), settings)


def read_prefix(path: Path) -> tuple[list[str], list[torch.Tensor]]:
    """Captions and frames (3xHxW in [-1, 1]) from a prefix JSON: [{"caption": ..., "frame": ...}].
    Frames are optional but must come first: step i can have a frame only if steps < i have."""
    steps = read_json(path)
    if not isinstance(steps, list) or not steps or not all(isinstance(s, dict) and s.get("caption") for s in steps):
        raise VisionTalesError(f'{path}: expected a non-empty list of {{"caption": "...", "frame": "..."}}')
    captions, frames = [s["caption"] for s in steps], []
    for i, step in enumerate(steps):
        if not step.get("frame"):
            if any(s.get("frame") for s in steps[i:]):
                raise VisionTalesError(f"{path}: step {i + 1} has no frame but a later step has one")
            break
        image_path = (path.parent / step["frame"]).resolve()
        try:
            with Image.open(image_path) as img:
                pixels = torch.from_numpy(np.asarray(img.convert("RGB")).copy())
        except (FileNotFoundError, OSError) as e:
            raise VisionTalesError(f"{image_path}: cannot read the frame of step {i + 1} ({e})") from e
        frames.append(pixels.permute(2, 0, 1).float() / 127.5 - 1.0)
    return captions, frames


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def to_image(frame: torch.Tensor) -> Image.Image:
    """A frame (3, H, W) in [-1, 1] as an RGB image."""
    return Image.fromarray(((frame.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())


def storyboard(story: Story) -> Image.Image:
    """The frames in a row, each caption wrapped under its frame; given steps framed green."""
    n, pad, line = len(story.captions), 12, 18
    wrapped = [textwrap.wrap(c, 30) or [""] for c in story.captions]
    text_h = line * (max(map(len, wrapped)) + 1)
    board = Image.new("RGB", (n * (PANEL + pad) + pad, PANEL + 2 * pad + text_h), "white")
    draw = ImageDraw.Draw(board)
    font = _font(14)
    for i, (frame, lines) in enumerate(zip(story.frames, wrapped, strict=True)):
        x = pad + i * (PANEL + pad)
        board.paste(to_image(frame).resize((PANEL, PANEL), Image.NEAREST), (x, pad))
        colour = GIVEN if story.given_frames[i] else DRAWN
        draw.rectangle([x - 3, pad - 3, x + PANEL + 2, pad + PANEL + 2], outline=colour, width=3)
        label = f"{i + 1}: " + ("given" if story.given_frames[i] else
                                "drawn for given caption" if story.given_captions[i] else "generated")
        draw.text((x, pad + PANEL + 4), label, fill=colour, font=font)
        for j, text in enumerate(lines):
            draw.text((x, pad + PANEL + 4 + line * (j + 1)), text, fill="black", font=font)
    return board


def write_story(story: Story, out: Path, extra: dict[str, Any] | None = None) -> Path:
    """storyboard.png, frame_XX.png and story.json under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    storyboard(story).save(out / "storyboard.png")
    names = []
    for i, frame in enumerate(story.frames):
        names.append(f"frame_{i:02d}.png")
        to_image(frame).save(out / names[-1])
    record = {k: v for k, v in asdict(story).items() if k != "frames"}
    record.update(frames=names, settings={**story.settings, **(extra or {})})
    (out / "story.json").write_text(json.dumps(record, indent=1))
    return out / "storyboard.png"


class SAGANetsStories(L.LightningModule):
    """`visiontales predict` over FlintstonesSV stories: for each story, its first k captions and
    frames are the prefix (k from the data module) and the pipeline completes it to `frames`
    frames, writing storyboard.png, frame_XX.png and story.json under <run>/stories/<story_id>/."""

    def __init__(self, captioner_checkpoint: str, visualizer_checkpoint: str, frames: int = 5,
                 lora_alpha: float | None = None, continuity_strength: float | None = None, seed: int = 0) -> None:
        """
        Args:
            captioner_checkpoint: a trained SAGANetsCaptioner (.ckpt).
            visualizer_checkpoint: a trained visualizer (.ckpt): LoRADiffusionVisualizer,
                GANVisualizer, or any other registered Visualizer.
            frames: frames per story.
            lora_alpha: LoRA alpha to draw with (default: the visualizer's inference_lora_alpha).
            continuity_strength: start each frame from the previous one's latent re-noised to this
                fraction of the schedule (None: off, every frame from pure noise).
            seed: frame i of every story is drawn with seed + i.
        """
        super().__init__()
        self.save_hyperparameters()
        for path in (captioner_checkpoint, visualizer_checkpoint):
            if not Path(path).is_file():
                raise VisionTalesError(f"{path}: checkpoint not found")
        self.pipeline: SAGANetsPipeline | None = None

    def configure_model(self) -> None:
        """Load both checkpoints here, not in __init__: LightningCLI instantiates this module in a
        context that would hand its own init arguments to their `save_hyperparameters`."""
        if self.pipeline is not None:
            return
        from visiontales.models.base import load_model
        from visiontales.models.captioner import SAGANetsCaptioner

        h = self.hparams
        self.captioner = load_model(h.captioner_checkpoint, SAGANetsCaptioner, "captioner_checkpoint")
        self.visualizer = load_model(h.visualizer_checkpoint, Visualizer, "visualizer_checkpoint")
        self.pipeline = SAGANetsPipeline(self.captioner, self.visualizer, h.lora_alpha, h.continuity_strength)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        records = []
        out = Path(self.trainer.log_dir or ".") / "stories"
        # k given pairs, then the first caption alone when k is 0 (the pipeline needs a start)
        starts = [(texts[: max(k, 1)], list(batch["images"][i][:k]) if "images" in batch else [])
                  for i, (texts, k) in enumerate(zip(batch["texts"], batch["prefix_len"], strict=True))]
        stories = self.pipeline.many(starts, self.hparams.frames, seed=self.hparams.seed)
        for story_id, texts, k, story in zip(batch["story_id"], batch["texts"], batch["prefix_len"], stories,
                                             strict=True):
            write_story(story, out / story_id, {"story_id": story_id, "reference_captions": texts})
            records.append({"story_id": story_id, "given": k, "captions": story.captions,
                            "storyboard": str(out / story_id / "storyboard.png")})
        return records

    def configure_callbacks(self):
        from visiontales.callbacks import JSONPredictionWriter

        return [JSONPredictionWriter(show=1)]
