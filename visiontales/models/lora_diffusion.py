"""LoRADiffusionVisualizer: the image side of SAGANets (shared/papers/saganets.md, sections 4.2-4.3).

A Stable Diffusion 1.5 UNet, VAE and CLIP text encoder, all frozen; LoRA adapters (peft, through
diffusers' `add_adapter`) on the attention projections learn to draw frame k+1 of a FlintstonesSV
story from caption k+1. Training follows diffusers' examples/text_to_image/train_text_to_image_lora.py:

    z_0 = VAE(x) * scaling_factor,  z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps,  L = || eps - eps_theta(z_t, t, c) ||^2

with optional noise offset, Min-SNR-gamma weighting (Hang et al. 2023; diffusers.training_utils.
compute_snr) and caption dropout for classifier-free guidance. The LoRA update is (alpha / r) B A;
at inference the strength is given as an alpha (the paper preferred 10 to its training alpha 32)
and applied as scale alpha_inf / alpha_train, leaving the trained weights untouched.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

from data_modules.flintstones import MAIN_CHARACTERS
from visiontales.backbones import load_stable_diffusion
from visiontales.evaluation import named_characters
from visiontales.models.common import TrainableWeightsCheckpoint

# one added token per main character, in the labels' order: <wilma>, <fred>, ..., <mr_slate>
CHARACTER_TOKENS = [f"<{name.lower().replace(' ', '_')}>" for name in MAIN_CHARACTERS]

PRECISION_DTYPES = {"bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16, "16-mixed": torch.float16,
                    "16-true": torch.float16, "bf16": torch.bfloat16, "16": torch.float16}


class LoRADiffusionVisualizer(TrainableWeightsCheckpoint):
    """Stable Diffusion with LoRA adapters that draws a story frame for its caption."""

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
        noise_offset: float = 0.0,
        snr_gamma: float | None = None,
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
            sd: Stable Diffusion: hub id, local diffusers-layout directory, or "tiny".
            lora_rank: r, the rank of the LoRA adapters.
            lora_alpha: LoRA alpha during training (the paper: 32); the update is (alpha / r) B A.
            target_modules: attention projections that get adapters (default to_q, to_k, to_v,
                the paper's; diffusers' example also adapts to_out.0).
            inference_lora_alpha: the alpha to draw with (the paper found 10 better than 32);
                applied as scale inference_lora_alpha / lora_alpha. Default: lora_alpha.
            resolution: side of the frames drawn by `generate` when no reference frame sets it.
            lr: AdamW learning rate for the adapters.
            weight_decay: AdamW weight decay.
            noise_offset: adds noise_offset * N(0, 1) per channel to the noise (0: off).
            snr_gamma: Min-SNR-gamma loss weighting (5.0 is the paper's suggestion; None: off).
            caption_dropout: probability of training on the empty caption (for classifier-free
                guidance at inference).
            character_tokens: add <wilma>, <fred>, ... to the text encoder's vocabulary and append
                the tokens of the characters present to every caption (annotated labels in
                training; the names a caption mentions at inference); their embeddings train with
                the adapters, the rest of the text encoder stays frozen.
            sampler: "ddim" or "dpm" (DPM-Solver++ multistep) for inference.
            num_inference_steps: denoising steps at inference.
            guidance_scale: classifier-free guidance scale (1.0: no guidance).
            cache: encode every frame with the VAE and every caption with the text encoder once
                (at setup) and train on the stored results, skipping both encoders afterwards.
            gradient_checkpointing: trade compute for memory in the UNet.
            val_samples: validation frames drawn each epoch, beside their ground truth, for
                fixed captions and seeds.
            seed: base seed of the validation noise and of the drawing seeds.
        """
        super().__init__()
        self.save_hyperparameters()
        self.sd = load_stable_diffusion(sd)
        self.sd.requires_grad_(False)
        from peft import LoraConfig

        self.sd.unet.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_alpha, init_lora_weights="gaussian",
                                            target_modules=list(target_modules or ["to_q", "to_k", "to_v"])))
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
        self.latent_cache: dict[str, torch.Tensor] = {}
        self.caption_cache: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------------------ encoders

    @property
    def lora_scale(self) -> float:
        alpha = self.hparams.inference_lora_alpha
        return 1.0 if alpha is None else alpha / self.hparams.lora_alpha

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
        tokenizer = self.sd.tokenizer
        ids = tokenizer(self.prompts(captions, characters), padding="max_length",
                        max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        with torch.set_grad_enabled(grad):
            return self.sd.text_encoder(input_ids=ids.to(self.device))[0]

    @torch.no_grad()
    def encode_frames(self, images: torch.Tensor) -> torch.Tensor:
        """VAE posterior parameters (mean and log-variance, (B, 2C, h, w)) of frames in [-1, 1]."""
        return self.sd.vae.encode(images.to(self.device, self.sd.vae.dtype)).latent_dist.parameters

    def sample_latents(self, posterior: torch.Tensor) -> torch.Tensor:
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        return DiagonalGaussianDistribution(posterior).sample() * self.sd.vae.config.scaling_factor

    def targets(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_0 latents (B, C, h, w), caption states (B, 77, D)) of frame k+1 of each story."""
        ks = batch["prefix_len"]
        captions = [texts[k] for texts, k in zip(batch["texts"], ks, strict=True)]
        if self.latent_cache:
            keys = [f"{clips[k]}#{int(frames[k])}" for clips, frames, k in
                    zip(batch["clip_ids"], batch["frame_index"], ks, strict=True)]
            posterior = torch.stack([self.latent_cache[key] for key in keys]).to(self.device)
        else:
            images = torch.stack([images[k] for images, k in zip(batch["images"], ks, strict=True)])
            posterior = self.encode_frames(images)
        characters = None
        if "characters" in batch:
            characters = torch.stack([chars[k] for chars, k in zip(batch["characters"], ks, strict=True)])
        if self.training and self.hparams.caption_dropout:
            keep = [random.random() >= self.hparams.caption_dropout for _ in captions]
            captions = [c if k else "" for c, k in zip(captions, keep, strict=True)]
            if characters is not None:
                characters = characters * torch.tensor(keep, dtype=characters.dtype)[:, None]
        if self.caption_cache:
            states = torch.stack([self.caption_cache[_text_key(c)] for c in captions]).to(self.device)
        else:
            states = self.encode_captions(captions, characters, grad=self.training and self.hparams.character_tokens)
        return self.sample_latents(posterior.float()), states

    # ---------------------------------------------------------------------------- training

    def diffusion_loss(self, latents: torch.Tensor, states: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """MSE between the UNet's prediction and the true noise (or velocity) at random timesteps."""
        scheduler = self.sd.noise_scheduler
        b, steps = latents.shape[0], scheduler.config.num_train_timesteps
        if generator is None:
            noise = torch.randn_like(latents)
            t = torch.randint(0, steps, (b,), device=latents.device)
        else:  # drawn on the CPU from the given generator: the same on every device and run
            noise = torch.randn(latents.shape, generator=generator).to(latents)
            t = torch.randint(0, steps, (b,), generator=generator).to(latents.device)
        if self.hparams.noise_offset:
            noise = noise + self.hparams.noise_offset * torch.randn((b, latents.shape[1], 1, 1), device=latents.device)
        noisy = scheduler.add_noise(latents, noise, t)
        if scheduler.config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, t)
        else:
            target = noise
        pred = self.sd.unet(noisy, t, encoder_hidden_states=states.to(noisy.dtype)).sample
        if self.hparams.snr_gamma is None:
            return F.mse_loss(pred.float(), target.float())
        from diffusers.training_utils import compute_snr

        snr = compute_snr(scheduler, t)
        weights = torch.minimum(snr, torch.full_like(snr, self.hparams.snr_gamma))
        weights = weights / snr if scheduler.config.prediction_type == "epsilon" else weights / (snr + 1)
        per_item = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return (per_item * weights).mean()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.diffusion_loss(*self.targets(batch))
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["texts"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # the same noise and timesteps every epoch, so val/loss curves compare like with like
        generator = torch.Generator().manual_seed(self.hparams.seed + batch_idx)
        loss = self.diffusion_loss(*self.targets(batch), generator=generator)
        self.log("val/loss", loss, batch_size=len(batch["texts"]), sync_dist=True)
        if batch_idx == 0 and self.hparams.val_samples and not self.trainer.sanity_checking:
            self.log_frames(batch)

    def log_frames(self, batch: dict[str, Any]) -> None:
        """Generated frames (top row) above their ground truth (bottom row), to TensorBoard."""
        n = min(self.hparams.val_samples, len(batch["texts"]))
        ks = batch["prefix_len"][:n]
        captions = [texts[k] for texts, k in zip(batch["texts"][:n], ks, strict=True)]
        truth = torch.stack([images[k] for images, k in zip(batch["images"][:n], ks, strict=True)]) \
            if "images" in batch else None
        size = truth.shape[-1] if truth is not None else self.hparams.resolution
        drawn = self.generate(captions, seeds=[self.hparams.seed + i for i in range(n)], size=size)
        rows = drawn if truth is None else torch.cat([drawn, truth.to(drawn)])
        experiment = getattr(self.logger, "experiment", None)
        if self.trainer.is_global_zero and hasattr(experiment, "add_image"):
            grid = make_grid((rows.float().clamp(-1, 1) + 1) / 2, nrow=n)
            experiment.add_image("val/frames", grid, global_step=self.global_step)
            experiment.add_text("val/frame_captions", "\n".join(f"{i}. {c}" for i, c in enumerate(captions)),
                                global_step=self.global_step)

    # ---------------------------------------------------------------------------- inference

    def inference_scheduler(self):
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

        cls = DDIMScheduler if self.hparams.sampler == "ddim" else DPMSolverMultistepScheduler
        return cls.from_config(self.sd.noise_scheduler.config)

    @torch.no_grad()
    def generate(self, captions: list[str], seeds: list[int], size: int | None = None,
                 lora_alpha: float | None = None, init_latents: torch.Tensor | None = None,
                 strength: float = 1.0, return_latents: bool = False):
        """Frames (N, 3, S, S) in [-1, 1] for the captions, one seed each (same seed, same frame).

        lora_alpha: draw with this alpha instead of `inference_lora_alpha` (0: the base model).
        init_latents, strength: start from these latents noised to `strength` of the schedule
            instead of from pure noise (img2img; used to carry a frame's look into the next).
        """
        scale = self.lora_scale if lora_alpha is None else lora_alpha / self.hparams.lora_alpha
        size = size or self.hparams.resolution
        scheduler = self.inference_scheduler()
        scheduler.set_timesteps(self.hparams.num_inference_steps, device=self.device)
        timesteps = scheduler.timesteps
        unet, vae = self.sd.unet, self.sd.vae
        shape = (unet.config.in_channels, size // self.vae_factor, size // self.vae_factor)
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
        noise = noise.to(self.device)
        if init_latents is not None and strength < 1.0:
            steps = min(int(len(timesteps) * strength), len(timesteps))
            timesteps = timesteps[len(timesteps) - steps:]
            latents = scheduler.add_noise(init_latents.to(self.device), noise, timesteps[:1].repeat(len(seeds)))
        else:
            latents = noise * scheduler.init_noise_sigma
        cond = self.encode_captions(captions)
        guided = self.hparams.guidance_scale > 1.0
        if guided:
            cond = torch.cat([self.encode_captions([""] * len(captions)), cond])
        for t in timesteps:
            model_input = torch.cat([latents] * 2) if guided else latents
            model_input = scheduler.scale_model_input(model_input, t)
            eps = unet(model_input.to(unet.dtype), t, encoder_hidden_states=cond.to(unet.dtype),
                       cross_attention_kwargs={"scale": scale}).sample.float()
            if guided:
                uncond, text = eps.chunk(2)
                eps = uncond + self.hparams.guidance_scale * (text - uncond)
            latents = scheduler.step(eps, t, latents).prev_sample
        images = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample.float().clamp(-1, 1)
        return (images, latents) if return_latents else images

    def latents_of(self, frames: torch.Tensor) -> torch.Tensor:
        """Latents (N, C, h, w) of given frames in [-1, 1], to continue from (`init_latents`)."""
        return self.sample_latents(self.encode_frames(frames).float())

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.sd.vae.config.block_out_channels) - 1)

    # ------------------------------------------------------------------------------- setup

    def setup(self, stage: str) -> None:
        """Frozen parts in the run's half precision (the adapters stay fp32); optional caches."""
        dtype = PRECISION_DTYPES.get(str(self.trainer.precision))
        if dtype is not None:
            from diffusers.training_utils import cast_training_params

            self.sd.to(dtype)
            cast_training_params(self.sd, dtype=torch.float32)
        datamodule = getattr(self._trainer, "datamodule", None)
        if self.hparams.cache and stage == "fit" and hasattr(datamodule, "frame_files"):
            self.fill_caches(datamodule, stage)

    def fill_caches(self, datamodule, stage: str) -> None:
        """Encode every frame (VAE) and caption (text encoder) of the stage once, on disk and in
        memory; the data module then stops decoding frames for training."""
        from visiontales.backbones import fingerprint, home
        from visiontales.feature_cache import FeatureCache

        strategy = self.trainer.strategy
        self.sd.vae.to(strategy.root_device)
        self.sd.text_encoder.to(strategy.root_device)
        vae_key = f"vae/{fingerprint(self.sd.vae)}/{datamodule.hparams.resolution}"
        self.latent_cache = FeatureCache(home() / "latents", vae_key).get(
            datamodule.frame_files(stage), datamodule.load_frame, self.encode_frames,
            num_workers=datamodule.hparams.num_workers, writer=self.trainer.is_global_zero, barrier=strategy.barrier)
        datamodule.drop_images(["train"])  # validation still shows its ground-truth frames
        if self.hparams.character_tokens:
            return  # the caption embeddings change as the character tokens train: nothing to cache
        captions = {c for split in datamodule.splits_for(stage) for story in datamodule.datasets[split].stories
                    for c in (datamodule.index.clips[clip].caption for clip in story)}
        if self.hparams.caption_dropout:
            captions.add("")
        text_key = f"text/{fingerprint(self.sd.text_encoder)}"
        texts = {_text_key(c): c for c in captions}
        self.caption_cache = FeatureCache(home() / "captions", text_key).get(
            dict.fromkeys(texts), lambda key, _: key, lambda keys: self.encode_captions([texts[k] for k in keys]),
            writer=self.trainer.is_global_zero, barrier=strategy.barrier)

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

    def configure_optimizers(self):
        return torch.optim.AdamW(self.trainable_parameters, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def configure_callbacks(self):
        from lightning.pytorch.callbacks import ModelCheckpoint

        return [ModelCheckpoint(monitor="val/loss", mode="min", save_last=True,
                                filename="epoch{epoch:02d}-loss{val/loss:.4f}", auto_insert_metric_name=False)]


def _text_key(caption: str) -> str:
    return hashlib.sha1(caption.encode()).hexdigest()[:20]
