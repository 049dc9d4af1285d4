"""The one place that builds pretrained backbones: GPT-2 + tokenizer, CLIP + preprocessing, and the
Stable Diffusion components.

A backbone is named by a spec string:

- GPT-2: a hub id (`openai-community/gpt2`, the paper's; `gpt2-medium`), a local directory written by
  `save_pretrained`, or `tiny`.
- CLIP:  `<open_clip model>@<pretrained tag>` (`ViT-B-32-quickgelu@openai`, the paper's), `<open_clip
  model>@<weights file>`, `hf-hub:<repo>`, a local directory holding `open_clip_config.json` and
  weights, or `tiny`. A model whose activation does not match its weights' is refused.
- Stable Diffusion: a hub id (`stable-diffusion-v1-5/stable-diffusion-v1-5`), a local directory in
  the diffusers layout (unet/, vae/, text_encoder/, tokenizer/, scheduler/), or `tiny`.

`tiny` builds a small randomly initialised model once (fixed seed), saves it under
`$VISIONTALES_HOME/backbones/` (default `~/.cache/visiontales`) exactly as a hub checkpoint is laid
out, and then loads it back through the same `from_pretrained` / `local-dir:` path as real weights.
The tiny GPT-2 gets a byte-level BPE tokenizer trained on the synthetic datasets' sentences (the
GPT-2 BPE files do not ship with transformers). `tiny-domain` is the same architecture trained on
the synthetic worlds (visiontales.bootstrap; `visiontales bootstrap` installs the shipped weights):
what the offline profile runs on. Nothing trains on demand: a run that names `tiny-domain` before it is built stops
with one line saying how to build it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from visiontales.errors import VisionTalesError
from visiontales.sd import StableDiffusion

TINY = "tiny"
TINY_DOMAIN = "tiny-domain"
TINY_SPECS = (TINY, TINY_DOMAIN)
TINY_SEED = 1234
TINY_GPT2 = {"n_layer": 2, "n_head": 2, "n_embd": 64, "n_positions": 256}
TINY_GPT2_VOCAB = 1000
TINY_CLIP = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def home() -> Path:
    """Where tiny backbones (and other reusable artefacts) are kept."""
    return Path(os.environ.get("VISIONTALES_HOME", Path.home() / ".cache" / "visiontales"))


def _quiet() -> None:
    """No per-file progress bars when loading weights: a run's log is for its own progress."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def _missing_weights(spec: str, what: str, error: Exception) -> VisionTalesError:
    return VisionTalesError(
        f"{what} weights '{spec}' could not be loaded ({type(error).__name__}): give a local directory "
        f"that holds them, or run where the Hugging Face Hub is reachable (or its cache, HF_HOME, has them)")


# ---------------------------------------------------------------------------------------- GPT-2


def build_tiny_gpt2(directory: Path) -> None:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from data_modules.synthetic import tokenizer_corpus

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(tokenizer_corpus(), vocab_size=TINY_GPT2_VOCAB, min_frequency=1,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                        eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    torch.manual_seed(TINY_SEED)
    config = GPT2Config(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, **TINY_GPT2)
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def load_gpt2(spec: str) -> tuple[nn.Module, object]:
    """(GPT-2 language model, its tokenizer) for a hub id, a local directory, or `tiny`.

    GPT-2 has no padding token; its EOS doubles as one (padded positions are masked and carry
    label -100, so the choice never reaches the loss).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet()
    if spec in TINY_SPECS:
        spec = str(tiny_backbone_dir(spec, "gpt2"))
    elif spec.startswith((".", "/", "~")) and not Path(spec).expanduser().is_dir():
        raise VisionTalesError(f"{spec}: GPT-2 directory not found")
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec)
        model = AutoModelForCausalLM.from_pretrained(spec)
    except OSError as e:
        raise _missing_weights(spec, "GPT-2", e) from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


# ----------------------------------------------------------------------------------------- CLIP


def save_clip(model: nn.Module, model_cfg: dict, directory: Path) -> None:
    """Write an open_clip model as a hub-style local directory (config JSON + safetensors)."""
    import safetensors.torch
    from open_clip.push_to_hf_hub import save_config_for_hf

    directory.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(model.state_dict(), directory / CLIP_WEIGHTS[0])
    save_config_for_hf(model, directory / "open_clip_config.json", model_config=model_cfg)


def tiny_clip() -> nn.Module:
    """The tiny open_clip model (ViT-B-32's layout, narrow and shallow), randomly initialised."""
    import open_clip

    torch.manual_seed(TINY_SEED)
    return open_clip.create_model("ViT-B-32", pretrained=None, **TINY_CLIP)


def save_tiny_clip(model: nn.Module, directory: Path) -> None:
    import open_clip

    save_clip(model.eval(), {**open_clip.get_model_config("ViT-B-32"), **TINY_CLIP}, directory)


def load_clip(spec: str) -> nn.Module:
    """An open_clip CLIP model (eval mode) for `name@tag`, `hf-hub:repo`, a local dir, or `tiny`.

    Its preprocessing settings are in `model.visual.preprocess_cfg` (size, mean, std).
    """
    import open_clip

    if spec in TINY_SPECS:
        spec = str(tiny_backbone_dir(spec, "clip"))
    if spec.startswith("hf-hub:"):
        name, pretrained = spec, None
    elif Path(spec).expanduser().is_dir():
        name, pretrained = f"local-dir:{Path(spec).expanduser()}", None
    elif "@" in spec:
        name, pretrained = spec.split("@", 1)
        check_activation(name, pretrained)
    else:
        raise VisionTalesError(f"CLIP spec '{spec}' is neither a local directory, 'hf-hub:<repo>', "
                               f"'<model>@<pretrained>' (e.g. ViT-B-32-quickgelu@openai), 'tiny' nor 'tiny-domain'")
    try:
        model = open_clip.create_model(name, pretrained=pretrained)
    except (RuntimeError, OSError, ValueError) as e:
        raise _missing_weights(spec, "CLIP", e) from e
    return model.eval()


def check_activation(name: str, pretrained: str) -> None:
    """Refuse a CLIP whose activation does not match the one its weights were trained with (open_clip
    builds `ViT-B-32` with GELU; OpenAI's weights were trained with QuickGELU), naming the right spec."""
    import open_clip

    trained_quick = open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu", False)
    builds_quick = (open_clip.get_model_config(name) or {}).get("quick_gelu", False)
    if trained_quick and not builds_quick:
        right = f"{name}-quickgelu@{pretrained}"
        raise VisionTalesError(f"CLIP spec '{name}@{pretrained}': these weights were trained with QuickGELU but "
                               f"'{name}' builds GELU, so every feature would be off; use '{right}'")


def describe_backbones(gpt2: str, clip: str, sd: str) -> dict[str, dict]:
    """For each backbone role, the spec it was loaded from, its class and its parameter count,
    each loaded through the same code as training."""
    language_model, _ = load_gpt2(gpt2)
    parts = {"gpt2": (gpt2, language_model), "clip": (clip, load_clip(clip))}
    diffusion = load_stable_diffusion(sd)
    parts.update({f"sd_{name}": (f"{sd} ({name}/)", getattr(diffusion, name)) for name in ("unet", "vae", "text_encoder")})
    return {role: {"spec": spec, "class": type(module).__name__,
                   "parameters": sum(p.numel() for p in module.parameters())} for role, (spec, module) in parts.items()}


def clip_preprocessing(model: nn.Module) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(image side, mean, std) that an open_clip model's image tower expects."""
    cfg = model.visual.preprocess_cfg
    size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
    return size, tuple(cfg["mean"]), tuple(cfg["std"])


def fingerprint(module: nn.Module) -> str:
    """A short hash of a module's weights (shapes and leading values of every tensor).

    Cheap enough to compute at every start, and it changes when the weights do, which a name
    such as `tiny` or a directory path would not promise.
    """
    h = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().flatten()[:64].float().cpu()
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(flat.numpy().tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------ Stable Diffusion

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# diffusers' own test components (tests/pipelines/stable_diffusion/test_stable_diffusion.py)
TINY_UNET = {"block_out_channels": (32, 64), "layers_per_block": 2, "sample_size": 32, "in_channels": 4,
             "out_channels": 4, "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
             "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "cross_attention_dim": 32, "norm_num_groups": 32}
TINY_VAE = {"block_out_channels": [32, 64], "in_channels": 3, "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
            "latent_channels": 4, "norm_num_groups": 32, "scaling_factor": 0.18215}
# tiny-domain: the VAE downsamples 4x into 8 channels (64 px frames -> 16x16x8 latents; SD's is
# 8x into 4 at 512 px), so that the UNet trains in CPU minutes and the characters' faces and clothes
# survive the round trip (with 4 channels, or SD's 8x, they blur: the classifier misses them)
DOMAIN_VAE = {**TINY_VAE, "block_out_channels": [16, 32, 64], "norm_num_groups": 16, "latent_channels": 8,
              "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3}
# its cross-attention reads the tiny-domain CLIP's text tower (width 64), as SD 1.5's reads OpenAI
# CLIP's. Cross-attention at 16x16 too (1.58 M parameters; a training step of the whole UNet at
# batch 32 2.45x as long, timed side by side on 2 cores) was measured and not kept: one LoRA
# epoch at alpha 10 / 32 drew Char-F1 0.37 / 0.52 from one pretraining and 0.33 / 0.49 from a
# rebuild, against 0.32 / 0.46 here (64 test clips): within what a rebuild varies
DOMAIN_UNET = {**TINY_UNET, "sample_size": 16, "in_channels": 8, "out_channels": 8, "cross_attention_dim": 64}
# how `visiontales bootstrap --rebuild` trains each tiny-domain backbone (0.3 + 1.0 + 6.3 + 9.7
# minutes measured on 2 CPU cores, up to 0.4 + 1.1 + 7.8 + 12.2 on the same machine another day,
# before the VAE decoder's fine-tune (vae_decoder_*: a third of the VAE's time more) joined SD's);
# part of the cache key of the backbones that read them (DOMAIN_SCHEDULE_KEYS): change one and
# those are rebuilt (and their shipped weights, trained from the old recipe, no longer install)
DOMAIN_SCHEDULE = {"gpt2_steps": 600, "clip_steps": 400, "vae_steps": 1600, "vae_lr": 2e-3, "vae_kl": 1e-6, "vae_batch": 16,
                   "vae_frames": 1400, "vae_decoder_steps": 1000, "vae_decoder_lr": 1e-3, "vae_decoder_frames": 2000,
                   "unet_steps": 1200, "unet_cooldown_steps": 1200, "unet_caption_dropout": 0.1, "batch": 32,
                   "sd_resolution": 64}
DOMAIN_SCHEDULE_KEYS = {
    "gpt2": ("gpt2_steps", "batch"),
    "clip": ("clip_steps",),
    "sd": ("vae_steps", "vae_lr", "vae_kl", "vae_batch", "vae_frames", "vae_decoder_steps", "vae_decoder_lr",
           "vae_decoder_frames", "unet_steps", "unet_cooldown_steps", "unet_caption_dropout", "batch", "sd_resolution"),
}
# what the tiny-domain UNet is pretrained on (bootstrap.general_domain): synthetic VIST photos, the
# FlintstonesSV settings empty, and the settings with passers-by in them ("two people are walking in the
# quarry ."): people, never a main character, so drawing the characters stays the visualizer's job
GENERAL_DOMAIN = {"vist_photos": 800, "empty_settings": 100, "people": 300}
TINY_TEXT = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 5,
             "vocab_size": 49408, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407,
             "max_position_embeddings": 77}
# SD 1.5's noise schedule (its scheduler/scheduler_config.json)
SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
               "prediction_type": "epsilon", "clip_sample": False, "steps_offset": 1}
# tiny-domain: the same schedule with SD 2's v objective. Measured on the character frames (whole UNet
# fine-tuned 600 steps from the general-domain base, 64 test clips): Char-F1 0.66 against 0.53 with
# epsilon, CLIPScore 71 against 39; a 16x16-latent UNet trained on epsilon draws its frames' layout
# late and blurred, v keeps the low-noise steps from swamping it
DOMAIN_SD_SCHEDULE = {**SD_SCHEDULE, "prediction_type": "v_prediction"}


def clip_tokenizer_from_open_clip(directory: Path) -> None:
    """Save OpenAI CLIP's BPE tokenizer built from the vocabulary that ships inside open_clip, so a
    CLIPTokenizer works with no download: the same 49,408 tokens with the same ids."""
    import gzip

    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    pairs = [tuple(m.split()) for m in merges]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(p) for p in pairs]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    ids = {token: i for i, token in enumerate(vocab)}
    CLIPTokenizer(vocab=ids, merges=pairs, model_max_length=77).save_pretrained(directory)
    # and the two files a download of SD 1.5's tokenizer/ holds, which the tokenizer is built from
    (directory / "vocab.json").write_text(json.dumps(ids, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def clip_text_encoder(clip: nn.Module) -> nn.Module:
    """The text tower of an open_clip model as a transformers CLIPTextModel, weight for weight: the
    encoder a diffusers Stable Diffusion loads (SD 1.5's is OpenAI CLIP ViT-L/14's text tower)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    width = clip.token_embedding.weight.shape[1]
    blocks = clip.transformer.resblocks
    act = "quick_gelu" if type(blocks[0].mlp.gelu).__name__ == "QuickGELU" else "gelu"
    config = CLIPTextConfig(vocab_size=clip.vocab_size, hidden_size=width, num_hidden_layers=len(blocks),
                            num_attention_heads=blocks[0].attn.num_heads, intermediate_size=blocks[0].mlp.c_fc.out_features,
                            max_position_embeddings=clip.context_length, hidden_act=act,
                            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    state = {"embeddings.token_embedding.weight": clip.token_embedding.weight,
             "embeddings.position_embedding.weight": clip.positional_embedding,
             "final_layer_norm.weight": clip.ln_final.weight,
             "final_layer_norm.bias": clip.ln_final.bias}
    for i, block in enumerate(blocks):
        ours = f"encoder.layers.{i}."
        for part in ("weight", "bias"):
            for name, chunk in zip("qkv", getattr(block.attn, f"in_proj_{part}").chunk(3), strict=True):
                state[f"{ours}self_attn.{name}_proj.{part}"] = chunk
            state[f"{ours}self_attn.out_proj.{part}"] = getattr(block.attn.out_proj, part)
            state[f"{ours}layer_norm1.{part}"] = getattr(block.ln_1, part)
            state[f"{ours}layer_norm2.{part}"] = getattr(block.ln_2, part)
            state[f"{ours}mlp.fc1.{part}"] = getattr(block.mlp.c_fc, part)
            state[f"{ours}mlp.fc2.{part}"] = getattr(block.mlp.c_proj, part)
    model = CLIPTextModel(config)
    model.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)
    return model.eval()


def build_tiny_sd(directory: Path, unet: dict = TINY_UNET, vae: dict = TINY_VAE, schedule: dict = SD_SCHEDULE,
                  text_encoder: nn.Module | None = None) -> None:
    """A Stable Diffusion directory of random tiny components (seeded); `text_encoder`: a given one
    in place of the random CLIPTextModel."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(TINY_SEED)
    UNet2DConditionModel(**unet).save_pretrained(directory / "unet")
    AutoencoderKL(**vae).save_pretrained(directory / "vae")
    (text_encoder or CLIPTextModel(CLIPTextConfig(**TINY_TEXT))).save_pretrained(directory / "text_encoder")
    clip_tokenizer_from_open_clip(directory / "tokenizer")
    DDPMScheduler(**schedule).save_pretrained(directory / "scheduler")
    (directory / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "feature_extractor": [None, None],
        "safety_checker": [None, None], "requires_safety_checker": False,
        "scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}))


def sd_source(spec: str) -> str:
    """The hub id or directory to load Stable Diffusion components from."""
    _quiet()
    if spec in TINY_SPECS:
        return str(tiny_backbone_dir(spec, "sd"))
    if spec.startswith((".", "/", "~")) and not (Path(spec).expanduser() / "unet").is_dir():
        raise VisionTalesError(f"{spec}: not a diffusers Stable Diffusion directory (no unet/ inside)")
    return spec


def load_stable_diffusion(spec: str) -> StableDiffusion:
    """UNet, VAE, CLIP text encoder + tokenizer and DDPM noise scheduler (visiontales.sd) for a hub
    id, a local diffusers-layout directory, `tiny` or `tiny-domain`."""
    try:
        return StableDiffusion.from_pretrained(sd_source(spec))
    except (OSError, ValueError) as e:
        raise _missing_weights(spec, "Stable Diffusion", e) from e


def load_vae(spec: str) -> nn.Module:
    """Stable Diffusion's VAE alone (same specs as `load_stable_diffusion`)."""
    from diffusers import AutoencoderKL

    try:
        return AutoencoderKL.from_pretrained(sd_source(spec), subfolder="vae")
    except (OSError, ValueError) as e:
        raise _missing_weights(spec, "Stable Diffusion VAE", e) from e


# ----------------------------------------------------------------------------------------- tiny


def _recipe_dir(kind: str) -> Path:
    """Where the tiny backbone `kind` ("gpt2", ..., "domain-sd") lives: the hash of everything it
    is built from is in the name, so a changed recipe builds a new one instead of reusing a stale one."""
    from data_modules.synthetic import tokenizer_corpus

    recipe = {"kind": kind, "seed": TINY_SEED}
    if kind.removeprefix("domain-") == "gpt2":
        recipe |= {"gpt2": TINY_GPT2, "vocab": TINY_GPT2_VOCAB, "corpus": len(tokenizer_corpus())}
    elif kind.removeprefix("domain-") == "clip":
        recipe |= {"clip": TINY_CLIP}
    elif kind == "sd":
        recipe |= {"unet": TINY_UNET, "vae": TINY_VAE, "text": TINY_TEXT}
    else:  # domain-sd; its text encoder is the tiny-domain CLIP's text tower: that CLIP's recipe counts
        recipe |= {"clip": domain_dir("clip").name, "domain_unet": DOMAIN_UNET, "domain_vae": DOMAIN_VAE,
                   "noise_schedule": DOMAIN_SD_SCHEDULE, "general_domain": GENERAL_DOMAIN}
    if kind.startswith("domain-"):  # only the steps that train this backbone
        keys = DOMAIN_SCHEDULE_KEYS[kind.removeprefix("domain-")]
        recipe["schedule"] = {key: DOMAIN_SCHEDULE[key] for key in keys}
    digest = hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
    return home() / "backbones" / f"tiny-{kind}-{digest}"


def tiny_backbone_dir(spec: str, kind: str) -> Path:
    """The directory of the `tiny` (built here on first use, seconds) or `tiny-domain` (put in place
    by `visiontales bootstrap`) backbone of this kind: "gpt2", "clip" or "sd"."""
    if spec == TINY:
        return build_once(_recipe_dir(kind), TINY_BUILDERS[kind])
    directory = domain_dir(kind)
    if not directory.is_dir():
        raise VisionTalesError(f"the tiny-domain {kind} backbone is not built (expected {directory}): run "
                               f"`visiontales bootstrap` (seconds: it installs the shipped weights) with the same "
                               f"VISIONTALES_HOME")
    return directory


def domain_dir(kind: str) -> Path:
    """The directory of the `tiny-domain` backbone of this kind, as `visiontales bootstrap` writes it."""
    return _recipe_dir(f"domain-{kind}")


def build_once(directory: Path, build) -> Path:
    """Run `build(tmp)` into a temporary sibling of `directory` and rename it into place, once:
    two processes (DDP ranks, parallel tests) never see a half-written directory. The build draws
    from its own copy of torch's RNG, so a seeded run draws the same whether or not it built one."""
    if directory.is_dir():
        return directory
    import shutil

    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        with torch.random.fork_rng(devices=[]):
            build(tmp)
        tmp.rename(directory)
    except OSError:
        if not directory.is_dir():  # a real failure, not another process finishing first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


TINY_BUILDERS = {"gpt2": build_tiny_gpt2, "clip": lambda d: save_tiny_clip(tiny_clip(), d), "sd": build_tiny_sd}
