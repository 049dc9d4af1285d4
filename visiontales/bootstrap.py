"""Domain-trained tiny backbones (`tiny-domain`): the offline stand-ins for pretrained weights.

Randomly initialised tiny backbones (`tiny`) make the tests fast, but a frozen random CLIP sees
nothing, a random VAE decodes noise and a random GPT-2 knows no words, so offline runs built on
them show nothing a person can judge. `tiny-domain` trains the same tiny architectures, once, on
pictures and sentences drawn by data_modules.synthetic, in the roles their real counterparts
play (web-scale pretraining, here the synthetic world):

- GPT-2 (+ its byte-level BPE tokenizer): a language model of synthetic VIST stories and
  FlintstonesSV caption sequences;
- CLIP (open_clip ViT-B-32 layout): contrastive image-text training on synthetic VIST photos and
  FlintstonesSV frames with their sentences;
- Stable Diffusion: the VAE learns to reconstruct 64 px frames of both worlds (its latent
  scaling factor measured as SD's was: 1 / std of the latents), then its decoder alone is
  fine-tuned on fresh frames (as SD's ft-MSE decoder was); the UNet is pretrained as a
  text-to-image model on the "general domain": the VIST photos and the FlintstonesSV settings with
  nobody in them or passers-by, never a character, so that drawing the characters is still the
  LoRA visualizer's job; with SD 2's v objective. Its text encoder is the tiny-domain CLIP's text
  tower (SD 1.5's is OpenAI CLIP's), never trained here.

Each is saved exactly like a hub checkpoint under $VISIONTALES_HOME/backbones/ and loaded back
through the same `from_pretrained` paths as real weights (visiontales.backbones names the
directories). `visiontales bootstrap` puts in place what is missing: from the weights that ship
with the project (visiontales/weights, written by `pack`) where they were trained from this recipe,
else trained here (`--rebuild`: always); nothing else builds them.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from data_modules import synthetic as syn
from visiontales import backbones
from visiontales.backbones import DOMAIN_SCHEDULE as SCHEDULE
from visiontales.errors import VisionTalesError
from visiontales.sd import StableDiffusion, encode_latents

LOG = logging.getLogger("visiontales")
SEED = 2024


# ------------------------------------------------------------------------------ synthetic samples


def vist_samples(n: int, seed: int) -> list[tuple[Image.Image, str]]:
    """(photo, a sentence naming its object and scene) pairs from the synthetic VIST world."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        scene, obj = rng.choice(list(syn.SCENES)), rng.choice(syn.OBJECTS)
        pairs.append((syn.draw_photo(scene, obj, rng), rng.choice(syn.MIDDLE_TEMPLATES[:2]).format(obj=obj, scene=scene)))
    return pairs


def flintstones_samples(n: int, seed: int) -> list[tuple[Image.Image, str]]:
    """(frame, its caption) pairs from the synthetic FlintstonesSV world."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        setting, action = rng.choice(list(syn.SETTINGS)), rng.choice(syn.ACTIONS)
        cast = rng.sample(list(syn.CHARACTERS), rng.choice((1, 2, 2, 3)))
        frames = syn.draw_clip(setting, cast, action, rng)
        pairs.append((Image.fromarray(frames[rng.randrange(len(frames))]),
                      syn.flintstones_caption(cast, action, setting)))
    return pairs


def empty_settings(n: int, seed: int) -> list[tuple[Image.Image, str]]:
    """(a FlintstonesSV setting with nobody in it, "the <setting> is empty .") pairs."""
    from PIL import ImageDraw

    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        setting = rng.choice(list(syn.SETTINGS))
        img = Image.new("RGB", (syn.FRAME_SIZE, syn.FRAME_SIZE))
        syn._draw_background(ImageDraw.Draw(img), setting)
        pairs.append((img, f"the {setting} is empty ."))
    return pairs


PEOPLE = ("a person", "two people", "three people")


def passers_by(n: int, seed: int) -> list[tuple[Image.Image, str]]:
    """(a FlintstonesSV setting with one to three passers-by in it, "two people are walking in the
    quarry .") pairs: people of random looks, none of them a main character's (each body colour is
    far from every character's), so the UNet learns figures, settings and actions but no cast."""
    from PIL import ImageDraw

    rng = random.Random(seed)
    taken = [np.array(look[0]) for look in syn.CHARACTERS.values()]
    pairs = []
    for _ in range(n):
        setting, action, count = rng.choice(list(syn.SETTINGS)), rng.choice(syn.ACTIONS), rng.randint(1, 3)
        img = Image.new("RGB", (syn.FRAME_SIZE, syn.FRAME_SIZE))
        draw = ImageDraw.Draw(img)
        syn._draw_background(draw, setting)
        ground = syn.FRAME_SIZE * syn.SETTINGS[setting][2] + 22
        for i in range(count):
            body = tuple(rng.randrange(256) for _ in range(3))
            while min(np.abs(np.array(body) - c).sum() for c in taken) < 120:
                body = tuple(rng.randrange(256) for _ in range(3))
            hair = rng.choice((None, tuple(rng.randrange(256) for _ in range(3))))
            look = (body, hair, rng.uniform(0.6, 1.0), rng.uniform(0.5, 1.0))
            syn.draw_person(draw, look, syn.FRAME_SIZE * (i + 1) / (count + 1), ground, rng.randrange(syn.FRAMES), action)
        verb = "is" if count == 1 else "are"
        pairs.append((img, f"{PEOPLE[count - 1]} {verb} {action} in the {setting} ."))
    return pairs


def general_domain(seed: int, scale: float = 1.0) -> list[tuple[Image.Image, str]]:
    """The UNet's text-to-image pretraining pairs (backbones.GENERAL_DOMAIN says how many of each)."""
    counts = {part: round(n * scale) for part, n in backbones.GENERAL_DOMAIN.items()}
    return vist_samples(counts["vist_photos"], seed) + empty_settings(counts["empty_settings"], seed + 1) \
        + passers_by(counts["people"], seed + 2)


def stories(n: int, seed: int) -> list[str]:
    """Synthetic VIST stories and FlintstonesSV caption runs (one cast and setting per run)."""
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        if i % 2:
            scene = rng.choice(list(syn.SCENES))
            texts.append(" ".join(syn.story_sentences(scene, rng.sample(syn.OBJECTS, 5), rng)))
        else:
            setting, cast = rng.choice(list(syn.SETTINGS)), rng.sample(list(syn.CHARACTERS), rng.choice((1, 2, 3)))
            texts.append(" ".join(syn.flintstones_caption(rng.sample(cast, rng.randint(1, len(cast))),
                                                          rng.choice(syn.ACTIONS), setting) for _ in range(5)))
    return texts


def pixels(images: list[Image.Image], size: int) -> torch.Tensor:
    """uint8 (N, 3, size, size): each image centre-cropped to a square and resized."""
    out = []
    for img in images:
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        square = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(square).copy()).permute(2, 0, 1))
    return torch.stack(out)


def sd_pixels(pairs: list[tuple[Image.Image, str]]) -> torch.Tensor:
    """The images of (image, text) pairs as the tiny-domain SD reads them: (N, 3, R, R) in [-1, 1]."""
    return pixels([p for p, _ in pairs], SCHEDULE["sd_resolution"]).float() / 127.5 - 1


def _batches(n: int, batch: int, steps: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield torch.randint(0, n, (batch,), generator=g)


def _report(what: str, losses: list[float], start: float) -> None:
    k = max(1, len(losses) // 10)
    LOG.info(f"  {what}: loss {np.mean(losses[:k]):.4f} -> {np.mean(losses[-k:]):.4f} "
             f"over {len(losses)} steps ({time.time() - start:.0f} s)")


# ------------------------------------------------------------------------------------- trainers


def train_gpt2(directory: Path, steps: int = SCHEDULE["gpt2_steps"]) -> list[float]:
    """Language-model training of the tiny GPT-2 written (random) in `directory`; saved in place."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    torch.manual_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.pad_token = tokenizer.eos_token
    model = GPT2LMHeadModel.from_pretrained(directory).train()
    texts = [t + tokenizer.eos_token for t in stories(4000, SEED)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    losses, start = [], time.time()
    for index in _batches(len(texts), SCHEDULE["batch"], steps, SEED):
        enc = tokenizer([texts[i] for i in index], return_tensors="pt", padding=True, truncation=True,
                        max_length=model.config.n_positions)
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        loss = model(**enc, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    _report("GPT-2 language model", losses, start)
    model.save_pretrained(directory)
    return losses


def train_clip(model: torch.nn.Module, steps: int = SCHEDULE["clip_steps"]) -> list[float]:
    """Contrastive (InfoNCE, open_clip's ClipLoss) training of a tiny open_clip model, in place."""
    import open_clip
    from open_clip.loss import ClipLoss

    torch.manual_seed(SEED)
    size, mean, std = backbones.clip_preprocessing(model)
    pairs = vist_samples(600, SEED) + flintstones_samples(600, SEED + 1)
    images, texts = pixels([p for p, _ in pairs], size), open_clip.tokenize([t for _, t in pairs])
    mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    loss_fn, losses, start = ClipLoss(), [], time.time()
    for index in _batches(len(pairs), 64, steps, SEED):
        x = (images[index].float() / 255 - mean) / std
        loss = loss_fn(model.encode_image(x, normalize=True), model.encode_text(texts[index], normalize=True),
                       model.logit_scale.exp())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    _report("CLIP contrastive", losses, start)
    return losses


def train_vae(vae: torch.nn.Module, steps: int = SCHEDULE["vae_steps"]) -> list[float]:
    """Reconstruction (L1) + SD's light KL term on 64 px photos and frames (FlintstonesSV's weighted up:
    its characters are the small details that must survive); then sets the latent
    scaling factor to 1 / std of the latents, as Stable Diffusion's was measured."""
    torch.manual_seed(SEED)
    images = sd_pixels(vist_samples(600, SEED + 2) + flintstones_samples(SCHEDULE["vae_frames"], SEED + 3))
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=SCHEDULE["vae_lr"])
    losses, start = [], time.time()
    for index in _batches(len(images), SCHEDULE["vae_batch"], steps, SEED):
        x = images[index]
        posterior = vae.encode(x).latent_dist
        # SD's balance: KL (summed over latent dims) at 1e-6 of a reconstruction loss summed over
        # pixels; ours is a mean over pixels, so the KL is divided by their count. Weighed against
        # the mean alone it is ~10^4 times stronger: channels collapse to the prior and the posterior
        # noise swamps the latents the UNet is trained on.
        loss = F.l1_loss(vae.decode(posterior.sample()).sample, x) + SCHEDULE["vae_kl"] * posterior.kl().mean() / x[0].numel()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(images[i:i + 64]).latent_dist.sample() for i in range(0, 256, 64)])
    vae.register_to_config(scaling_factor=float(1 / latents.std()))
    _report("VAE reconstruction", losses, start)
    return losses


def finetune_vae_decoder(vae: torch.nn.Module, images: torch.Tensor | None = None,
                         steps: int = SCHEDULE["vae_decoder_steps"]) -> list[float]:
    """The decoder alone (encoder frozen, so the latents and the UNet trained on them stay as they
    are) fine-tuned to decode the encoder's posterior means of `images` (in [-1, 1]; default: fresh
    photos and frames, FlintstonesSV's weighted up) with the learning rate falling linearly to 0, as
    SD's ft-MSE decoder was. The jointly trained VAE blurs the characters' faces and clothes, which
    the character classifier then misses."""
    torch.manual_seed(SEED)
    if images is None:
        images = sd_pixels(vist_samples(300, SEED + 7) + flintstones_samples(SCHEDULE["vae_decoder_frames"], SEED + 8))
    with torch.no_grad():
        latents = torch.cat([vae.encode(images[i:i + 64]).latent_dist.mean for i in range(0, len(images), 64)])
    trained = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for parameter in trained:
        parameter.requires_grad_(True)
    vae.train()
    optimizer = torch.optim.AdamW(trained, lr=SCHEDULE["vae_decoder_lr"], weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: max(0.0, 1 - i / steps))
    losses, start = [], time.time()
    for index in _batches(len(images), SCHEDULE["vae_batch"], steps, SEED + 1):
        loss = F.l1_loss(vae.decode(latents[index]).sample, images[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    vae.requires_grad_(False)
    vae.eval()
    _report("VAE decoder fine-tune", losses, start)
    return losses


def train_unet(sd: StableDiffusion, steps: int = SCHEDULE["unet_steps"], cooldown: bool = False) -> list[float]:
    """Text-to-image pretraining of the UNet (the toolkit's diffusion loss, the scheduler's v
    objective), in place, on the "general domain" (`general_domain`: VIST photos, the FlintstonesSV
    settings empty and with passers-by; never a character), each caption replaced by the empty
    prompt with probability unet_caption_dropout, as SD 1.5 was trained. `cooldown`: the learning
    rate falls linearly to 0 over the steps (a second pass so run removes most of the mottled noise
    the constant rate leaves in sampled frames)."""
    torch.manual_seed(SEED)
    pairs = general_domain(SEED + 4)
    images = sd_pixels(pairs)
    with torch.no_grad():
        prompts = [t for _, t in pairs]
        states = torch.cat([sd.encode_prompts(prompts[i:i + 128]) for i in range(0, len(prompts), 128)])
        empty = sd.encode_prompts([""])
        latents = torch.cat([encode_latents(sd.vae, images[i:i + 64])
                             for i in range(0, len(images), 64)])
    sd.unet.train()
    optimizer = torch.optim.AdamW(sd.unet.parameters(), lr=5e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: max(0.0, 1 - i / steps) if cooldown else 1.0)
    dropped = torch.Generator().manual_seed(SEED + int(cooldown))
    losses, start = [], time.time()
    for index in _batches(len(images), SCHEDULE["batch"], steps, SEED):
        # SD's caption dropout: the empty prompt in place of a caption teaches the unconditional
        # prediction that classifier-free guidance steers away from
        drop = torch.rand(len(index), generator=dropped) < SCHEDULE["unet_caption_dropout"]
        loss = sd.diffusion_loss(latents[index], torch.where(drop[:, None, None], empty, states[index]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    sd.unet.eval()
    _report(f"UNet text-to-image (general domain){', cooldown' if cooldown else ''}", losses, start)
    return losses


# ------------------------------------------------------------------------------------- builders


def _architecture(kind: str, directory: Path) -> None:
    """The untrained tiny-domain architecture of `kind`, written as its hub-style directory, with the
    parts SD never trains: its tokenizer and its text encoder, the tiny-domain CLIP's text tower (so
    the tiny-domain CLIP must be in place). The tower is rounded to fp16 and back, so that CLIP weights
    installed from the shipped fp16 files and trained ones give the same encoder."""
    if kind == "sd":
        clip = backbones.load_clip(str(backbones.domain_dir("clip")))
        backbones.build_tiny_sd(directory, backbones.DOMAIN_UNET, backbones.DOMAIN_VAE, backbones.DOMAIN_SD_SCHEDULE,
                                backbones.clip_text_encoder(clip).half().float())
    else:
        backbones.TINY_BUILDERS[kind](directory)


def _train(kind: str, directory: Path) -> None:
    """Train the architecture written in `directory` in place."""
    if kind == "gpt2":
        train_gpt2(directory)
    elif kind == "clip":
        model = backbones.load_clip(str(directory))
        train_clip(model)
        backbones.save_tiny_clip(model, directory)
    else:
        sd = StableDiffusion.from_pretrained(str(directory))
        sd.requires_grad_(False)
        sd.vae.requires_grad_(True)
        train_vae(sd.vae)
        sd.vae.requires_grad_(False)
        finetune_vae_decoder(sd.vae)
        sd.vae.save_pretrained(directory / "vae")
        sd.unet.requires_grad_(True)
        train_unet(sd)
        train_unet(sd, SCHEDULE["unet_cooldown_steps"], cooldown=True)  # a fresh optimizer
        sd.unet.save_pretrained(directory / "unet")


def train_backbone(kind: str, directory: Path) -> None:
    """Build and train the tiny-domain backbone `kind` ("gpt2", "clip" or "sd") into `directory`."""
    _architecture(kind, directory)
    _train(kind, directory)


# ----------------------------------------------------------------------------- shipped weights

SHIPPED = Path(__file__).parent / "weights"
"""The tiny-domain weights that ship with the project (fp16 safetensors, `pack` writes them), with
manifest.json: the recipe each was trained from, its quality, and the fingerprint of the SD text
encoder (the CLIP text tower) the UNet was trained against."""
SHIPPED_FILES = {
    "gpt2": ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
             "tokenizer_config.json"),
    "clip": ("open_clip_config.json", "open_clip_model.safetensors"),
    "sd": ("vae/config.json", "vae/diffusion_pytorch_model.safetensors", "unet/config.json",
           "unet/diffusion_pytorch_model.safetensors"),
}
"""What training changes in each backbone's directory: the files that ship."""


def _copy_weights(source: Path, target: Path, dtype: torch.dtype) -> None:
    """Copy a file; a safetensors file with its floating-point tensors cast to `dtype`."""
    import safetensors.torch
    from safetensors import safe_open

    target.parent.mkdir(parents=True, exist_ok=True)
    if source.suffix != ".safetensors":
        shutil.copyfile(source, target)
        return
    with safe_open(source, "pt") as f:
        metadata = f.metadata()
    tensors = {name: t.to(dtype) if t.is_floating_point() else t
               for name, t in safetensors.torch.load_file(source).items()}
    safetensors.torch.save_file(tensors, target, metadata=metadata)


def _text_encoder_fingerprint(directory: Path) -> str:
    from transformers import CLIPTextModel

    return backbones.fingerprint(CLIPTextModel.from_pretrained(directory / "text_encoder"))


def shipped_manifest() -> dict:
    path = SHIPPED / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def shipped_matches(kind: str) -> bool:
    """Whether the shipped weights of `kind` were trained from the recipe this code names."""
    return shipped_manifest().get("recipes", {}).get(kind) == backbones.domain_dir(kind).name


def install_shipped(kind: str, directory: Path) -> None:
    """Write the tiny-domain backbone `kind` into `directory` from the shipped weights (seconds): its
    architecture as `train_backbone` starts it, then the trained files over it, back in fp32."""
    _architecture(kind, directory)
    for name in SHIPPED_FILES[kind]:
        _copy_weights(SHIPPED / kind / name, directory / name, torch.float32)
    if kind == "sd":
        expected = shipped_manifest()["text_encoder_fingerprint"]
        if _text_encoder_fingerprint(directory) != expected:
            raise VisionTalesError(
                "the SD text encoder built here from the tiny-domain CLIP differs from the one the shipped tiny-domain "
                "UNet was trained against (another CLIP, or another torch?); train the backbones instead: "
                "visiontales bootstrap --rebuild")


def pack(directories: dict[str, Path], quality: dict[str, dict[str, float]], out: Path = SHIPPED) -> Path:
    """Write the trained files of each backbone in fp16 under `out`, with manifest.json."""
    shutil.rmtree(out, ignore_errors=True)
    for kind, directory in directories.items():
        for name in SHIPPED_FILES[kind]:
            _copy_weights(directory / name, out / kind / name, torch.float16)
    manifest = {"recipes": {kind: directory.name for kind, directory in directories.items()},
                "quality": quality, "text_encoder_fingerprint": _text_encoder_fingerprint(directories["sd"]),
                "built_with": {"torch": torch.__version__}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def build_domain_backbones(rebuild: bool = False) -> dict[str, Path]:
    """Every tiny-domain backbone, in its cache directory: installed from the shipped weights where
    they match this code's recipe, else (or with `rebuild`) trained here; a built one is kept."""
    backbones._quiet()
    directories = {}
    for kind in SHIPPED_FILES:
        directory = backbones.domain_dir(kind)
        if rebuild and directory.is_dir():
            shutil.rmtree(directory)
        if directory.is_dir():
            directories[kind] = directory
        elif not rebuild and shipped_matches(kind):
            LOG.info(f"installing the shipped tiny-domain {kind} backbone in {directory}")
            directories[kind] = backbones.build_once(directory, lambda d, k=kind: install_shipped(k, d))
        else:
            why = "--rebuild" if rebuild else "the shipped weights were trained from another recipe"
            LOG.info(f"training the tiny-domain {kind} backbone on synthetic data ({why}; minutes; kept in {directory})")
            directories[kind] = backbones.build_once(directory, lambda d, k=kind: train_backbone(k, d))
    return directories


# ------------------------------------------------------------------------------------- quality

HELD_OUT = SEED + 100  # seeds of the quality samples: none of them trains a backbone


@torch.no_grad()
def quality(directories: dict[str, Path]) -> dict[str, dict[str, float]]:
    """Held-out measures of each tiny-domain backbone, on samples no backbone trained on:

    - gpt2: perplexity of 200 synthetic stories and caption runs;
    - clip: top-1 caption retrieval among 128 photo/frame-caption pairs (a hit: the best-scoring
      caption reads the same as the image's own);
    - sd: VAE PSNR (dB) of 200 reconstructed 64 px photos and frames (posterior mean), the VAE's
      posterior noise (mean posterior std over the std of the posterior means: what sampling a
      latent adds to it; SD's is far below 1), and the UNet's diffusion loss on 120 general-domain
      pairs at fixed noise and timesteps, with their captions and with the empty prompt (the
      unconditional prediction that classifier-free guidance steers away from).
    """
    import math

    import open_clip
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(HELD_OUT)
    out = {}
    tokenizer = AutoTokenizer.from_pretrained(directories["gpt2"])
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(directories["gpt2"]).eval()
    enc = tokenizer([t + tokenizer.eos_token for t in stories(200, HELD_OUT)], return_tensors="pt", padding=True)
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    out["gpt2"] = {"perplexity": math.exp(model(**enc, labels=labels).loss.item())}

    clip = backbones.load_clip(str(directories["clip"]))
    size, mean, std = backbones.clip_preprocessing(clip)
    pairs = vist_samples(64, HELD_OUT + 1) + flintstones_samples(64, HELD_OUT + 2)
    x = (pixels([p for p, _ in pairs], size).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) \
        / torch.tensor(std).view(1, 3, 1, 1)
    captions = [t for _, t in pairs]
    best = (clip.encode_image(x, normalize=True) @ clip.encode_text(open_clip.tokenize(captions), normalize=True).T).argmax(1)
    out["clip"] = {"retrieval_top1": float(np.mean([captions[j] == c for j, c in zip(best.tolist(), captions, strict=True)]))}

    sd = StableDiffusion.from_pretrained(str(directories["sd"]))
    images = sd_pixels(vist_samples(100, HELD_OUT + 3) + flintstones_samples(100, HELD_OUT + 4))
    posteriors = [sd.vae.encode(images[i:i + 50]).latent_dist for i in range(0, len(images), 50)]
    recon = torch.cat([sd.vae.decode(p.mean).sample for p in posteriors]).clamp(-1, 1)
    mse = F.mse_loss((recon + 1) / 2, (images + 1) / 2).item()
    noise = torch.cat([p.std for p in posteriors]).mean() / torch.cat([p.mean for p in posteriors]).std()
    pairs = general_domain(HELD_OUT + 5, scale=0.1)
    latents = encode_latents(sd.vae, sd_pixels(pairs))
    loss = sd.diffusion_loss(latents, sd.encode_prompts([t for _, t in pairs]), torch.Generator().manual_seed(HELD_OUT))
    uncond = sd.diffusion_loss(latents, sd.encode_prompts([""]).expand(len(pairs), -1, -1),
                               torch.Generator().manual_seed(HELD_OUT))
    out["sd"] = {"vae_psnr": 10 * math.log10(1 / mse), "vae_posterior_noise": noise.item(), "unet_loss": loss.item(),
                 "unet_uncond_loss": uncond.item()}
    return out
