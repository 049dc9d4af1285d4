"""`visiontales evaluate`: one checkpoint (or a folder of generated stories) on one data split ->
metrics.json and metrics.md.

- text models (CLIPStoryteller, SAGANetsCaptioner): the model's own test (or validation) loop on
  the split (BLEU-1..4, METEOR, ROUGE-L, CIDEr; the captioner adds Char-F1 of named characters and
  perplexity), with the data module the checkpoint was trained with, pointed at --data-root.
- visualizers (any Visualizer: LoRADiffusionVisualizer, GANVisualizer, ...): one frame per distinct
  clip of the split (its fixed evaluation frame), drawn from the clip's caption with seed
  `seed + i`: Char-Acc and Char-F1 (character classifier), FID against the real frames (protocol
  named), CLIPScore.
- a stories folder (`visiontales predict --config experiments/sagan_story.yaml` or `story`):
  the whole SAGANets pipeline: text metrics of the generated captions against the reference
  captions of the same steps, Char-F1 of each drawn frame against the characters its caption
  names, Char-Acc/F1 against the labels where the caption was the reference one, CLIPScore,
  FID against the split's real frames, and story consistency (`CONSISTENCY`: do consecutive
  frames show the characters and setting their captions share, by the classifier's character
  head and setting network).
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from visiontales.devices import Placement
from visiontales.errors import VisionTalesError
from visiontales.sd import reconstruct

LOG = logging.getLogger("visiontales")
LABELS = {"char_acc": "Char-Acc", "char_f1": "Char-F1", "fid": "FID", "clip_score": "CLIPScore",
          "bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3", "bleu4": "BLEU-4", "meteor": "METEOR",
          "rougeL": "ROUGE-L", "cider": "CIDEr", "ppl": "PPL", "loss": "loss",
          "named_char_f1": "Char-F1 vs caption names", "given_char_acc": "Char-Acc (reference captions)",
          "given_char_f1": "Char-F1 (reference captions)",
          "consistency": "Consistency"}


@dataclass
class Evaluation:
    """What `evaluate` measured and how: written as metrics.json and metrics.md."""

    kind: str
    source: str
    data_root: str
    split: str
    count: int
    metrics: dict[str, float]
    protocols: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def write(self, out: Path) -> tuple[Path, Path]:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(self.__dict__, indent=1))
        lines = [f"# {self.kind}: {self.source}", "", f"{self.split} split of {self.data_root}, {self.count} items", "",
                 "| metric | value |", "|---|---|"]
        lines += [f"| {LABELS.get(k, k)} | {v:.4f} |" for k, v in self.metrics.items()]
        lines += [""] + [f"- {LABELS.get(k, k)}: {v}" for k, v in self.protocols.items()]
        (out / "metrics.md").write_text("\n".join(lines) + "\n")
        return out / "metrics.json", out / "metrics.md"


# ----------------------------------------------------------------------------------------- text


def datamodule_for(model, checkpoint: dict[str, Any], data_root: Path):
    """The data module a checkpoint was trained with (its class and settings as LightningCLI
    recorded them, else the model's `datamodule_class`), pointed at `data_root`."""
    from lightning.pytorch.core.saving import _load_state

    saved = checkpoint.get("datamodule_hyper_parameters") or {}
    module, name = saved.get("_class_path", model.datamodule_class).rsplit(".", 1)
    hparams = {k: v for k, v in saved.items() if not k.startswith("_")}  # plain values: built directly
    return _load_state(getattr(importlib.import_module(module), name),
                       {**checkpoint, "datamodule_hyper_parameters": hparams}, root=str(data_root))


def evaluate_text_model(model, checkpoint: dict[str, Any], source: Path, data_root: Path, split: str,
                        out: Path, placement: Placement | None = None) -> Evaluation:
    """The model's own test (or validation) loop, on `placement`'s device and precision (default:
    the CPU, 32-true), with a progress bar on a terminal."""
    import sys

    import lightning as L

    datamodule = datamodule_for(model, checkpoint, data_root)
    placement = placement or Placement(torch.device("cpu"))
    trainer = L.Trainer(**placement.trainer_options(), logger=False, default_root_dir=out,
                        enable_progress_bar=sys.stderr.isatty(), enable_model_summary=False)
    run = trainer.test if split == "test" else trainer.validate
    results = run(model, datamodule=datamodule, verbose=False)[0]
    prefix = "test/" if split == "test" else "val/"
    metrics = {k[len(prefix):]: float(v) for k, v in results.items() if k.startswith(prefix)}
    count = len(datamodule.datasets["test" if split == "test" else "val"])
    return Evaluation(type(model).__name__, str(source), str(data_root), split, count, metrics,
                      {"METEOR": "pycocoevalcap (METEOR 1.5 jar)"})


# --------------------------------------------------------------------------------------- frames


def split_clips(data_root: Path, split: str, resolution: int, max_frames: int | None):
    """(frames (N, 3, R, R), captions, labels (N, 7), clip ids) of the split's distinct clips, in
    story order, each at the data module's fixed evaluation frame."""
    from data_modules.flintstones import FlintstonesSVDataModule
    from data_modules.flintstones_format import read_frame

    datamodule = FlintstonesSVDataModule(root=str(data_root), resolution=resolution)
    datamodule.setup("test" if split == "test" else "validate")
    stories = datamodule.datasets["test" if split == "test" else "val"].stories
    clips = list(dict.fromkeys(clip for story in stories for clip in story))[:max_frames or None]
    index, frame = datamodule.index, datamodule.hparams.eval_frame
    frames = torch.stack([read_frame(index.frames_path(c), frame, resolution) for c in clips])
    labels = torch.stack([torch.from_numpy(index.clips[c].characters) for c in clips])
    return frames, [index.clips[c].caption for c in clips], labels, clips


def image_metrics(frames: torch.Tensor, captions: list[str], labels: torch.Tensor | None, real: torch.Tensor,
                  classifier, clip_model, inception_weights=None) -> tuple[dict[str, float], dict[str, str]]:
    """Char-Acc / Char-F1 (if labels), FID against `real`, CLIPScore."""
    from visiontales.evaluation.character_classifier import score_frames
    from visiontales.evaluation.image_metrics import clip_score, frechet_distance

    metrics = score_frames(classifier, frames, labels) if labels is not None else {}
    fid, protocol = frechet_distance(real, frames, classifier, inception_weights)
    metrics.update(fid=fid, clip_score=clip_score(clip_model, frames, captions))
    return metrics, {"fid": protocol, "clip_score": "100 * max(cos, 0) with the project's CLIP"}


def save_grid(frames: torch.Tensor, path: Path, nrow: int = 8) -> Path:
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image((frames.float().clamp(-1, 1) + 1) / 2, path, nrow=nrow, padding=2, pad_value=1.0)
    return path


def evaluate_visualizer(visualizer, checkpoint: Path, data_root: Path, split: str, out: Path, classifier,
                        clip_model, max_frames: int | None, seed: int, lora_alpha: float | None,
                        inception_weights=None, reference: bool = False, batch_size: int = 8,
                        through_vae=None) -> Evaluation:
    """Frames a Visualizer draws for the split's captions (or, with `reference`, the real frames;
    with `through_vae` too, the real frames as that VAE reconstructs them), `batch_size` at a time
    on the visualizer's device."""
    size = visualizer.resolution if visualizer is not None else 64
    real, captions, labels, clips = split_clips(data_root, split, size, max_frames)
    if len(captions) < 2:
        raise VisionTalesError(f"{data_root}: {len(captions)} clip(s) to score in split '{split}'"
                               f"{'' if max_frames is None else f' (--max-frames {max_frames})'}; FID needs at least 2")
    seeds = [seed + i for i in range(len(captions))]
    if not reference:
        frames = visualizer.draw(captions, seeds, lora_alpha, batch_size)
    elif through_vae is not None:
        frames = torch.cat([reconstruct(through_vae, real[i:i + batch_size]) for i in range(0, len(real), batch_size)])
    else:
        frames = real
    metrics, protocols = image_metrics(frames, captions, labels, real, classifier, clip_model, inception_weights)
    save_grid(torch.cat([frames[:8], real[:8]]), out / "samples.png")
    shown = [{"clip": c, "caption": t} for c, t in zip(clips[:8], captions[:8], strict=True)]
    (out / "samples.json").write_text(json.dumps(shown, indent=1))
    kind = type(visualizer).__name__ if not reference else \
        "real frames" if through_vae is None else "real frames through the VAE"
    settings = {"seed": seed, "lora_alpha": lora_alpha, "resolution": size, "frames": "fixed evaluation frame"}
    return Evaluation(kind, str(checkpoint), str(data_root), split, len(frames), metrics, protocols, settings)


# ---------------------------------------------------------------------------------------- stories


def read_stories(folder: Path) -> list[dict[str, Any]]:
    """Every <folder>/**/story.json with its frames loaded ((N, 3, H, W) in [-1, 1])."""
    stories = []
    for path in sorted(folder.rglob("story.json")):
        try:
            record = json.loads(path.read_text())
            frames = [np.asarray(Image.open(path.parent / name).convert("RGB")) for name in record["frames"]]
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise VisionTalesError(f"{path}: not a readable story ({type(e).__name__}: {e})") from e
        record["frame_tensor"] = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1
        stories.append(record)
    if not stories:
        raise VisionTalesError(f"{folder}: no story.json found (write stories with `visiontales predict "
                               f"--config experiments/sagan_story.yaml` or `visiontales story`)")
    return stories


def evaluate_stories(folder: Path, data_root: Path, split: str, out: Path, classifier, clip_model,
                     inception_weights=None) -> Evaluation:
    from torchmetrics.classification import MultilabelF1Score

    from data_modules.flintstones_format import FlintstonesIndex
    from visiontales.evaluation.character_classifier import score_frames
    from visiontales.evaluation.text_metrics import coco_caption_scores
    from visiontales.vocabulary import named_characters

    stories = read_stories(folder)
    index = FlintstonesIndex(data_root)
    clips_of = {story[0]: story for story in index.stories(split)[0]}
    drawn, captions, given_frames, given_labels = [], [], [], []
    predictions, references = {}, {}
    for s in stories:
        reference_captions = s["settings"].get("reference_captions") or []
        clip_ids = clips_of.get(s["settings"].get("story_id"), [])
        for step, caption in enumerate(s["captions"]):
            if s["given_frames"][step]:
                continue
            drawn.append(s["frame_tensor"][step])
            captions.append(caption)
            if s["given_captions"][step] and step < len(clip_ids):
                given_frames.append(s["frame_tensor"][step])
                given_labels.append(torch.from_numpy(index.clips[clip_ids[step]].characters))
            elif step < len(reference_captions):
                key = f"{s['settings'].get('story_id', len(predictions))}#{step}"
                predictions[key], references[key] = caption, [reference_captions[step]]
    if not drawn:
        raise VisionTalesError(f"{folder}: the stories hold no drawn frames to score")
    consistency, checks = story_consistency(stories, classifier)
    frames = torch.stack(drawn)
    size = frames.shape[-1]
    real, *_ = split_clips(data_root, split, size, max(len(frames), 2))
    metrics, protocols = image_metrics(frames, captions, None, real, classifier, clip_model, inception_weights)
    named = named_characters(captions)
    f1 = MultilabelF1Score(num_labels=named.shape[1], average="micro")
    metrics["named_char_f1"] = float(f1(classifier.predict_characters(frames).cpu(), named.int()))
    if given_frames:
        given = score_frames(classifier, torch.stack(given_frames), torch.stack(given_labels))
        metrics.update(given_char_acc=given["char_acc"], given_char_f1=given["char_f1"])
    if predictions:
        metrics.update({k: float(v) for k, v in coco_caption_scores(predictions, references).items()})
    protocols["named_char_f1"] = "classifier decisions on each drawn frame vs the main characters its caption names"
    if checks:
        metrics["consistency"] = consistency
        protocols["consistency"] = CONSISTENCY
    return Evaluation("SAGANets stories", str(folder), str(data_root), split, len(frames), metrics, protocols,
                      {"stories": len(stories), "generated_captions": len(predictions), "consistency_checks": checks})


CONSISTENCY = ("share of passed checks over consecutive drawn frames: each character both captions name is "
               "detected in both frames; where both captions name the same setting, the setting network gives "
               "both frames the same setting")


def named_setting(caption: str, settings: list[str]) -> str | None:
    """The setting class a caption names ("... in the quarry." -> "quarry"), the longest if several."""
    import re

    text = caption.casefold()
    named = [s for s in settings if re.search(rf"\b{re.escape(s.casefold())}\b", text)]
    return max(named, key=len) if named else None


def story_consistency(stories: list[dict[str, Any]], classifier) -> tuple[float, int]:
    """(share of passed checks, number of checks) over every pair of consecutive drawn frames of
    each story (see CONSISTENCY); (nan, 0) where no pair has anything to check."""
    from visiontales.vocabulary import named_characters

    settings = list(classifier.hparams.get("settings") or [])
    passed, checks = 0, 0
    classifier.eval()
    for s in stories:
        captions, frames = s["captions"], s["frame_tensor"].to(classifier.device)
        shown = classifier.predict_characters(frames).bool().cpu()
        place = classifier.predict_settings(frames).cpu()
        named = named_characters(captions).bool()
        for k in range(len(captions) - 1):
            if s["given_frames"][k] or s["given_frames"][k + 1]:
                continue
            both = named[k] & named[k + 1]
            checks += int(both.sum())
            passed += int((both & shown[k] & shown[k + 1]).sum())
            setting = named_setting(captions[k], settings)
            if setting is not None and setting == named_setting(captions[k + 1], settings):
                checks += 1
                passed += int(place[k] == place[k + 1])
    return (passed / checks if checks else float("nan")), checks
