"""LoRADiffusionVisualizer: the image side of SAGANets (the SAGANets paper, sections 4.2-4.3).

A Stable Diffusion 1.5 UNet, VAE and CLIP text encoder, all frozen; LoRA adapters on the attention
projections learn to draw frame k+1 of a FlintstonesSV story from caption k+1, with the diffusion
objective of visiontales.sd (noise offset, Min-SNR-gamma weighting and caption dropout for
classifier-free guidance as options). The LoRA update is (alpha / r) B A; at inference the strength
is given as an alpha (the paper preferred 10 to its training alpha 32) and applied as the scale
alpha_inf / alpha_train, leaving the trained weights untouched.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from visiontales.backbones import load_stable_diffusion
from visiontales.errors import VisionTalesError
from visiontales.feature_cache import FillingFeatures
from visiontales.sd import encode_latents
from visiontales.visualizer import Drawing, Visualizer
from visiontales.vocabulary import MAIN_CHARACTERS, named_characters

# one added token per main character, in the labels' order: <wilma>, <fred>, ..., <mr_slate>
CHARACTER_TOKENS = [f"<{name.lower().replace(' ', '_')}>" for name in MAIN_CHARACTERS]


class LoRADiffusionVisualizer(Visualizer, kind="lora_diffusion"):
    """Stable Diffusion with LoRA adapters that draws a story frame for its caption."""

    compile_targets = ("sd.unet",)

    def __init__(
        self,
        sd: str = "stable-diffusion-v1-5/stable-diffusion-v1-5",
        lora_rank: int = 4,
        lora_alpha: float = 32.0,
        target_modules: list[str] | None = None,
        inference_lora_alpha: float | None = None,
        resolution: int = 512,
        lr: float = 1e-4,
        weight_decay: float = 1e-2,
        lr_scheduler: Literal["constant", "linear", "cosine"] = "constant",
        lr_warmup_steps: int = 0,
        noise_offset: float = 0.0,
        snr_gamma: float | None = None,
        zero_terminal_snr: bool = False,
        caption_dropout: float = 0.0,
        character_tokens: bool = False,
        sampler: Literal["ddim", "dpm"] = "ddim",
        num_inference_steps: int = 30,
        guidance_scale: float = 7.5,
        cache: bool = False,
        gradient_checkpointing: bool = False,
        val_samples: int = 4,
        seed: int = 0,
    ) -> None:
        """
        Args:
            sd: Stable Diffusion: hub id, local diffusers-layout directory, "tiny" or "tiny-domain".
            lora_rank: r, the rank of the LoRA adapters.
            lora_alpha: LoRA alpha during training (the paper: 32); the update is (alpha / r) B A.
            target_modules: attention projections that get adapters (default to_q, to_k, to_v,
                the paper's; diffusers' example also adapts to_out.0).
            inference_lora_alpha: the alpha to draw with (the paper found 10 better than 32);
                applied as scale inference_lora_alpha / lora_alpha. Default: lora_alpha.
            resolution: side of the frames `generate` draws.
            lr: AdamW learning rate for the adapters.
            weight_decay: AdamW weight decay.
            lr_scheduler: the learning rate over the run, stepped every optimizer step (diffusers'
                `get_scheduler`, as in its LoRA training script): "constant", or falling from lr to
                0 at the run's last step, "linear" or "cosine".
            lr_warmup_steps: steps of linear warm-up from 0 to lr before the schedule (0: none).
            noise_offset: adds noise_offset * N(0, 1) per channel to the noise (0: off).
            snr_gamma: Min-SNR-gamma loss weighting (5.0 is the paper's suggestion; None: off).
            zero_terminal_snr: train and draw on the schedule rescaled to zero SNR at its last
                step, with trailing timesteps (`StableDiffusion.use_zero_terminal_snr`; v objective only).
            caption_dropout: probability of training on the empty caption (for classifier-free
                guidance at inference).
            character_tokens: add <wilma>, <fred>, ... to the text encoder's vocabulary and append
                the tokens of the characters present to every caption (annotated labels in
                training; the names a caption mentions at inference); their embeddings train with
                the adapters, the rest of the text encoder stays frozen.
            sampler: "ddim" or "dpm" (DPM-Solver++ multistep) for inference.
            num_inference_steps: denoising steps at inference.
            guidance_scale: classifier-free guidance scale (1.0: no guidance).
            cache: keep each frame's VAE posterior and each caption's text-encoder states on disk
                the first time training encodes them, and read them from there afterwards: the
                first epoch costs what an uncached one does, later epochs and runs skip the
                encoders (and the loader the decoding) for what is cached.
            gradient_checkpointing: trade compute for memory in the UNet.
            val_samples: validation frames drawn each epoch, beside their ground truth, for
                fixed captions and seeds.
            seed: base seed of the validation noise and of the drawing seeds.
        """
        super().__init__()
        self.save_hyperparameters()
        self.sd = load_stable_diffusion(sd)
        if zero_terminal_snr:
            self.sd.use_zero_terminal_snr()
        self.sd.add_lora(lora_rank, lora_alpha, target_modules or ["to_q", "to_k", "to_v"])
        if character_tokens:
            from peft import TrainableTokensConfig, get_peft_model

            self.sd.tokenizer.add_tokens(CHARACTER_TOKENS)
            self.sd.text_encoder.resize_token_embeddings(len(self.sd.tokenizer), mean_resizing=False)
            ids = self.sd.tokenizer.convert_tokens_to_ids(CHARACTER_TOKENS)
            # only these rows train; they replace the (frozen, random) rows of the resized embedding
            self.sd.text_encoder = get_peft_model(
                self.sd.text_encoder, TrainableTokensConfig(target_modules=["token_embedding"], token_indices=ids))
        if gradient_checkpointing:
            self.sd.unet.enable_gradient_checkpointing()
        # a list, not a one-shot iterator: the optimizer, gradient clipping and casts all see them
        self.trainable_parameters = [p for p in self.sd.parameters() if p.requires_grad]
        self.latent_cache: FillingFeatures | None = None
        self.caption_cache: FillingFeatures | None = None

    # ------------------------------------------------------------------------------ encoders

    def lora_scale(self, lora_alpha: float | None = None) -> float:
        """The adapters' scale for drawing at `lora_alpha` (default: inference_lora_alpha)."""
        h = self.hparams
        alpha = lora_alpha if lora_alpha is not None else h.inference_lora_alpha
        return 1.0 if alpha is None else alpha / h.lora_alpha

    @property
    def default_lora_alpha(self) -> float:
        h = self.hparams
        return h.inference_lora_alpha if h.inference_lora_alpha is not None else h.lora_alpha

    def prompts(self, captions: list[str], characters: torch.Tensor | None = None) -> list[str]:
        """The text the encoder reads: the caption, then the character tokens if they are on
        (from `characters` (B, 7) labels, or else from the names each caption mentions)."""
        if not self.hparams.character_tokens:
            return list(captions)
        flags = named_characters(captions) if characters is None else characters
        return [" ".join([c, *(t for t, on in zip(CHARACTER_TOKENS, row.tolist(), strict=True) if on)]).strip()
                for c, row in zip(captions, flags, strict=True)]

    def encode_captions(self, captions: list[str], characters: torch.Tensor | None = None,
                        grad: bool = False) -> torch.Tensor:
        """CLIP text encoder hidden states (B, 77, D) for the captions (see `prompts`)."""
        return self.sd.encode_prompts(self.prompts(captions, characters), grad=grad)

    def targets(self, batch: dict[str, Any], generator: torch.Generator | list[torch.Generator] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_0 latents (B, C, h, w), caption states (B, 77, D)) of frame k+1 of each story; the
        latents are drawn from the VAE posterior with `generator` when given."""
        ks = batch["prefix_len"]
        captions = [texts[k] for texts, k in zip(batch["texts"], ks, strict=True)]
        if self.latent_cache is not None:
            keys = [f"{clips[k]}#{int(frames[k])}" for clips, frames, k in
                    zip(batch["clip_ids"], batch["frame_index"], ks, strict=True)]
            posterior = self.cached_posteriors(keys, batch)
        else:
            posterior = self.sd.encode_frames(target_frames(batch))
        characters = None
        if "characters" in batch:
            characters = torch.stack([chars[k] for chars, k in zip(batch["characters"], ks, strict=True)])
        if self.training and self.hparams.caption_dropout:
            keep = [random.random() >= self.hparams.caption_dropout for _ in captions]
            captions = [c if k else "" for c, k in zip(captions, keep, strict=True)]
            if characters is not None:
                characters = characters * torch.tensor(keep, dtype=characters.dtype)[:, None]
        if self.caption_cache is not None:
            states = self.caption_cache.fetch([_text_key(c) for c in captions],
                                              lambda missing: self.encode_captions([captions[i] for i in missing]))
            states = states.to(self.device)
        else:
            states = self.encode_captions(captions, characters, grad=self.training and self.hparams.character_tokens)
        return self.sd.latents(posterior, generator), states

    def cached_posteriors(self, keys: list[str], batch: dict[str, Any]) -> torch.Tensor:
        """VAE posteriors of the batch's target frames (named by `keys`) from the latent cache;
        those not cached yet are encoded from the batch's frames and added to it."""
        def encode(missing: list[int]) -> torch.Tensor:
            frames = target_frames(batch, missing)
            if frames is None:
                raise VisionTalesError(f"latent cache {self.latent_cache.cache.root}: {keys[missing[0]]} is no "
                                       "longer cached and the loader did not serve its frame (was the cache "
                                       "deleted during the run?)")
            return self.sd.encode_frames(frames)

        return self.latent_cache.fetch(keys, encode).to(self.device)

    def diffusion_loss(self, batch: dict[str, Any], generator: torch.Generator | list[torch.Generator] | None = None
                       ) -> torch.Tensor:
        """The diffusion objective on frame k+1 of each story (every draw from `generator` if given,
        or story i's from generator[i])."""
        h = self.hparams
        return self.sd.diffusion_loss(*self.targets(batch, generator), generator=generator,
                                      noise_offset=h.noise_offset, snr_gamma=h.snr_gamma)

    # ---------------------------------------------------------------------------- training

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.diffusion_loss(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["texts"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # each story's latents, noise and timesteps drawn from its own seed: the same every epoch and
        # run, whatever the batch or rank it lands in, so val/loss compares like with like
        generators = [torch.Generator().manual_seed(self.item_seed(self.hparams.seed, story_id))
                      for story_id in batch["story_id"]]
        loss = self.diffusion_loss(batch, generators)
        self.log("val/loss", loss, batch_size=len(batch["texts"]), sync_dist=True)
        if batch_idx == 0 and self.hparams.val_samples and not self.trainer.sanity_checking:
            self.log_frames(batch)

    def log_frames(self, batch: dict[str, Any]) -> None:
        """Frames drawn for the first captions (top row) above their ground truth (bottom row)."""
        n = min(self.hparams.val_samples, len(batch["texts"]))
        ks = batch["prefix_len"][:n]
        captions = [texts[k] for texts, k in zip(batch["texts"][:n], ks, strict=True)]
        drawn = self.generate(captions, seeds=[self.hparams.seed + i for i in range(n)]).frames
        truth = None
        if "target_image" in batch or "images" in batch:
            truth = target_frames(batch)[:n]
            truth = F.interpolate(truth.float(), size=drawn.shape[-2:], mode="bilinear", antialias=True)
        self.log_frame_grid(drawn, truth, n, captions)

    # ---------------------------------------------------------------------------- inference

    @torch.no_grad()
    def generate(self, captions: list[str], seeds: list[int], *, previous: torch.Tensor | None = None,
                 strength: float = 1.0, lora_alpha: float | None = None) -> Drawing:
        """Frames for the captions by the denoising loop (visiontales.sd), with classifier-free
        guidance; `previous` latents re-noised to `strength` of the schedule (img2img) carry a
        frame's look into the next; `lora_alpha` 0 draws with the base model. The adapters are
        merged into the UNet for the loop (`StableDiffusion.merged_lora`)."""
        h = self.hparams
        noise = self.seeded_noise(self.sd.latent_shape(self.resolution), seeds, self.device)
        guided = h.guidance_scale > 1.0
        states = self.encode_captions([""] + captions if guided else captions)
        uncond, states = (states[:1], states[1:]) if guided else (None, states)
        with self.sd.merged_lora(self.lora_scale(lora_alpha)):
            latents = self.sd.sample(states, noise, num_steps=h.num_inference_steps, sampler=h.sampler,
                                     guidance_scale=h.guidance_scale, uncond=uncond, init_latents=previous,
                                     strength=strength)
        return Drawing(self.sd.decode(latents), latents)

    @torch.no_grad()
    def latents_of(self, frames: torch.Tensor) -> torch.Tensor:
        """Latents (N, C, h, w) of given frames: the VAE posterior mean, scaled."""
        return encode_latents(self.sd.vae, frames)

    # ------------------------------------------------------------------------------- setup

    def setup(self, stage: str) -> None:
        """Frozen parts in the run's half precision (the adapters stay fp32); optional caches."""
        super().setup(stage)
        self.sd.cast_frozen(str(self.trainer.precision))
        datamodule = getattr(self._trainer, "datamodule", None)
        if hasattr(datamodule, "serve_target_frames"):
            datamodule.serve_target_frames()  # frame k+1 is all this model reads
        if self.hparams.cache and stage == "fit" and hasattr(datamodule, "frame_files"):
            self.open_caches(datamodule, stage)
            # training frames the cache holds are not decoded (validation still shows its frames)
            datamodule.serve_target_frames(["train"], cached=self.latent_cache.present)

    def open_caches(self, datamodule, stage: str) -> None:
        """Open the disk caches (visiontales.feature_cache, fp16) of the stage's frames (VAE
        posteriors) and captions (text-encoder states), filled as training encodes them. Each
        process (DDP) adds what it encodes; a later run finds what any run added."""
        from visiontales.backbones import fingerprint, home
        from visiontales.feature_cache import FeatureCache

        device = self.trainer.strategy.root_device
        self.sd.vae.to(device)
        self.sd.text_encoder.to(device)
        vae_key = f"vae/{fingerprint(self.sd.vae)}/{datamodule.hparams.resolution}"
        # posterior means and log-variances (8 x 64 x 64 at 512 px: 64 KiB a frame)
        self.latent_cache = FeatureCache(home() / "latents", vae_key, dtype=torch.float16).filling(
            datamodule.frame_files(stage))
        if self.hparams.character_tokens:
            return  # the caption embeddings change as the character tokens train: nothing to cache
        captions = {c for split in datamodule.splits_for(stage) for story in datamodule.datasets[split].stories
                    for c in (datamodule.index.clips[clip].caption for clip in story)}
        if self.hparams.caption_dropout:
            captions.add("")
        text_key = f"text/{fingerprint(self.sd.text_encoder)}"
        self.caption_cache = FeatureCache(home() / "captions", text_key, dtype=torch.float16).filling(
            dict.fromkeys(_text_key(c) for c in captions))

    def export_lora(self, directory: str | Path) -> Path:
        """Write the adapters as diffusers' `pytorch_lora_weights.safetensors` (with their LoRA
        config, so alpha / r survives), which `StableDiffusionPipeline.load_lora_weights` reads.
        Character-token embeddings, if trained, are not part of that format and stay in the
        checkpoint."""
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        unet = self.sd.unet
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        layers = {k: v.detach().float().cpu().contiguous() for k, v in layers.items()}
        StableDiffusionPipeline.save_lora_weights(Path(directory), unet_lora_layers=layers, safe_serialization=True,
                                                  unet_lora_adapter_metadata=unet.peft_config["default"].to_dict())
        return Path(directory) / "pytorch_lora_weights.safetensors"

    def export(self, directory: Path) -> list[Path]:
        return [self.export_lora(directory)]

    def export_usage(self) -> str:
        h = self.hparams
        scale = self.lora_scale()
        # the schedule it was trained on (use_zero_terminal_snr), which the hub folder's config lacks
        schedule = ', rescale_betas_zero_snr=True, timestep_spacing="trailing"' if h.zero_terminal_snr else ""
        tokens = ("\n\nThe character-token embeddings this model trained are not part of diffusers' LoRA format; "
                  "they stay in the checkpoint." if h.character_tokens else "")
        return f"""With diffusers, over the base Stable Diffusion (`{self.sd.source}`):

```python
from diffusers import DDIMScheduler, StableDiffusionPipeline

pipe = StableDiffusionPipeline.from_pretrained("{self.sd.source}", safety_checker=None, requires_safety_checker=False)
pipe.load_lora_weights(".")  # pytorch_lora_weights.safetensors
pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config{schedule})
frame = pipe("Fred and Barney are talking in the quarry.", height={h.resolution}, width={h.resolution},
             num_inference_steps={h.num_inference_steps}, guidance_scale={h.guidance_scale},
             cross_attention_kwargs={{"scale": {scale:g}}}).images[0]  # inference alpha {h.inference_lora_alpha} / training alpha {h.lora_alpha}
```{tokens}"""

    def configure_optimizers(self):
        from diffusers.optimization import get_scheduler

        h = self.hparams
        optimizer = torch.optim.AdamW(self.trainable_parameters, lr=h.lr, weight_decay=h.weight_decay)
        if h.lr_scheduler == "constant" and not h.lr_warmup_steps:
            return optimizer
        name = "constant_with_warmup" if h.lr_scheduler == "constant" else h.lr_scheduler
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=h.lr_warmup_steps,
                                  num_training_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def target_frames(batch: dict[str, Any], stories: list[int] | None = None) -> torch.Tensor | None:
    """The frame of step k+1 of each story (B, 3, R, R), or of the `stories` given: `target_image`
    when the data module serves only that frame, else picked from the five `images`; None if the
    batch lacks one of them."""
    stories = range(len(batch["prefix_len"])) if stories is None else stories
    if "target_image" in batch:
        frames = [batch["target_image"][i] for i in stories]
    elif "images" in batch:
        frames = [batch["images"][i][batch["prefix_len"][i]] for i in stories]
    else:
        return None
    return None if any(f is None for f in frames) else torch.stack(frames)


def _text_key(caption: str) -> str:
    return hashlib.sha1(caption.encode()).hexdigest()[:20]
