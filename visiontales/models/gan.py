"""GANVisualizer: the alternative approaches of SAGANets (the SAGANets paper, sections 4.4 and 5.2).

One module, four approaches that differ only in their loss weights:

    L_G = lambda_adv L_adv + lambda_img L_img + lambda_clip L_clip + lambda_char L_char + lambda_coher L_coher

each term normalised as in visiontales.losses, so that every lambda weighs a term of order one
(each term's share of L_G is logged as `train/share_<term>`).

- GAN (experiments/gan.yaml): adversarial + L1 + CLIP + character, the paper's best alternative;
- CLIP-centric (clip_centric.yaml): no discriminator, L2 + CLIP + character;
- temporal coherence (temporal_coherence.yaml): no discriminator, L2 + coherence;
- combined (combined.yaml): all five terms.

A story is the unit: G draws all five frames of a FlintstonesSV story from their captions, so the
consecutive-frame terms (character persistence, latent coherence) see whole stories.

Generator: "conv", a DCGAN-style network from (z, caption embedding) for 64-128 px, or "sd_lora",
the paper's: a Stable Diffusion UNet with LoRA adapters that denoises pure noise in one step (the
clean latent its output implies at t = T, by the scheduler's prediction type) and the frozen VAE
decodes. Discriminator: a
convolutional projection discriminator (Miyato & Koyama 2018) on the frame and the caption
embedding, spectral norm optional. Caption embeddings and the CLIP loss use the project's CLIP.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from visiontales import losses
from visiontales.backbones import clip_preprocessing, load_clip, load_stable_diffusion, load_vae
from visiontales.errors import VisionTalesError
from visiontales.sd import StableDiffusion, encode_latents
from visiontales.visualizer import Drawing, Visualizer


def _sn(module: nn.Module, on: bool) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(module) if on else module


class PatchEmbedding(nn.Conv2d):
    """A ViT's patch embedding (a convolution whose stride is its kernel, no padding) computed as one
    matrix product over the image's patches: the same numbers, and the gradient with respect to the
    image (what the CLIP and character losses send back to G) about 4x faster on the CPU than
    oneDNN's strided-convolution backward (12 ms against 50 ms for 10 frames at 224 px, 2 cores)."""

    @classmethod
    def replacing(cls, conv: nn.Conv2d) -> nn.Conv2d:
        """conv itself unless it is a non-overlapping patch embedding; else the same weights as this class."""
        if conv.stride != conv.kernel_size or conv.padding != (0, 0) or conv.groups != 1 or conv.dilation != (1, 1):
            return conv
        patches = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, bias=conv.bias is not None,
                      device="meta")
        patches.weight, patches.bias = conv.weight, conv.bias
        return patches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (n, c, h, w) = self.kernel_size, x.shape
        gh, gw = h // kh, w // kw
        x = x[:, :, :gh * kh, :gw * kw]  # as the convolution: a partial patch at the border is dropped
        patches = x.reshape(n, c, gh, kh, gw, kw).permute(0, 2, 4, 1, 3, 5).reshape(n, gh * gw, c * kh * kw)
        out = F.linear(patches, self.weight.reshape(self.out_channels, -1), self.bias)
        return out.transpose(1, 2).reshape(n, self.out_channels, gh, gw)


class ConvGenerator(nn.Module):
    """(z (N, Z), caption embedding (N, E)) -> frame (N, 3, R, R) in [-1, 1]; R a power of two >= 16."""

    def __init__(self, z_dim: int, cond_dim: int, resolution: int, width: int = 64) -> None:
        super().__init__()
        ups = int(math.log2(resolution)) - 2  # 4x4 -> R x R
        channels = [width * 2 ** min(ups - i, 3) for i in range(ups + 1)]
        self.start = channels[0]
        self.project = nn.Linear(z_dim + cond_dim, channels[0] * 16)
        blocks = []
        for c_in, c_out in zip(channels, channels[1:], strict=False):
            blocks += [nn.Upsample(scale_factor=2), nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True)]
        self.body = nn.Sequential(nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True), *blocks,
                                  nn.Conv2d(channels[-1], 3, 3, padding=1), nn.Tanh())

    def forward(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.project(torch.cat([z, cond], dim=1)).view(len(z), self.start, 4, 4)
        return self.body(h)


class SDOneStepGenerator(nn.Module):
    """A Stable Diffusion UNet with LoRA adapters on q, k, v that denoises pure noise z_T in one
    step; the frozen VAE decodes the clean latent the UNet's output implies."""

    def __init__(self, sd: StableDiffusion, lora_rank: int, lora_alpha: float) -> None:
        super().__init__()
        self.sd = sd
        sd.add_lora(lora_rank, lora_alpha, ["to_q", "to_k", "to_v"])
        self.t = sd.noise_scheduler.config.num_train_timesteps - 1

    def forward(self, z: torch.Tensor, text_states: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        t = torch.full((len(z),), self.t, device=z.device)
        return self.sd.decode(self.sd.clean_latents(self.sd.predict(z, t, text_states, scale), z, t))


class ProjectionDiscriminator(nn.Module):
    """D(x, c) = w . h(x) + <embed(c), h(x)>, h a strided conv net pooled over space."""

    def __init__(self, cond_dim: int, resolution: int, width: int = 64, spectral_norm: bool = True) -> None:
        super().__init__()
        layers, c_in = [], 3
        for i in range(int(math.log2(resolution)) - 2):  # R -> 4
            c_out = width * 2 ** min(i, 3)
            layers += [_sn(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), spectral_norm), nn.LeakyReLU(0.2, True)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.linear = _sn(nn.Linear(c_in, 1), spectral_norm)
        self.embed = _sn(nn.Linear(cond_dim, c_in), spectral_norm)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.features(x).sum(dim=(2, 3))  # (N, C)
        return self.linear(h).squeeze(1) + (self.embed(cond) * h).sum(dim=1)


class GANVisualizer(Visualizer, kind="gan"):
    """Draws the frames of a story from its captions; trained adversarially and/or by direct losses."""

    def __init__(
        self,
        generator: Literal["conv", "sd_lora"] = "conv",
        clip: str = "ViT-B-32-quickgelu@openai",
        sd: str = "stable-diffusion-v1-5/stable-diffusion-v1-5",
        resolution: int = 64,
        z_dim: int = 128,
        width: int = 64,
        lora_rank: int = 4,
        lora_alpha: float = 32.0,
        spectral_norm: bool = True,
        adversarial_loss: Literal["bce", "hinge"] = "bce",
        lambda_adv: float = 1.0,
        lambda_img: float = 10.0,
        image_loss: Literal["l1", "l2"] = "l1",
        lambda_clip: float = 1.0,
        lambda_char: float = 0.1,
        lambda_coher: float = 0.0,
        r1_gamma: float = 0.0,
        lr_g: float = 2e-4,
        lr_d: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        max_nonfinite_steps: int = 10,
        val_samples: int = 2,
        seed: int = 0,
    ) -> None:
        """
        Args:
            generator: "conv" (a small DCGAN-style generator) or "sd_lora" (the paper's: an SD
                UNet with LoRA adapters denoising in one step, the frozen VAE decoding).
            clip: CLIP for caption embeddings (G's and D's condition) and the CLIP and character
                losses: "ViT-B-32-quickgelu@openai", a local dir, or "tiny".
            sd: Stable Diffusion for the "sd_lora" generator, and whose VAE encoder gives the
                latents of the coherence loss.
            resolution: frame side in pixels (a power of two).
            z_dim: size of the conv generator's noise vector.
            width: base channel width of the conv generator and the discriminator.
            lora_rank: LoRA rank of the "sd_lora" generator.
            lora_alpha: LoRA alpha of the "sd_lora" generator.
            spectral_norm: spectral normalisation on the discriminator's layers.
            adversarial_loss: "bce" (non-saturating) or "hinge".
            lambda_adv: weight of the adversarial term (0: no discriminator at all).
            lambda_img: weight of the pixel loss to the ground-truth frame (mean over pixels).
            image_loss: "l1" (the GAN approach) or "l2" (the CLIP-centric and coherence ones).
            lambda_clip: weight of 1 - cos(CLIP image embedding, CLIP caption embedding).
            lambda_char: weight of 1 - cos between CLIP embeddings of consecutive frames.
            lambda_coher: weight of the squared distance between consecutive frames' VAE latents,
                per element and halved (about 1 for unrelated frames).
            r1_gamma: R1 gradient penalty on real frames, gamma (0: off).
            lr_g: Adam learning rate of the generator.
            lr_d: Adam learning rate of the discriminator.
            betas: Adam betas of both (DCGAN's 0.5, 0.999).
            max_nonfinite_steps: training stops after this many steps with a non-finite loss
                (each one is skipped, so the weights stay those of the last finite step).
            val_samples: stories whose frames are drawn beside the ground truth each validation.
            seed: seed of the validation noise and of the drawing seeds.
        """
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.clip = load_clip(clip).requires_grad_(False)
        if isinstance(getattr(self.clip.visual, "conv1", None), nn.Conv2d):  # open_clip's ViT
            self.clip.visual.conv1 = PatchEmbedding.replacing(self.clip.visual.conv1)
        cond_dim = self.clip.text_projection.shape[-1] if hasattr(self.clip, "text_projection") \
            else self.clip.visual.output_dim
        if generator == "sd_lora":
            self.generator = SDOneStepGenerator(load_stable_diffusion(sd), lora_rank, lora_alpha)
            self.vae = self.generator.sd.vae
        else:
            self.generator = ConvGenerator(z_dim, cond_dim, resolution, width)
            self.vae = load_vae(sd).requires_grad_(False) if lambda_coher else None
        self.discriminator = ProjectionDiscriminator(cond_dim, resolution, width, spectral_norm) if lambda_adv else None
        self.nonfinite_steps = 0

    # ------------------------------------------------------------------------------ pieces

    @torch.no_grad()
    def caption_embeddings(self, captions: list[str]) -> torch.Tensor:
        import open_clip

        tokens = open_clip.tokenize(captions).to(self.device)
        return F.normalize(self.clip.encode_text(tokens).float(), dim=-1)

    def image_embeddings(self, frames: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings of frames in [-1, 1] (gradients flow back to the frames)."""
        size, mean, std = clip_preprocessing(self.clip)
        x = F.interpolate((frames + 1) / 2, size=(size, size), mode="bilinear", align_corners=False)
        mean = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
        return self.clip.encode_image((x - mean) / std).float()

    def noise_shape(self) -> tuple[int, ...]:
        """The shape of one frame's noise: a latent (C, h, w) for "sd_lora", a vector for "conv"."""
        if self.hparams.generator == "sd_lora":
            return self.generator.sd.latent_shape(self.resolution)
        return (self.hparams.z_dim,)

    def draw_frames(self, z: torch.Tensor, captions: list[str], cond: torch.Tensor,
                    scale: float | None = None) -> torch.Tensor:
        """G(z, caption): frames (N, 3, R, R) in [-1, 1]."""
        if self.hparams.generator == "sd_lora":
            with torch.no_grad():
                states = self.generator.sd.encode_prompts(captions)
            return self.generator(z, states, scale)
        return self.generator(z, cond)

    def story_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, list[str], int, int]:
        """(real frames (B*S, 3, R, R), their captions, B, S): every step of every story."""
        images = batch["images"]
        b, s = images.shape[:2]
        return images.flatten(0, 1), [c for texts in batch["texts"] for c in texts], b, s

    def generator_terms(self, fake: torch.Tensor, real: torch.Tensor, cond: torch.Tensor,
                        b: int, s: int) -> dict[str, torch.Tensor]:
        """Each weighted term of L_G that is switched on, unweighted (visiontales.losses)."""
        h = self.hparams
        terms = {"img": losses.image_loss(fake, real, h.image_loss)}
        if self.discriminator is not None:
            terms["adv"] = losses.generator_adversarial_loss(self.discriminator(fake, cond), h.adversarial_loss)
        if h.lambda_clip or h.lambda_char:
            features = self.image_embeddings(fake)
            if h.lambda_clip:
                terms["clip"] = losses.clip_loss(features, cond)
            if h.lambda_char:
                terms["char"] = losses.character_loss(features.view(b, s, -1))
        if h.lambda_coher:
            latents = encode_latents(self.vae, fake)
            terms["coher"] = losses.coherence_loss(latents.view(b, s, *latents.shape[1:]))
        return terms

    def weighted(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """lambda * term for each term."""
        return {name: getattr(self.hparams, f"lambda_{name}") * value for name, value in terms.items()}

    # ---------------------------------------------------------------------------- training

    def finite_or_skip(self, loss: torch.Tensor, name: str) -> bool:
        """The divergence guard: a non-finite loss skips its step (on every rank if on any, so that
        DDP's gradient exchange stays in step); too many stop training."""
        if self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss).all()), all=True):
            return True
        self.nonfinite_steps += 1
        limit = self.hparams.max_nonfinite_steps
        rank_zero_warn(f"non-finite {name} ({loss.item()}) at step {self.global_step}: step skipped "
                       f"({self.nonfinite_steps} of at most {limit})")
        if self.nonfinite_steps >= limit:
            rank_zero_warn(f"training stopped: {self.nonfinite_steps} non-finite losses (max_nonfinite_steps="
                           f"{limit}); the weights are those of the last finite step, saved as last.ckpt")
            self.trainer.should_stop = True
        return False

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        optimizers = self.optimizers()
        opt_g, opt_d = optimizers if isinstance(optimizers, list) else (optimizers, None)
        real, captions, b, s = self.story_batch(batch)
        cond = self.caption_embeddings(captions)
        z = torch.randn((len(real), *self.noise_shape()), device=self.device)
        logs = {}
        # one forward pass of G serves both players (as in the DCGAN reference): D sees the frames
        # detached, and G's terms backpropagate through the same graph after D's update
        fake = self.draw_frames(z, captions, cond)
        if self.discriminator is not None:
            self.toggle_optimizer(opt_d)
            real_in = real.detach().requires_grad_(self.hparams.r1_gamma > 0)
            real_logits, fake_logits = self.discriminator(real_in, cond), self.discriminator(fake.detach(), cond)
            d_loss = losses.discriminator_loss(real_logits, fake_logits, self.hparams.adversarial_loss)
            if self.hparams.r1_gamma:
                d_loss = d_loss + self.hparams.r1_gamma / 2 * losses.r1_penalty(real_logits, real_in)
            if self.finite_or_skip(d_loss, "d_loss"):
                self.manual_backward(d_loss)
                opt_d.step()
            opt_d.zero_grad(set_to_none=True)
            self.untoggle_optimizer(opt_d)
            logs.update({"train/d_loss": d_loss, "train/d_acc_real": (real_logits > 0).float().mean(),
                         "train/d_acc_fake": (fake_logits < 0).float().mean()})
        self.toggle_optimizer(opt_g)
        terms = self.generator_terms(fake, real, cond, b, s)
        weighted = self.weighted(terms)
        g_loss = sum(weighted.values())
        if self.finite_or_skip(g_loss, "g_loss"):
            self.manual_backward(g_loss)
            opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        self.untoggle_optimizer(opt_g)
        logs["train/g_loss"] = g_loss
        logs.update({f"train/loss_{name}": value for name, value in terms.items()})
        magnitude = sum(v.detach().abs() for v in weighted.values())
        logs.update({f"train/share_{name}": v.detach().abs() / magnitude for name, v in weighted.items()})
        self.log_dict({k: v.detach() for k, v in logs.items()}, on_step=True, on_epoch=True, batch_size=b)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        real, captions, b, s = self.story_batch(batch)
        cond = self.caption_embeddings(captions)
        # each frame's noise from its story's seed: the same whatever the batch or rank (DDP)
        seeds = [self.item_seed(self.hparams.seed, f"{story_id}#{t}") for story_id in batch["story_id"] for t in range(s)]
        z = self.seeded_noise(self.noise_shape(), seeds, self.device)
        fake = self.draw_frames(z, captions, cond)
        terms = self.generator_terms(fake, real, cond, b, s)
        self.log_dict({f"val/loss_{name}": value for name, value in terms.items()}, batch_size=b, sync_dist=True)
        weighted = self.weighted({k: v for k, v in terms.items() if k != "adv"})
        self.log("val/loss", sum(weighted.values()), batch_size=b, sync_dist=True)
        if batch_idx == 0 and self.hparams.val_samples:
            n = min(self.hparams.val_samples, b) * s  # each story's frames above its ground truth
            self.log_frame_grid(fake[:n], real[:n], nrow=s)

    def configure_optimizers(self):
        h = self.hparams
        opt_g = torch.optim.Adam([p for p in self.generator.parameters() if p.requires_grad], lr=h.lr_g,
                                 betas=tuple(h.betas))
        if self.discriminator is None:
            return opt_g
        return [opt_g, torch.optim.Adam(self.discriminator.parameters(), lr=h.lr_d, betas=tuple(h.betas))]

    def setup(self, stage: str) -> None:
        super().setup(stage)
        strategy = self.trainer.strategy
        if isinstance(strategy, DDPStrategy):
            # a step is two backward passes over different parameters (the discriminator's, then the
            # generator's); DDP reduces each pass's gradients only if it looks for the unused
            # parameters before it (Lightning's manual optimization does so when this is set, and
            # setup runs before the model is wrapped)
            strategy._ddp_kwargs["find_unused_parameters"] = True
        if self.hparams.generator == "sd_lora":
            self.generator.sd.cast_frozen(str(self.trainer.precision))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["nonfinite_steps"] = self.nonfinite_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.nonfinite_steps = checkpoint.get("nonfinite_steps", 0)

    # ---------------------------------------------------------------------------- inference

    @property
    def default_lora_alpha(self) -> float | None:
        return self.hparams.lora_alpha if self.hparams.generator == "sd_lora" else None

    @torch.no_grad()
    def generate(self, captions: list[str], seeds: list[int], *, previous: torch.Tensor | None = None,
                 strength: float = 1.0, lora_alpha: float | None = None) -> Drawing:
        """Frames G(z, caption), z drawn from each seed; the latents are the noise vectors.

        previous, strength: mix the previous frame's noise into this one's,
            z = sqrt(1 - strength) z_prev + sqrt(strength) z_new (variance kept), for continuity.
        lora_alpha: the "sd_lora" generator's LoRA strength as an alpha (scale alpha / lora_alpha).
        """
        if lora_alpha is not None and self.hparams.generator != "sd_lora":
            raise VisionTalesError(f"a LoRA alpha ({lora_alpha}) applies to the sd_lora generator only; this "
                                   f"GANVisualizer's generator is '{self.hparams.generator}'")
        z = self.seeded_noise(self.noise_shape(), seeds, self.device)
        if previous is not None and strength < 1.0:
            z = (1 - strength) ** 0.5 * previous.to(z) + strength ** 0.5 * z
        scale = None if lora_alpha is None else lora_alpha / self.hparams.lora_alpha
        return Drawing(self.draw_frames(z, captions, self.caption_embeddings(captions), scale).float(), z)
