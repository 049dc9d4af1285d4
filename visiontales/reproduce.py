"""`visiontales reproduce --profile tiny|paper` (`make reproduce-paper PROFILE=...`): every table
and figure of both papers, from one command, into reports/<profile>/index.html.

Each step is the `visiontales` command a person would type (fit, predict, story, evaluate), run as
a subprocess and logged to reports/<profile>/log.txt; runs are written under runs/<profile>/.

- tiny: synthetic VIST and FlintstonesSV (written if absent), the tiny-domain backbones
  (visiontales.bootstrap), experiments/tiny/*.yaml, CPU; the epochs of the papers, shorter epochs.
- paper: the real datasets under data/vist and data/flintstones (or $VIST_ROOT, $FLINTSTONES_ROOT),
  the real weights (GPT-2, CLIP ViT-B/32, Stable Diffusion 1.5) in the Hugging Face cache, a GPU;
  all checked before anything runs.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from visiontales.errors import VisionTalesError

FIRST_CAPTION = "Fred and Barney are talking in the quarry."


@dataclass
class Profile:
    name: str
    experiments: Path
    vist_root: Path
    flintstones_root: Path
    clip: str  # the CLIP that scores CLIPScore
    lora_epochs: int  # the "more than one epoch" LoRA run
    train: dict[str, list[str]] = field(default_factory=dict)  # extra trainer arguments per config
    stories: int = 4


def profiles() -> dict[str, Profile]:
    data = Path(os.environ.get("VISIONTALES_DATA", "data"))
    short = ["--trainer.limit_train_batches", "20"]
    return {
        "tiny": Profile("tiny", Path("experiments/tiny"), data / "vist-synthetic", data / "flintstones-synthetic",
                        "tiny-domain",
                        lora_epochs=4,
                        train={"gan": short, "clip_centric": short, "temporal_coherence": short, "combined": short}),
        "paper": Profile("paper", Path("experiments"), Path(os.environ.get("VIST_ROOT", data / "vist")),
                         Path(os.environ.get("FLINTSTONES_ROOT", data / "flintstones")), "ViT-B-32@openai",
                         lora_epochs=3),
    }


# -------------------------------------------------------------------------------- paper checks


def missing_for_paper(profile: Profile) -> list[str]:
    """One line per missing prerequisite of the paper profile: data files, weights, a GPU."""
    import torch

    problems = []
    vist, flint = profile.vist_root, profile.flintstones_root
    for path, what in ((vist / "annotations" / "sis" / "train.story-in-sequence.json", "VIST SIS annotations"),
                       (vist / "images", "VIST images folder (images/<split>/<photo id>.jpg)"),
                       (flint / "flintstones_annotations_v1-0.json", "FlintstonesSV annotations"),
                       (flint / "train-val-test_split.json", "FlintstonesSV split file"),
                       (flint / "video_frames_sampled", "FlintstonesSV frames folder (<globalID>.npy)")):
        if not path.exists():
            problems.append(f"missing {what}: put it at {path} (see shared reference datasets.md; "
                            f"or set VIST_ROOT / FLINTSTONES_ROOT)")
    from huggingface_hub import try_to_load_from_cache

    for repo, filename, what in (("gpt2", "config.json", "GPT-2 weights"),
                                 ("stable-diffusion-v1-5/stable-diffusion-v1-5", "unet/config.json",
                                  "Stable Diffusion 1.5 weights"),
                                 ("timm/vit_base_patch32_clip_224.openai", "open_clip_config.json",
                                  "CLIP ViT-B/32 (openai) weights")):
        if not isinstance(try_to_load_from_cache(repo, filename), str):
            problems.append(f"missing {what}: download '{repo}' into the Hugging Face cache "
                            f"(huggingface-cli download {repo}; HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')})")
    if not torch.cuda.is_available():
        problems.append("missing a CUDA GPU: the paper profile trains Stable Diffusion 1.5 at 512 px")
    return problems


# ------------------------------------------------------------------------------------- runner


class Runner:
    def __init__(self, profile: Profile, report_dir: Path, runs_dir: Path, reuse: bool = False) -> None:
        self.profile, self.report_dir, self.runs_dir, self.reuse = profile, report_dir, runs_dir, reuse
        report_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(report_dir / "log.txt", "a")
        self.runs: dict[str, dict] = {}  # run name -> {"dir", "config", "command"}
        self.timings: dict[str, float] = {}

    def vt(self, name: str, args: list[str]) -> None:
        """Run one `visiontales` command; stop the whole reproduction if it fails."""
        command = [sys.executable, "-m", "visiontales.cli", *args]
        line = "visiontales " + " ".join(shlex.quote(a) for a in args)
        print(f"[{self.profile.name}] {name}: {line}", flush=True)
        self.log.write(f"\n$ {line}\n")
        self.log.flush()
        start = time.time()
        result = subprocess.run(command, stdout=self.log, stderr=subprocess.STDOUT)
        self.timings[name] = round(time.time() - start, 1)
        if result.returncode:
            raise VisionTalesError(f"step '{name}' failed (exit {result.returncode}); see {self.report_dir / 'log.txt'}")

    def config(self, stem: str) -> Path:
        return self.profile.experiments / f"{stem}.yaml"

    def lightning_args(self, command: str, name: str, stem: str, root: Path) -> list[str]:
        """`visiontales <command>` on `stem`'s config and `root`, logging to runs/<profile>/<name>/."""
        return [command, "--config", str(self.config(stem)), "--data.init_args.root", str(root),
                "--trainer.logger.init_args.save_dir", str(self.runs_dir), "--trainer.logger.init_args.name", name,
                "--trainer.logger.init_args.version", "", "--trainer.enable_progress_bar", "false"]

    def fit(self, name: str, stem: str, root: Path, extra: list[str] = ()) -> Path:
        """Train `stem`'s config as run `name`; returns its log dir (runs/<profile>/<name>)."""
        args = [*self.lightning_args("fit", name, stem, root), *self.profile.train.get(stem, []), *extra]
        run = self.runs_dir / name
        if self.reuse and (run / "checkpoints" / "last.ckpt").is_file():
            print(f"[{self.profile.name}] fit {name}: reusing {run}", flush=True)
        else:
            shutil.rmtree(run, ignore_errors=True)  # a rerun starts clean: no stale events or checkpoints
            self.vt(f"fit {name}", args)
        self.runs[name] = {"dir": str(run), "config": str(run / "config.yaml"), "command": "visiontales " + " ".join(args)}
        return run

    def snapshots(self, epochs: list[int]) -> list[str]:
        return ["--trainer.callbacks+=visiontales.callbacks.EpochSnapshots",
                f"--trainer.callbacks.epochs={json.dumps(epochs)}"]

    def evaluate(self, name: str, args: list[str]) -> Path:
        out = self.report_dir / "eval" / name
        self.vt(f"evaluate {name}", ["evaluate", "--out", str(out), *args])
        return out


def run_profile(profile: Profile, report_dir: Path, runs_dir: Path, reuse: bool = False) -> Path:
    from visiontales.report import build_report

    r = Runner(profile, report_dir, runs_dir, reuse)
    vist, flint = profile.vist_root, profile.flintstones_root
    if profile.name == "tiny":
        for dataset, root in (("vist", vist), ("flintstones", flint)):
            if not root.is_dir():
                r.vt(f"synth {dataset}", ["data", "synth", "--dataset", dataset, "--out", str(root), "--seed", "0"])
        r.vt("bootstrap tiny-domain backbones", ["bootstrap"])
    ck = "checkpoints/last.ckpt"

    # VisionTales: the storyteller, prefix (ours) and prompt (the paper's) conditioning, 7 epochs
    story_prefix = r.fit("storyteller_prefix", "clip_storyteller_prefix", vist, ["--trainer.max_epochs", "7"])
    story_prompt = r.fit("storyteller_prompt", "clip_storyteller", vist, ["--trainer.max_epochs", "7"])
    for name, run in (("storyteller_prefix", story_prefix), ("storyteller_prompt", story_prompt)):
        r.evaluate(name, ["--checkpoint", str(run / ck), "--data-root", str(vist)])
    r.vt("storyteller samples", [*r.lightning_args("predict", "storyteller_samples", "clip_storyteller_prefix", vist),
                                 "--trainer.limit_predict_batches", "1", "--ckpt_path", str(story_prefix / ck)])

    # SAGANets: the character classifier (evaluation), captioner, LoRA visualizer
    classifier = r.fit("character_classifier", "character_classifier", flint) / ck
    captioner = r.fit("captioner", "sagan_captioner", flint, ["--trainer.max_epochs", "1"])
    r.vt("captioner samples", [*r.lightning_args("predict", "captioner_samples", "sagan_captioner", flint),
                               "--trainer.limit_predict_batches", "1", "--ckpt_path", str(captioner / ck)])
    r.evaluate("captioner", ["--checkpoint", str(captioner / ck), "--data-root", str(flint)])
    lora = r.fit("lora", "sagan_lora", flint, ["--trainer.max_epochs", str(profile.lora_epochs), *r.snapshots([1])])
    lora_1, lora_n = lora / "checkpoints/epoch-1.ckpt", lora / ck

    # the GAN at 5 and 20 epochs (one run), the CLIP-centric, temporal-coherence and combined approaches
    gan = r.fit("gan", "gan", flint, ["--trainer.max_epochs", "20", *r.snapshots([5])])
    others = {stem: r.fit(stem, stem, flint, ["--trainer.max_epochs", "10"])
              for stem in ("clip_centric", "temporal_coherence", "combined")}

    # stories: SAGANets after one epoch (Fig. 2), alpha 32 vs 10 (Fig. 3), >1 epoch (Fig. 4), GAN 5 vs 20 (Fig. 7)
    story = ["--captioner", str(captioner / ck), "--first-caption", FIRST_CAPTION, "--frames", "5", "--seed", "0"]
    boards = {"lora_1_alpha10": (lora_1, ["--lora-alpha", "10"]), "lora_1_alpha32": (lora_1, ["--lora-alpha", "32"]),
              f"lora_{profile.lora_epochs}_alpha10": (lora_n, ["--lora-alpha", "10"]),
              "gan_5": (gan / "checkpoints/epoch-5.ckpt", []), "gan_20": (gan / ck, []),
              **{stem: (run / ck, []) for stem, run in others.items()}}
    for name, (checkpoint, extra) in boards.items():
        r.vt(f"story {name}", ["story", "--visualizer", str(checkpoint), *story, *extra,
                               "--out", str(report_dir / "stories" / name)])
    r.vt("stories from test prefixes", [
        *r.lightning_args("predict", "sagan_stories", "sagan_story", flint),
        "--model.init_args.captioner_checkpoint", str(captioner / ck), "--model.init_args.visualizer_checkpoint",
        str(lora_1), "--model.init_args.lora_alpha", "10", "--trainer.limit_predict_batches", str(profile.stories)])

    # image metrics of every visualizer on the same captions and seeds
    image = ["--data-root", str(flint), "--classifier", str(classifier), "--clip", profile.clip]
    visualizers = {"real frames": ["--real-frames"],
                   "LoRA untrained (alpha 0)": ["--checkpoint", str(lora_1), "--lora-alpha", "0"],
                   "LoRA 1 epoch, alpha 32": ["--checkpoint", str(lora_1), "--lora-alpha", "32"],
                   "LoRA 1 epoch, alpha 10": ["--checkpoint", str(lora_1), "--lora-alpha", "10"],
                   f"LoRA {profile.lora_epochs} epochs, alpha 10": ["--checkpoint", str(lora_n), "--lora-alpha", "10"],
                   "GAN 5 epochs": ["--checkpoint", str(gan / "checkpoints/epoch-5.ckpt")],
                   "GAN 20 epochs": ["--checkpoint", str(gan / ck)],
                   **{f"{stem.replace('_', '-')}": ["--checkpoint", str(run / ck)] for stem, run in others.items()}}
    for name, args in visualizers.items():
        r.evaluate(_slug(name), [*args, *image])
    r.evaluate("saganets_pipeline", ["--stories", str(runs_dir / "sagan_stories"), *image])

    manifest = {"profile": profile.name, "vist_root": str(vist), "runs": r.runs, "timings_s": r.timings,
                "visualizers": {name: _slug(name) for name in visualizers}, "boards": list(boards),
                "lora_epochs": profile.lora_epochs}
    (report_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return build_report(report_dir, runs_dir, manifest)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def main(profile_name: str, reports: Path = Path("reports"), runs: Path = Path("runs"), reuse: bool = False) -> int:
    available = profiles()
    if profile_name not in available:
        raise VisionTalesError(f"unknown profile '{profile_name}' (choose {' or '.join(available)})")
    profile = available[profile_name]
    if profile_name == "paper":
        problems = missing_for_paper(profile)
        if problems:
            for line in problems:
                print(f"error: {line}", file=sys.stderr)
            return 2
    start = time.time()
    page = run_profile(profile, reports / profile_name, runs / profile_name, reuse)
    print(f"wrote {page} in {(time.time() - start) / 60:.1f} min")
    return 0
