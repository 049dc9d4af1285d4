"""A new visualizer is one class: defined here alone, registered by its kind, then trained with
`visiontales fit`, scored with `visiontales evaluate` and drawn with `visiontales story`
(docs/extending.md walks through the same class)."""

import json
import zlib

import lightning as L
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from visiontales.cli import main
from visiontales.errors import VisionTalesError
from visiontales.models.base import MODEL_KINDS, load_model
from visiontales.visualizer import Drawing, Visualizer


class PaletteVisualizer(Visualizer, kind="palette"):
    """Learns a colour per caption word; a frame is its caption's mean colour, textured by noise."""

    def __init__(self, resolution: int = 32, vocabulary: int = 256, lr: float = 0.1, val_samples: int = 2,
                 seed: int = 0) -> None:
        """
        Args:
            resolution: frame side in pixels.
            vocabulary: hash buckets for caption words.
            lr: Adam learning rate.
            val_samples: frames drawn beside their ground truth each validation.
            seed: base seed of the drawing seeds.
        """
        super().__init__()
        self.save_hyperparameters()
        self.colours = nn.EmbeddingBag(vocabulary, 3, mode="mean")

    def colour(self, captions: list[str]) -> torch.Tensor:
        """(N, 3) colour in [-1, 1] of each caption: the mean of its words' colours."""
        words = [[zlib.crc32(w.encode()) % self.hparams.vocabulary for w in c.lower().split()] or [0] for c in captions]
        offsets = torch.tensor([0, *torch.tensor([len(w) for w in words]).cumsum(0)[:-1].tolist()], device=self.device)
        ids = torch.tensor([i for w in words for i in w], device=self.device)
        return torch.tanh(self.colours(ids, offsets))

    def generate(self, captions, seeds, *, previous=None, strength=1.0, lora_alpha=None) -> Drawing:
        if lora_alpha is not None:
            raise VisionTalesError("PaletteVisualizer has no LoRA adapters")
        noise = self.seeded_noise((1, self.resolution, self.resolution), seeds, self.device)
        if previous is not None:
            noise = (1 - strength) ** 0.5 * previous.to(noise) + strength ** 0.5 * noise
        frames = (self.colour(captions)[:, :, None, None] + 0.1 * noise).clamp(-1, 1)
        return Drawing(frames, noise)

    def loss(self, batch) -> torch.Tensor:
        """How far each caption's colour is from the mean colour of the frame it captions."""
        ks = batch["prefix_len"]
        frames = torch.stack([images[k] for images, k in zip(batch["images"], ks, strict=True)])
        return F.mse_loss(self.colour([t[k] for t, k in zip(batch["texts"], ks, strict=True)]), frames.mean(dim=(2, 3)))

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(batch["texts"]))
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.loss(batch), batch_size=len(batch["texts"]))
        if batch_idx == 0:
            captions = [t[0] for t in batch["texts"][: self.hparams.val_samples]]
            self.log_frame_grid(self.generate(captions, list(range(len(captions)))).frames,
                                batch["images"][: len(captions), 0], nrow=len(captions))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def _fit(model, root, out, name):
    """A checkpoint as `fit` writes it (the captioner and classifier the commands also need)."""
    from data_modules.flintstones import FlintstonesSVDataModule

    trainer = L.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=0, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=out)
    trainer.fit(model, FlintstonesSVDataModule(str(root), resolution=32, batch_size=2))
    trainer.save_checkpoint(out / f"{name}.ckpt")
    return out / f"{name}.ckpt"


def test_a_visualizer_defined_in_one_class_fits_evaluates_and_draws_stories(flintstones_root, tmp_path, monkeypatch):
    from visiontales.evaluation.character_classifier import CharacterClassifier
    from visiontales.models.captioner import SAGANetsCaptioner

    assert MODEL_KINDS["palette"] is PaletteVisualizer
    assert main(["fit", "--model", f"{__name__}.PaletteVisualizer", "--data",
                 "data_modules.flintstones.FlintstonesSVDataModule", "--data.root", str(flintstones_root),
                 "--data.resolution", "32", "--data.batch_size", "4", "--trainer.max_epochs", "3",
                 "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
                 "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
                 "--trainer.logger.init_args.version", "v"]) == 0
    run = tmp_path / "runs" / "visiontales" / "v"
    events = EventAccumulator(str(run))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert "val/frames" in events.Tags()["images"]
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert isinstance(load_model(checkpoint, Visualizer), PaletteVisualizer)

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no InceptionV3 here: FID on the classifier's features
    torch.manual_seed(0)
    classifier = _fit(CharacterClassifier(resolution=32), flintstones_root, tmp_path, "classifier")
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data-root", str(flintstones_root), "--classifier",
                 str(classifier), "--clip", "tiny", "--max-frames", "6", "--out", str(tmp_path / "eval")]) == 0
    result = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert result["kind"] == "PaletteVisualizer" and result["count"] == 6
    assert {"char_acc", "char_f1", "fid", "clip_score"} <= set(result["metrics"])

    captioner = _fit(SAGANetsCaptioner(gpt2="tiny", max_new_tokens=6), flintstones_root, tmp_path, "captioner")
    for out in ("s1", "s2"):
        assert main(["story", "--captioner", str(captioner), "--visualizer", str(checkpoint), "--first-caption",
                     "Fred is walking in the yard.", "--frames", "3", "--continuity-strength", "0.5",
                     "--out", str(tmp_path / out)]) == 0
    story = json.loads((tmp_path / "s1" / "story.json").read_text())
    assert len(story["captions"]) == 3 and len(story["frames"]) == 3
    assert (tmp_path / "s1" / "storyboard.png").read_bytes() == (tmp_path / "s2" / "storyboard.png").read_bytes()
