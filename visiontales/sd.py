"""The one Stable Diffusion toolkit: every visualizer that uses Stable Diffusion, and the bootstrap
that pretrains the tiny-domain UNet, go through `StableDiffusion` here.

It holds the components SAGANets uses (UNet, VAE, CLIP text encoder with its tokenizer, and the DDPM
training schedule) and what is done with them: LoRA adapters on chosen attention projections,
half-precision casts of the frozen parts, caption encoding, VAE encoding and latent scaling, the
training objective and the denoising loop. Formulas follow diffusers' text-to-image LoRA example
(examples/text_to_image/train_text_to_image_lora.py) and its schedulers:

    z_0 = VAE(x) * scaling_factor,   z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps,
    L = || target - f_theta(z_t, t, c) ||^2,   target = eps | v = sqrt(a_t) eps - sqrt(1 - a_t) z_0 | z_0

by the scheduler's `prediction_type` (epsilon, v_prediction, sample), with Min-SNR-gamma weighting
(Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy") as an option.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from visiontales.errors import VisionTalesError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# the run precisions under which frozen parts are kept in half precision (adapters stay fp32)
HALF_PRECISIONS = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
SAMPLERS = ("ddim", "dpm")


def input_for(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`x` on the device and in the dtype of the module's first parameter (the frozen base
    weights', in the run's half precision under `StableDiffusion.cast_frozen`). diffusers'
    `ModelMixin.dtype` and `.device` give the same but walk every submodule for casting hooks
    first: 2.4 ms a call on the tiny UNet with adapters, 1% of a tiny training step."""
    weight = next(module.parameters())
    return x.to(weight.device, weight.dtype)


@torch.no_grad()
def reconstruct(vae: nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """Frames (N, 3, H, W) in [-1, 1] encoded by the VAE (posterior mean) and decoded back."""
    return vae.decode(vae.encode(input_for(vae, frames)).latent_dist.mean).sample.float().clamp(-1, 1).to(frames.device)


def encode_latents(vae: nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """Scaled latents (the posterior mean times the scaling factor, unit variance on the data it was
    measured on) of frames in [-1, 1], differentiable with respect to the frames when gradients
    are on; takes a VAE alone, as the GAN family's coherence loss uses one without the rest."""
    return vae.encode(input_for(vae, frames)).latent_dist.mean.float() * vae.config.scaling_factor


class StableDiffusion(nn.Module):
    """UNet, VAE and CLIP text encoder as one module, with the tokenizer and the DDPM noise
    scheduler (the training schedule) alongside."""

    def __init__(self, unet, vae, text_encoder, tokenizer, noise_scheduler, source: str = "") -> None:
        super().__init__()
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.tokenizer, self.noise_scheduler = tokenizer, noise_scheduler
        self.source = source  # the hub id or directory it was loaded from
        prediction = noise_scheduler.config.prediction_type
        if prediction not in PREDICTION_TYPES:
            raise VisionTalesError(f"{source or 'Stable Diffusion'}: scheduler prediction_type '{prediction}' is "
                                   f"not one of {', '.join(PREDICTION_TYPES)}")

    @classmethod
    def from_pretrained(cls, source: str) -> StableDiffusion:
        """The components of a diffusers-layout directory or hub repository (unet/, vae/,
        text_encoder/, tokenizer/, scheduler/)."""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        return cls(UNet2DConditionModel.from_pretrained(source, subfolder="unet"),
                   AutoencoderKL.from_pretrained(source, subfolder="vae"),
                   CLIPTextModel.from_pretrained(source, subfolder="text_encoder"),
                   CLIPTokenizer.from_pretrained(source, subfolder="tokenizer"),
                   DDPMScheduler.from_pretrained(source, subfolder="scheduler"), source)

    def use_zero_terminal_snr(self) -> None:
        """Train and draw on the noise schedule rescaled to zero SNR at its last step, with trailing
        timesteps (Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed",
        2024): the training noise at t = T then hides the frame entirely, as the sampler's pure
        noise does, instead of leaving its low frequencies (the layout) for the UNet to read.
        Needs the v objective (epsilon is undefined at zero SNR)."""
        from diffusers import DDPMScheduler

        config = self.noise_scheduler.config
        if config.prediction_type != "v_prediction":
            raise VisionTalesError(f"{self.source or 'Stable Diffusion'}: zero terminal SNR needs prediction_type "
                                   f"'v_prediction', its scheduler has '{config.prediction_type}'")
        self.noise_scheduler = DDPMScheduler.from_config(config, rescale_betas_zero_snr=True,
                                                         timestep_spacing="trailing")

    # ------------------------------------------------------------------------ adapters, precision

    def add_lora(self, rank: int, alpha: float, target_modules: list[str]) -> None:
        """Freeze everything, then add trainable LoRA adapters (peft, through diffusers'
        `add_adapter`) to the UNet's `target_modules`; the update is (alpha / rank) B A."""
        from peft import LoraConfig

        self.requires_grad_(False)
        self.unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                         target_modules=list(target_modules)))

    def cast_frozen(self, precision: str) -> None:
        """Under a half-precision run (`bf16-mixed`, `16-mixed`), put the frozen weights in that
        precision and keep the trainable ones (adapters, trained tokens) in fp32, as diffusers'
        `cast_training_params`; other precisions leave everything as it is. Called from a
        module's `setup`: Lightning's mixed-precision plugins and strategies move modules between
        devices but keep their dtypes, so the cast holds for the run."""
        dtype = HALF_PRECISIONS.get(precision)
        if dtype is None:
            return
        from diffusers.training_utils import cast_training_params

        self.to(dtype)
        cast_training_params(self, dtype=torch.float32)

    # ------------------------------------------------------------------------------- encoders

    def encode_prompts(self, prompts: list[str], grad: bool = False) -> torch.Tensor:
        """Text encoder hidden states (B, 77, D), padded to the tokenizer's maximum length."""
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        with torch.set_grad_enabled(grad):
            return self.text_encoder(input_ids=ids.to(self.text_encoder.device))[0]

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """VAE posterior parameters (mean and log-variance, (B, 2C, h, w)) of frames in [-1, 1]."""
        return self.vae.encode(input_for(self.vae, frames)).latent_dist.parameters

    def latents(self, posterior: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None = None
                ) -> torch.Tensor:
        """Scaled latents z_0 (B, C, h, w) drawn from posterior parameters (`encode_frames`), from
        `generator` when given (or item i's from generator[i]), so that the draw repeats. The
        posterior mean: `encode_latents`."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        if isinstance(generator, list):
            return torch.cat([self.latents(p[None], g) for p, g in zip(posterior, generator, strict=True)])
        return DiagonalGaussianDistribution(posterior.float()).sample(generator=generator) * self.vae.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Frames (B, 3, H, W) in [-1, 1] from scaled latents (gradients flow when enabled)."""
        frames = self.vae.decode(input_for(self.vae, latents / self.vae.config.scaling_factor)).sample
        return frames.float().clamp(-1, 1)

    @property
    def vae_factor(self) -> int:
        """How many pixels one latent spans per side (8 for SD 1.5's VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def latent_shape(self, size: int) -> tuple[int, int, int]:
        """(C, h, w) of the latents of a size x size frame."""
        return self.unet.config.in_channels, size // self.vae_factor, size // self.vae_factor

    # ------------------------------------------------------------------------------ objective

    def predict(self, noisy: torch.Tensor, t: torch.Tensor, states: torch.Tensor,
                lora_scale: float | None = None) -> torch.Tensor:
        """The UNet's output f_theta(z_t, t, c) (in fp32), adapters scaled by `lora_scale`."""
        kwargs = {} if lora_scale is None else {"cross_attention_kwargs": {"scale": lora_scale}}
        return self.unet(input_for(self.unet, noisy), t, encoder_hidden_states=input_for(self.unet, states),
                         **kwargs).sample.float()

    def target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the UNet learns to output at z_t = add_noise(latents, noise, t)."""
        prediction = self.noise_scheduler.config.prediction_type
        if prediction == "epsilon":
            return noise
        if prediction == "v_prediction":
            return self.noise_scheduler.get_velocity(latents, noise, t)
        return latents  # "sample"

    def clean_latents(self, output: torch.Tensor, noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The z_0 that the UNet's `output` at (z_t, t) implies, by the prediction type:
        (z_t - sqrt(1 - a_t) eps) / sqrt(a_t), sqrt(a_t) z_t - sqrt(1 - a_t) v, or the output itself."""
        a = self.noise_scheduler.alphas_cumprod.to(noisy.device)[t].float().view(-1, 1, 1, 1)
        prediction = self.noise_scheduler.config.prediction_type
        if prediction == "epsilon":
            return (noisy - (1 - a).sqrt() * output) / a.sqrt()
        if prediction == "v_prediction":
            return a.sqrt() * noisy - (1 - a).sqrt() * output
        return output

    def diffusion_loss(self, latents: torch.Tensor, states: torch.Tensor,
                       generator: torch.Generator | list[torch.Generator] | None = None,
                       noise_offset: float = 0.0, snr_gamma: float | None = None) -> torch.Tensor:
        """MSE between the UNet's output and its target at random timesteps.

        generator: draw noise, timesteps and noise offset from it (on the CPU, so the draw is the
            same on every device and run), or each item's from its own (a list: the same draw
            whatever the batch an item lands in, on one process or several); None: from the global RNG.
        noise_offset: adds noise_offset * N(0, 1) per channel to the noise.
        snr_gamma: Min-SNR-gamma weighting; None: plain mean.
        """
        b, c, steps = latents.shape[0], latents.shape[1], self.noise_scheduler.config.num_train_timesteps
        if generator is None:
            noise = torch.randn_like(latents)
            t = torch.randint(0, steps, (b,), device=latents.device)
            offset = torch.randn((b, c, 1, 1), device=latents.device) if noise_offset else None
        else:
            # one generator for the batch, or one per item
            parts = [(g, 1) for g in generator] if isinstance(generator, list) else [(generator, b)]
            if sum(n for _, n in parts) != b:
                raise ValueError(f"{len(parts)} generators for a batch of {b}")
            draws = [(torch.randn((n, *latents.shape[1:]), generator=g), torch.randint(0, steps, (n,), generator=g),
                      torch.randn((n, c, 1, 1), generator=g) if noise_offset else None) for g, n in parts]
            noise = torch.cat([d[0] for d in draws]).to(latents)
            t = torch.cat([d[1] for d in draws]).to(latents.device)
            offset = torch.cat([d[2] for d in draws]).to(latents) if noise_offset else None
        if offset is not None:
            noise = noise + noise_offset * offset
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        output, target = self.predict(noisy, t, states), self.target(latents, noise, t).float()
        if snr_gamma is None:
            return F.mse_loss(output, target)
        from diffusers.training_utils import compute_snr

        snr = compute_snr(self.noise_scheduler, t)
        weights = torch.minimum(snr, torch.full_like(snr, snr_gamma))
        prediction = self.noise_scheduler.config.prediction_type
        weights = weights / snr if prediction == "epsilon" else weights / (snr + 1) if prediction == "v_prediction" \
            else weights
        return (F.mse_loss(output, target, reduction="none").mean(dim=(1, 2, 3)) * weights).mean()

    # ------------------------------------------------------------------------------- sampling

    def inference_scheduler(self, sampler: Literal["ddim", "dpm"]):
        """A fresh DDIM or DPM-Solver++ scheduler on the training schedule (schedulers keep state)."""
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

        if sampler not in SAMPLERS:
            raise VisionTalesError(f"sampler must be one of {', '.join(SAMPLERS)}, got '{sampler}'")
        cls = DDIMScheduler if sampler == "ddim" else DPMSolverMultistepScheduler
        return cls.from_config(self.noise_scheduler.config)

    @contextmanager
    def merged_lora(self, scale: float) -> Iterator[None]:
        """Inference with the UNet's adapters merged into its weights at `scale` (diffusers'
        `fuse_lora`): one matmul per adapted projection instead of three. The base weights are
        restored bit for bit afterwards, in any precision; without adapters, nothing changes."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in self.unet.modules() if isinstance(m, BaseTunerLayer)]
        saved = [layer.get_base_layer().weight.detach().clone() for layer in layers]
        try:
            for layer in layers:
                layer.scale_layer(scale)
                layer.merge()
            yield
        finally:
            for layer, weight in zip(layers, saved, strict=True):
                if layer.merged:
                    layer.unmerge()  # clears peft's merged state; the copy below makes the weights exact
                layer.get_base_layer().weight.data.copy_(weight)
                layer.unscale_layer()  # back to alpha / r

    @torch.no_grad()
    def sample(self, states: torch.Tensor, noise: torch.Tensor, *, num_steps: int, sampler: Literal["ddim", "dpm"],
               guidance_scale: float = 1.0, uncond: torch.Tensor | None = None, lora_scale: float | None = None,
               init_latents: torch.Tensor | None = None, strength: float = 1.0) -> torch.Tensor:
        """The denoising loop: clean latents (N, C, h, w) for text states (N, 77, D).

        noise: the starting noise (N, C, h, w), one draw per frame.
        guidance_scale, uncond: classifier-free guidance against the empty prompt's states
            (1, 77, D; encoded here when not given), eps = eps_u + s (eps_c - eps_u), both halves
            in one UNet batch; s <= 1 draws unguided.
        lora_scale: the adapters' strength (1: as trained, 0: the base model).
        init_latents, strength: img2img: start from `init_latents` noised to `strength` of the
            schedule (1: pure noise, as without them), denoising only that last part.
        """
        scheduler = self.inference_scheduler(sampler)
        scheduler.set_timesteps(num_steps, device=noise.device)
        timesteps = scheduler.timesteps
        if init_latents is not None and strength < 1.0:
            timesteps = timesteps[len(timesteps) - max(1, int(len(timesteps) * strength)):]
            latents = scheduler.add_noise(init_latents.to(noise), noise, timesteps[:1].repeat(len(noise)))
        else:
            latents = noise * scheduler.init_noise_sigma
        guided = guidance_scale > 1.0
        if guided:
            uncond = self.encode_prompts([""]) if uncond is None else uncond
            states = torch.cat([uncond.expand(len(states), -1, -1).to(states), states])
        for t in timesteps:
            model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if guided else latents, t)
            output = self.predict(model_input, t, states, lora_scale)
            if guided:
                output_uncond, output_text = output.chunk(2)
                output = output_uncond + guidance_scale * (output_text - output_uncond)
            latents = scheduler.step(output, t, latents).prev_sample
        return latents
