"""CLIPStoryteller: the VisionTales paper (images -> story), and one step beyond it.

Paper (the VisionTales paper, sections 3-4): frozen CLIP ViT-B/32 encodes each of three
VIST images to 512-d and the three vectors are averaged; GPT-2 is fine-tuned (AdamW, lr 5e-5,
batch size 1, 7 epochs) on "Tell a story based on the following images:" followed by the story.

- conditioning="prompt" is the paper's setting. Its prompt is a fixed string, so the images do not
  reach GPT-2 at all: the model learns the style of the stories, not what the photos show.
- conditioning="prefix" (ClipCap, Mokady et al. 2021, rmokady/CLIP_prefix_caption) maps the CLIP
  vector to L GPT-2 input embeddings placed before the story, so the images condition the text.

In both, the loss covers only the story tokens and EOS (prompt, prefix and padding carry label
-100), and generation stops at EOS, not at the first "." (which would end a story after one
sentence, as ClipCap's decoder does).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from visiontales.backbones import fingerprint, home, load_clip, load_gpt2
from visiontales.errors import VisionTalesError
from visiontales.evaluation.text_metrics import CaptionScores
from visiontales.feature_cache import FeatureCache
from visiontales.models.text_generation import TextGenerationModule

# the prefix is embeddings, not ids: n-gram blocking applies to the story only, which is what we want
warnings.filterwarnings("ignore", message="Passing `no_repeat_ngram_size` with `inputs_embeds`")


class PrefixMapper(nn.Module):
    """CLIP vector (B, D) -> L GPT-2 input embeddings (B, L, E), as in ClipCap.

    "mlp": Linear -> Tanh -> Linear (ClipCap's MLP, used with GPT-2 fine-tuned).
    "transformer": the CLIP vector projected to L tokens, followed by L learned constants, through
    a transformer encoder; the outputs at the constants' positions are the prefix (ClipCap's
    TransformerMapper, used with GPT-2 frozen).
    """

    def __init__(self, kind: str, clip_dim: int, embed_dim: int, length: int, layers: int = 8) -> None:
        super().__init__()
        self.kind, self.length, self.embed_dim = kind, length, embed_dim
        if kind == "mlp":
            hidden = embed_dim * length // 2
            self.net = nn.Sequential(nn.Linear(clip_dim, hidden), nn.Tanh(), nn.Linear(hidden, embed_dim * length))
        elif kind == "transformer":
            self.project = nn.Linear(clip_dim, embed_dim * length)
            self.constants = nn.Parameter(torch.randn(length, embed_dim))
            heads = 8 if embed_dim % 8 == 0 else 1
            layer = nn.TransformerEncoderLayer(embed_dim, heads, dim_feedforward=2 * embed_dim, batch_first=True)
            self.net = nn.TransformerEncoder(layer, layers)
        else:
            raise ValueError(f"mapper must be 'mlp' or 'transformer', got {kind!r}")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b = features.shape[0]
        if self.kind == "mlp":
            return self.net(features).view(b, self.length, self.embed_dim)
        tokens = self.project(features).view(b, self.length, self.embed_dim)  # (B, L, E)
        constants = self.constants.unsqueeze(0).expand(b, -1, -1)
        return self.net(torch.cat([tokens, constants], dim=1))[:, self.length:]  # (B, L, E)


class CLIPStoryteller(TextGenerationModule, kind="clip_storyteller"):
    """Frozen CLIP + fine-tuned GPT-2 that tells a story for a three-image sequence."""

    datamodule_class = "data_modules.vist.VISTDataModule"

    def __init__(
        self,
        gpt2: str = "openai-community/gpt2",
        clip: str = "ViT-B-32-quickgelu@openai",
        conditioning: Literal["prompt", "prefix"] = "prompt",
        prompt: str = "Tell a story based on the following images:",
        prefix_length: int = 10,
        mapper: Literal["mlp", "transformer"] = "mlp",
        mapper_layers: int = 8,
        image_fusion: Literal["mean", "per_image"] = "mean",
        normalize_features: bool = True,
        freeze_gpt2: bool = False,
        max_story_tokens: int = 128,
        no_repeat_ngram_size: int = 3,
        max_new_tokens: int = 80,
        feature_cache: bool = True,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            gpt2: GPT-2 to fine-tune: hub id (gpt2), local directory, or "tiny".
            clip: frozen CLIP: "ViT-B-32-quickgelu@openai" (the paper), "hf-hub:<repo>", local dir, or "tiny".
            conditioning: "prompt" (the paper: a fixed text prompt, images unused) or "prefix"
                (ClipCap-style: CLIP features mapped to GPT-2 input embeddings).
            prompt: the text placed before the story in "prompt" conditioning.
            prefix_length: L, the number of prefix embeddings per CLIP vector ("prefix" only).
            mapper: "mlp" or "transformer" (ClipCap's two mapping networks).
            mapper_layers: transformer layers of the "transformer" mapper.
            image_fusion: "mean" (the paper: average the three CLIP vectors, L prefix tokens) or
                "per_image" (one L-token prefix per image, 3L tokens in story order).
            normalize_features: L2-normalise each CLIP vector before fusing them.
            freeze_gpt2: keep GPT-2 frozen (and in eval mode) and train only the mapper (ClipCap's
                transformer setting).
            max_story_tokens: stories are truncated to this many tokens for training.
            no_repeat_ngram_size: block repeated n-grams of this size in generation (0: off).
            max_new_tokens: longest story generated, in tokens.
            feature_cache: cache the frozen CLIP features of every photo on disk
                ($VISIONTALES_HOME/features) and train on them instead of re-encoding images.
            **kwargs: the optimiser and decoding options of TextGenerationModule (lr: the paper's
                5e-5; weight_decay, warmup_steps (ClipCap: 5,000; the paper: none), decoding,
                num_beams, top_p, temperature, samples_to_log).
        """
        if freeze_gpt2 and conditioning == "prompt":
            raise VisionTalesError("freeze_gpt2=true with conditioning=prompt leaves nothing to train "
                                   "(the prefix mapper exists only with conditioning=prefix)")
        super().__init__(max_new_tokens=max_new_tokens, **kwargs)
        self.gpt2, self.tokenizer = load_gpt2(gpt2)
        if freeze_gpt2:
            self.gpt2.requires_grad_(False)
        self.prompt_ids = self.tokenizer(prompt)["input_ids"]
        self.clip = None
        if conditioning == "prefix":
            self.clip = load_clip(clip).requires_grad_(False)
            embed_dim = self.gpt2.get_input_embeddings().embedding_dim
            self.mapper = PrefixMapper(mapper, self.clip.visual.output_dim, embed_dim, prefix_length, mapper_layers)
        self.init_metrics({"scores": CaptionScores})

    # ------------------------------------------------------------------------------- inputs

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, C, H, W) preprocessed images -> (B, 3, D) frozen CLIP features."""
        with torch.no_grad():
            return self.clip.encode_image(images.flatten(0, 1)).float().view(*images.shape[:2], -1)

    def condition(self, batch: dict[str, Any]) -> torch.Tensor:
        """The embeddings GPT-2 reads before the story: (B, P, E)."""
        embed = self.gpt2.get_input_embeddings()
        b = len(batch["photo_ids"]) if "photo_ids" in batch else batch["images"].shape[0]
        if self.hparams.conditioning == "prompt":
            ids = torch.tensor(self.prompt_ids, dtype=torch.long, device=self.device)
            return embed(ids).unsqueeze(0).expand(b, -1, -1)
        features = batch["image_features"] if "image_features" in batch else self.encode_images(batch["images"])
        features = features.to(self.device, torch.float32)  # (B, 3, D)
        if self.hparams.normalize_features:
            features = F.normalize(features, dim=-1)
        if self.hparams.image_fusion == "mean":
            return self.mapper(features.mean(dim=1))  # (B, L, E)
        prefix = self.mapper(features.flatten(0, 1))  # (B*3, L, E)
        return prefix.reshape(b, -1, prefix.shape[-1])  # (B, 3L, E)

    def story_ids(self, batch: dict[str, Any]) -> list[list[int]]:
        """Token ids of each story (its three sentences joined), truncated, ending in EOS."""
        stories = [" " + " ".join(texts) for texts in batch["texts"]]
        ids = self.tokenizer(stories)["input_ids"]
        return [seq[: self.hparams.max_story_tokens - 1] + [self.tokenizer.eos_token_id] for seq in ids]

    def inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs_embeds (B, P+T, E), attention_mask (B, P+T), labels (B, P+T)) for teacher forcing.

        Labels are the story ids followed by EOS; the prompt or prefix positions and the right
        padding carry -100, so the loss covers the story alone.
        """
        prefix = self.condition(batch)  # (B, P, E)
        stories = self.story_ids(batch)
        b, p = prefix.shape[:2]
        t = max(map(len, stories))
        ids = torch.full((b, t), self.tokenizer.pad_token_id, dtype=torch.long, device=self.device)
        story_mask = torch.zeros((b, t), dtype=torch.long, device=self.device)
        for i, seq in enumerate(stories):
            ids[i, : len(seq)] = torch.tensor(seq, device=self.device)
            story_mask[i, : len(seq)] = 1
        embeds = torch.cat([prefix, self.gpt2.get_input_embeddings()(ids)], dim=1)
        mask = torch.cat([torch.ones((b, p), dtype=torch.long, device=self.device), story_mask], dim=1)
        labels = torch.cat([torch.full((b, p), -100, device=self.device), ids.masked_fill(story_mask == 0, -100)], 1)
        return embeds, mask, labels

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Mean cross-entropy over the story tokens (and EOS) only."""
        embeds, mask, labels = self.inputs(batch)
        return self.gpt2(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss

    @torch.no_grad()
    def generate_stories(self, batch: dict[str, Any]) -> list[str]:
        """One story per item of the batch, decoded until EOS."""
        prefix = self.condition(batch)
        out = self.gpt2.generate(
            inputs_embeds=prefix, attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long, device=self.device),
            eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
            no_repeat_ngram_size=self.hparams.no_repeat_ngram_size, **self.decoding_options())
        return [s.strip() for s in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    @torch.no_grad()
    def tell(self, photos: list[str | Path]) -> str:
        """The story for three photo files (any format the VIST data module reads), preprocessed
        as this model's CLIP expects; with prompt conditioning the photos are not read."""
        from data_modules.images import load_image
        from data_modules.vist import clip_transform
        from visiontales.backbones import clip_preprocessing

        if len(photos) != 3:
            raise VisionTalesError(f"three photos are needed, in story order (got {len(photos)})")
        if self.clip is None:
            images = torch.zeros(1, 3, 3, 1, 1)
        else:
            transform = clip_transform(*clip_preprocessing(self.clip))
            images = torch.stack([load_image(Path(p), transform) for p in photos]).unsqueeze(0)
        return self.generate_stories({"images": images.to(self.device)})[0]

    # ------------------------------------------------------------------------------ export

    def export(self, directory: Path) -> list[Path]:
        """GPT-2 in transformers format; with prefix conditioning the mapper too, as
        `prefix_mapper.safetensors`; `storyteller.json` says how GPT-2 is conditioned."""
        from safetensors.torch import save_file

        h = self.hparams
        before = set(directory.iterdir())
        self.tokenizer.save_pretrained(directory)
        self.gpt2.save_pretrained(directory)
        config = {"conditioning": h.conditioning, "no_repeat_ngram_size": h.no_repeat_ngram_size,
                  "max_new_tokens": h.max_new_tokens}
        if h.conditioning == "prompt":
            config["prompt"] = h.prompt
        else:
            config.update(clip=h.clip, normalize_features=h.normalize_features, image_fusion=h.image_fusion,
                          mapper={"kind": h.mapper, "clip_dim": self.clip.visual.output_dim,
                                  "embed_dim": self.mapper.embed_dim, "length": h.prefix_length,
                                  "layers": h.mapper_layers})
            save_file({k: v.detach().cpu().contiguous() for k, v in self.mapper.state_dict().items()},
                      directory / "prefix_mapper.safetensors")
        (directory / "storyteller.json").write_text(json.dumps(config, indent=1) + "\n")
        return sorted(set(directory.iterdir()) - before)

    def export_usage(self) -> str:
        if self.hparams.conditioning == "prompt":
            return """With transformers: GPT-2 tells a story after the prompt of `storyteller.json`
(the paper's conditioning: the images are not read).

```python
import json, torch
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained(".")
model = AutoModelForCausalLM.from_pretrained(".").eval()
config = json.load(open("storyteller.json"))
ids = tokenizer(config["prompt"], return_tensors="pt").input_ids
with torch.no_grad():
    out = model.generate(inputs_embeds=model.get_input_embeddings()(ids), attention_mask=torch.ones_like(ids),
                         do_sample=False, max_new_tokens=config["max_new_tokens"],
                         no_repeat_ngram_size=config["no_repeat_ngram_size"],
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
print(tokenizer.decode(out[0], skip_special_tokens=True).strip())
```"""
        return """GPT-2 with transformers; the prefix mapper (ClipCap's, `visiontales.models.storyteller.PrefixMapper`)
from safetensors; CLIP features from open_clip, through the project's loader (`storyteller.json` names the CLIP, the fusion and
the mapper's shape):

```python
import json, torch, torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from visiontales.backbones import load_clip
from visiontales.models.storyteller import PrefixMapper

config = json.load(open("storyteller.json"))
tokenizer = AutoTokenizer.from_pretrained(".")
gpt2 = AutoModelForCausalLM.from_pretrained(".").eval()
mapper = PrefixMapper(**config["mapper"]).eval()
mapper.load_state_dict(load_file("prefix_mapper.safetensors"))
clip = load_clip(config["clip"]).eval()
# three photos, preprocessed as CLIP expects: (3, 3, 224, 224)
with torch.no_grad():
    features = clip.encode_image(photos).float()
    if config["normalize_features"]:
        features = F.normalize(features, dim=-1)
    prefix = mapper(features.mean(0, keepdim=True)) if config["image_fusion"] == "mean" \\
        else mapper(features).reshape(1, -1, mapper.embed_dim)
    out = gpt2.generate(inputs_embeds=prefix, attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long),
                        do_sample=False, max_new_tokens=config["max_new_tokens"],
                        no_repeat_ngram_size=config["no_repeat_ngram_size"],
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
print(tokenizer.decode(out[0], skip_special_tokens=True).strip())
```"""

    # ------------------------------------------------------------------------------- hooks

    def setup(self, stage: str) -> None:
        """Decide what the data module serves: no images for "prompt" (the paper's prompt carries
        none), cached CLIP features for "prefix" with the cache on, image tensors otherwise."""
        super().setup(stage)
        datamodule = getattr(self._trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "attach_image_features"):
            return
        if self.clip is None:
            datamodule.drop_images()
        elif self.hparams.feature_cache:
            datamodule.attach_image_features(self.cached_features(datamodule, stage))

    def cached_features(self, datamodule, stage: str) -> Mapping[str, torch.Tensor]:
        """Frozen CLIP features of every photo the stage uses, from the cache or encoded once."""
        strategy = self.trainer.strategy
        self.clip.to(strategy.root_device)
        cache = FeatureCache(home() / "features", f"{fingerprint(self.clip)}/{datamodule.preprocessing_key}")
        return cache.get(datamodule.image_paths(stage), datamodule.load_photo,
                         lambda images: self.encode_images(images.unsqueeze(1).to(strategy.root_device))[:, 0],
                         num_workers=datamodule.hparams.num_workers,
                         rank=strategy.global_rank, world_size=strategy.world_size, barrier=strategy.barrier)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["texts"]))
        return loss

    def evaluation_step(self, batch: dict[str, Any], split: str) -> dict[str, Any]:
        self.log(f"{split}/loss", self.loss(batch), batch_size=len(batch["texts"]), sync_dist=True)
        stories = self.generate_stories(batch)
        self.split_metrics[split]["scores"].update(["/".join(p) for p in batch["photo_ids"]], stories,
                                                   batch["references"])
        return {"samples": [{"photos": " ".join(p), "generated": s, "reference": r[0]}
                            for p, s, r in zip(batch["photo_ids"], stories, batch["references"], strict=True)]}

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        stories = self.generate_stories(batch)
        return [{"story_id": sid, "photo_ids": p, "story": s, "references": r}
                for sid, p, s, r in zip(batch["story_id"], batch["photo_ids"], stories, batch["references"],
                                        strict=True)]
