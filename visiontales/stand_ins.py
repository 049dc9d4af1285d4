"""The paper's backbones at their real size, with random weights, where their downloads would lie.

`visiontales bootstrap --paper-size` builds GPT-2 124M, open_clip ViT-B-32-quickgelu and the
Stable Diffusion 1.5 components (UNet, VAE, CLIP text encoder, tokenizer, scheduler) from their
published configs and writes them as a Hugging Face cache (`$VISIONTALES_HOME/paper-size/hub`:
models--<org>--<name>/{blobs,snapshots/<commit>,refs/main}) under the real repo ids. With
HF_HUB_CACHE pointing there and HF_HUB_OFFLINE=1, the paper configs load them by their usual specs
(`openai-community/gpt2`, `ViT-B-32-quickgelu@openai`, `stable-diffusion-v1-5/stable-diffusion-v1-5`)
through the same loading code as the real weights: what `reproduce --profile smoke` runs on.

Two parts are stand-ins: the weights are random, and GPT-2's BPE files (which ship with no
package) are a byte-level BPE learned from the synthetic sentences, padded with unused tokens to
GPT-2's 50,257 ids (<|endoftext|> last, as in GPT-2).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from visiontales.backbones import SD15, build_once, clip_tokenizer_from_open_clip, home

GPT2 = "openai-community/gpt2"
CLIP = "ViT-B-32-quickgelu@openai"
CLIP_REPO = "timm/vit_base_patch32_clip_224.openai"  # where open_clip 3.x downloads the openai weights
SEED = 0
GPT2_VOCAB = 50257
# stable-diffusion-v1-5's model_index.json and component configs
SD15_MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"]}
SD15_UNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}
SD15_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 512, "up_block_types": ["UpDecoderBlock2D"] * 4}
SD15_TEXT_ENCODER = {
    "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2, "hidden_act": "quick_gelu",
    "hidden_size": 768, "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 3072,
    "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "num_attention_heads": 12, "num_hidden_layers": 12,
    "pad_token_id": 1, "projection_dim": 768, "vocab_size": 49408}
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None, "clip_sample": False}
RECIPE = {"seed": SEED, "unet": SD15_UNET, "vae": SD15_VAE, "text": SD15_TEXT_ENCODER, "vocab": GPT2_VOCAB}


def hub_cache() -> Path:
    """The Hugging Face cache the paper-size stand-ins are written to (HF_HUB_CACHE for the smoke)."""
    return home() / "paper-size" / "hub"


def hub_environment() -> dict[str, str]:
    """Environment under which the stand-ins load by their hub ids, offline."""
    return {"HF_HUB_CACHE": str(hub_cache()), "HF_HUB_OFFLINE": "1"}


def repo_dir(cache: Path, repo_id: str) -> Path:
    return cache / f"models--{repo_id.replace('/', '--')}"


def write_hub_repo(cache: Path, repo_id: str, files: Path) -> Path:
    """Move the files under `files` into `cache` laid out as huggingface_hub's download of
    `repo_id` (content-addressed blobs, a snapshot of relative symlinks, refs/main)."""
    repo = repo_dir(cache, repo_id)
    commit = hashlib.sha1(json.dumps({"repo": repo_id, **RECIPE}, sort_keys=True).encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for path in sorted(p for p in files.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                digest.update(chunk)
        blob = repo / "blobs" / digest.hexdigest()
        shutil.move(path, blob)
        link = snapshot / path.relative_to(files)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def gpt2_tokenizer_files(directory: Path) -> None:
    """vocab.json, merges.txt and tokenizer_config.json of a byte-level BPE with GPT-2's 50,257 ids
    (see the module docstring)."""
    from tokenizers import ByteLevelBPETokenizer

    from data_modules.synthetic import tokenizer_corpus

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(tokenizer_corpus(), vocab_size=GPT2_VOCAB - 1, min_frequency=1, show_progress=False)
    bpe.save_model(str(directory))
    vocab = json.loads((directory / "vocab.json").read_text())
    vocab.update({f"<|unused{i}|>": i for i in range(len(vocab), GPT2_VOCAB - 1)})
    vocab["<|endoftext|>"] = GPT2_VOCAB - 1
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1024}))  # as GPT-2's


def build_gpt2(directory: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(SEED)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(directory)  # GPT2Config's defaults are GPT-2 124M
    gpt2_tokenizer_files(directory)


def build_clip(directory: Path) -> None:
    import open_clip
    import safetensors.torch

    torch.manual_seed(SEED)
    model = open_clip.create_model(CLIP.split("@")[0], pretrained=None)
    safetensors.torch.save_file(model.state_dict(), directory / "open_clip_model.safetensors")


def build_sd(directory: Path) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(SEED)
    UNet2DConditionModel(**SD15_UNET).save_pretrained(directory / "unet")
    AutoencoderKL(**SD15_VAE).save_pretrained(directory / "vae")
    CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER)).save_pretrained(directory / "text_encoder")
    clip_tokenizer_from_open_clip(directory / "tokenizer")
    (directory / "tokenizer" / "tokenizer.json").unlink()  # not in SD 1.5's tokenizer/: built from vocab and merges
    (directory / "scheduler").mkdir()
    (directory / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER, indent=2))
    (directory / "model_index.json").write_text(json.dumps(SD15_MODEL_INDEX, indent=2))


STAND_INS = ((GPT2, build_gpt2), (CLIP_REPO, build_clip), (SD15, build_sd))


def build_paper_size_backbones(cache: Path | None = None) -> Path:
    """Build every stand-in once into the cache (a repo already there is kept); returns the cache."""
    cache = cache or hub_cache()
    for repo_id, build in STAND_INS:
        if (repo_dir(cache, repo_id) / "refs" / "main").is_file():
            continue

        def into_hub(tmp: Path, repo_id=repo_id, build=build) -> None:
            files = tmp / "files"
            files.mkdir()
            build(files)
            write_hub_repo(tmp / "hub", repo_id, files)

        built = build_once(cache.parent / f"build-{repo_dir(cache, repo_id).name}", into_hub)
        cache.mkdir(parents=True, exist_ok=True)
        (built / "hub" / repo_dir(cache, repo_id).name).rename(repo_dir(cache, repo_id))
        shutil.rmtree(built, ignore_errors=True)
    return cache
