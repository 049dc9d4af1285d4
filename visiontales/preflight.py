"""What `visiontales reproduce` checks before it runs anything: one line per problem.

- every profile: Java (METEOR and the PTB tokenizer end the first storyteller validation without it);
- paper: the datasets; the weights as they lie after a download (the files each loader reads, in
  the Hugging Face cache under the repo id or a known alias, or in a local directory given to
  `reproduce`), with a download command that fetches those files only; a CUDA GPU; free disk for
  the caches and checkpoints;
- smoke: free disk for the paper-size stand-ins and checkpoints.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from visiontales.errors import VisionTalesError

GB = 1e9
# per role: the files a loader reads, as groups of alternatives (the first is what to download)
WEIGHT_FILES = {
    "gpt2": (("config.json",), ("model.safetensors", "pytorch_model.bin"), ("vocab.json",), ("merges.txt",),
             ("tokenizer_config.json",)),  # its model_max_length: without it nothing truncates to 1024
    "sd": (("unet/config.json",), ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin"),
           ("vae/config.json",), ("vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin"),
           ("text_encoder/config.json",), ("text_encoder/model.safetensors", "text_encoder/pytorch_model.bin"),
           ("tokenizer/vocab.json",), ("tokenizer/merges.txt",), ("tokenizer/tokenizer_config.json",),
           ("scheduler/scheduler_config.json",)),
}
ALIASES = {"openai-community/gpt2": ("gpt2",), "gpt2": ("openai-community/gpt2",),
           "stable-diffusion-v1-5/stable-diffusion-v1-5": ("runwayml/stable-diffusion-v1-5",),
           "runwayml/stable-diffusion-v1-5": ("stable-diffusion-v1-5/stable-diffusion-v1-5",)}
WHAT = {"gpt2": "GPT-2", "clip": "CLIP", "sd": "Stable Diffusion"}
OPTION = {"gpt2": "--gpt2", "clip": "--clip", "sd": "--sd"}
# the latent cache at 512 px (VAE posterior mean and log-variance, fp16, 8x64x64) per frame, the
# caption cache (77x768 fp16) per clip; checkpoints of all runs (GPT-2 runs keep optimizer state)
LATENT_BYTES, CAPTION_BYTES, RUNS_BYTES = 8 * 64 * 64 * 2, 77 * 768 * 2, 12 * GB
STAND_IN_BYTES = 5.2 * GB


def hub_cache() -> str:
    """The Hugging Face cache the steps will read (they start with this environment)."""
    home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
    return os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub")


def _missing(groups, exists) -> list[str]:
    return [group[0] for group in groups if not any(exists(f) for f in group)]


def _in_cache(repo: str, groups) -> list[str]:
    from huggingface_hub import try_to_load_from_cache

    return _missing(groups, lambda f: isinstance(try_to_load_from_cache(repo, f, cache_dir=hub_cache()), str))


def _download(repo: str, files: list[str]) -> str:
    return f"hf download {repo} {' '.join(files)}"


def check_hub_weights(role: str, spec: str) -> tuple[str, list[str]]:
    """(the spec to use, problems) for a GPT-2 or Stable Diffusion spec: a local directory, or a hub
    id found in the Hugging Face cache under itself or an alias."""
    groups = WEIGHT_FILES[role]
    if Path(spec).expanduser().is_dir():
        missing = _missing(groups, lambda f: (Path(spec).expanduser() / f).is_file())
        if missing:
            return spec, [f"{WHAT[role]} directory {spec} lacks {', '.join(missing)} (expected the files of "
                          f"`save_pretrained`{' in the diffusers layout' if role == 'sd' else ''})"]
        return spec, []
    if spec.startswith((".", "/", "~")):
        return spec, [f"{WHAT[role]} directory {spec} not found ({OPTION[role]})"]
    missing = _in_cache(spec, groups)
    if not missing:
        return spec, []
    for alias in ALIASES.get(spec, ()):
        if not _in_cache(alias, groups):
            return alias, []
    return spec, [f"{WHAT[role]} weights '{spec}' are not in the Hugging Face cache {hub_cache()} (missing "
                  f"{', '.join(missing)}): `{_download(spec, missing)}`, or pass a local directory with "
                  f"{OPTION[role]} DIR"]


def check_clip(spec: str) -> list[str]:
    """Problems of an open_clip spec: `model@tag` (activation matches the weights, the weights file in
    the cache), `model@file`, a local directory, or `hf-hub:`."""
    import open_clip

    from visiontales.backbones import check_activation

    if Path(spec).expanduser().is_dir():
        folder = Path(spec).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            return [f"CLIP directory {spec} lacks open_clip_config.json (for open_clip weights alone, give "
                    f"--clip <model>@<weights file>, e.g. ViT-B-32-quickgelu@{folder}/open_clip_pytorch_model.bin)"]
        return []
    if "@" not in spec:
        return [] if spec.startswith("hf-hub:") else [f"CLIP spec '{spec}' is not <model>@<tag>, a directory or hf-hub:"]
    name, pretrained = spec.split("@", 1)
    if open_clip.get_model_config(name) is None:
        return [f"CLIP spec '{spec}': open_clip has no model '{name}'"]
    try:
        check_activation(name, pretrained)
    except VisionTalesError as e:
        return [str(e)]
    if pretrained.startswith((".", "/", "~")) or pretrained.endswith((".bin", ".pt", ".safetensors")):
        return [] if Path(pretrained).expanduser().is_file() else [f"CLIP weights file {pretrained} not found"]
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not cfg.get("hf_hub"):
        return [f"CLIP spec '{spec}': open_clip has no pretrained tag '{pretrained}' for {name} on the Hugging Face Hub"]
    repo, filename = os.path.split(cfg["hf_hub"])  # "org/name/" or "org/name/file", as open_clip reads it
    filename = filename or "open_clip_pytorch_model.bin"
    safe = filename.rsplit(".", 1)[0].replace("pytorch_model", "model") + ".safetensors"  # tried first
    if _in_cache(repo, ((safe, filename),)):
        return [f"CLIP weights '{spec}' are not in the Hugging Face cache {hub_cache()} (open_clip reads {repo}/"
                f"{safe} or {filename}): `{_download(repo, [filename])}`, or pass --clip <model>@<weights file>"]
    return []


def check_java() -> list[str]:
    java = shutil.which("java")
    if java is None:
        return ["java not found on PATH: METEOR and the PTB tokenizer (pycocoevalcap) need a Java runtime, and the "
                "first storyteller validation would fail without it (apt-get install default-jre-headless)"]
    try:
        subprocess.run([java, "-version"], capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        return [f"{java} does not run ({type(e).__name__}): METEOR and the PTB tokenizer need a working Java runtime"]
    return []


def check_data(vist: Path, flintstones: Path) -> list[str]:
    problems = []
    for path, what in ((vist / "annotations" / "sis" / "train.story-in-sequence.json", "VIST SIS annotations"),
                       (vist / "images", "VIST images folder (images/<split>/<photo id>.jpg)"),
                       (flintstones / "flintstones_annotations_v1-0.json", "FlintstonesSV annotations"),
                       (flintstones / "train-val-test_split.json", "FlintstonesSV split file"),
                       (flintstones / "video_frames_sampled", "FlintstonesSV frames folder (<globalID>.npy)")):
        if not path.exists():
            problems.append(f"missing {what}: put it at {path} (see README, 'Using the real VIST / FlintstonesSV'; "
                            f"or set VIST_ROOT / FLINTSTONES_ROOT)")
    return problems


def paper_disk_bytes(flintstones: Path) -> float:
    """Disk the paper profile writes: the LoRA latent and caption caches of FlintstonesSV at 512 px, and
    the runs' checkpoints."""
    import json

    try:
        clips = sum(len(ids) for ids in json.loads((flintstones / "train-val-test_split.json").read_text()).values())
    except (OSError, ValueError):
        clips = 25_184  # the real FlintstonesSV
    return clips * (5 * LATENT_BYTES + CAPTION_BYTES) + RUNS_BYTES


def check_disk(folder: Path, needed: float, what: str) -> list[str]:
    folder = next(p for p in (folder, *folder.parents) if p.exists())
    free = shutil.disk_usage(folder).free
    if free < needed:
        return [f"{folder} has {free / GB:.1f} GB free; {what} need about {needed / GB:.1f} GB"]
    return []


def preflight(profile) -> list[str]:
    """Every problem that would stop `profile` (a reproduce.Profile), one line each; resolves the
    profile's backbone specs to the alias they were found under."""
    import torch

    from visiontales.backbones import home

    problems = check_java()
    if profile.name == "smoke":
        from visiontales.stand_ins import hub_cache as stand_in_cache

        built = (stand_in_cache() / "models--stable-diffusion-v1-5--stable-diffusion-v1-5").is_dir()
        problems += check_disk(home(), RUNS_BYTES + (0 if built else STAND_IN_BYTES),
                               "the paper-size stand-ins and the runs' checkpoints")
    if profile.name != "paper":
        return problems
    problems += check_data(profile.vist_root, profile.flintstones_root)
    for role in ("gpt2", "sd"):
        profile.backbones[role], found = check_hub_weights(role, profile.backbones[role])
        problems += found
    problems += check_clip(profile.backbones["clip"])
    if not torch.cuda.is_available():
        problems.append("no CUDA GPU: the paper profile trains Stable Diffusion 1.5 at 512 px (days on a CPU); "
                        "`make smoke-paper` runs its steps at real size with shrunk counts on a CPU")
    problems += check_disk(home(), paper_disk_bytes(profile.flintstones_root), "the LoRA caches and checkpoints")
    return problems
