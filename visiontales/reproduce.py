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
from typing import Literal

from visiontales.errors import VisionTalesError

FIRST_CAPTION = "Fred and Barney are talking in the quarry."


@dataclass
class Profile:
    name: str
    experiments: Path
    vist_root: Path
    flintstones_root: Path
    clip: str  # the CLIP that scores CLIPScore
    epochs: dict[str, int]  # epochs per run where the profile sets them ("lora": the "more than one epoch" run)
    train: dict[str, list[str]] = field(default_factory=dict)  # extra trainer arguments per run
    stories: int = 4

    @property
    def lora_epochs(self) -> int:
        return self.epochs["lora"]


def profiles() -> dict[str, Profile]:
    data = Path(os.environ.get("VISIONTALES_DATA", "data"))
    short = ["--trainer.limit_train_batches", "20"]
    return {
        "tiny": Profile("tiny", Path("experiments/tiny"), data / "vist-synthetic", data / "flintstones-synthetic",
                        "tiny-domain", epochs={"lora": 4},
                        train={"gan": short, "clip_centric": short, "temporal_coherence": short, "combined": short}),
        "paper": Profile("paper", Path("experiments"), Path(os.environ.get("VIST_ROOT", data / "vist")),
                         Path(os.environ.get("FLINTSTONES_ROOT", data / "flintstones")), "ViT-B-32@openai",
                         epochs={"lora": 3}),
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
            problems.append(f"missing {what}: put it at {path} (see README, 'Using the real VIST / "
                            f"FlintstonesSV'; or set VIST_ROOT / FLINTSTONES_ROOT)")
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
        args = [*self.lightning_args("fit", name, stem, root), *self.profile.train.get(name, []), *extra]
        run = self.runs_dir / name
        if self.reuse and (run / "checkpoints" / "last.ckpt").is_file():
            print(f"[{self.profile.name}] fit {name}: reusing {run}", flush=True)
        else:
            shutil.rmtree(run, ignore_errors=True)  # a rerun starts clean: no stale events or checkpoints
            self.vt(f"fit {name}", args)
        self.runs[name] = {"dir": str(run), "config": str(run / "config.yaml"), "command": "visiontales " + " ".join(args)}
        return run

    def snapshots(self, epochs: tuple[int, ...]) -> list[str]:
        if not epochs:
            return []
        return ["--trainer.callbacks+=visiontales.callbacks.EpochSnapshots",
                f"--trainer.callbacks.epochs={json.dumps(list(epochs))}"]

    def evaluate(self, name: str, args: list[str]) -> Path:
        out = self.report_dir / "eval" / name
        self.vt(f"evaluate {name}", ["evaluate", "--out", str(out), *args])
        return out


@dataclass(frozen=True)
class Run:
    """A training run: `visiontales fit` on a config of the profile, logged to runs/<profile>/<name>."""

    name: str
    config: str  # experiments[/tiny]/<config>.yaml
    dataset: str  # "vist" or "flintstones"
    epochs: int | None = None  # None: the profile's (Profile.epochs), else the config's
    snapshots: tuple[int, ...] = ()  # epochs also kept as checkpoints/epoch-<n>.ckpt


@dataclass(frozen=True)
class Use:
    """A checkpoint of a run, and the LoRA alpha to draw with (None: the checkpoint's)."""

    run: str
    checkpoint: str = "last"  # "last", "best" or "epoch-<n>" (a snapshot)
    lora_alpha: float | None = None


@dataclass(frozen=True)
class Row:
    """A row of the results table: `visiontales evaluate` of one checkpoint (or of the real frames,
    or of the stories predicted from test prefixes) into reports/<profile>/eval/<id>."""

    id: str
    label: str
    source: Use | Literal["real frames", "stories"]


RUNS = (
    Run("storyteller_prefix", "clip_storyteller_prefix", "vist", 7),
    Run("storyteller_prompt", "clip_storyteller", "vist", 7),
    Run("character_classifier", "character_classifier", "flintstones"),
    Run("captioner", "sagan_captioner", "flintstones", 1),
    Run("lora", "sagan_lora", "flintstones", snapshots=(1,)),
    Run("gan", "gan", "flintstones", 20, snapshots=(5,)),
    Run("clip_centric", "clip_centric", "flintstones", 10),
    Run("temporal_coherence", "temporal_coherence", "flintstones", 10),
    Run("combined", "combined", "flintstones", 10),
)
LORA_1 = Use("lora", "epoch-1", lora_alpha=10)
# storyboards of FIRST_CAPTION: SAGANets after one epoch (Fig. 2), alpha 32 vs 10 (Fig. 3), more
# epochs (Fig. 4), the GAN at 20 and 5 epochs (Fig. 7), the other approaches
BOARDS = {
    "lora_alpha10": LORA_1,
    "lora_alpha32": Use("lora", "epoch-1", lora_alpha=32),
    "lora_more_epochs": Use("lora", "last", lora_alpha=10),
    "gan": Use("gan"), "gan_5": Use("gan", "epoch-5"),
    "clip_centric": Use("clip_centric"), "temporal_coherence": Use("temporal_coherence"), "combined": Use("combined"),
}
ROWS = (
    Row("storyteller_prefix", "CLIPStoryteller, prefix conditioning", Use("storyteller_prefix")),
    Row("storyteller_prompt", "CLIPStoryteller, prompt conditioning (paper)", Use("storyteller_prompt")),
    Row("captioner", "SAGANets captioner (1 epoch; Char-F1 of the characters its captions name)", Use("captioner")),
    Row("real_frames", "real frames", "real frames"),
    Row("lora_untrained", "LoRA untrained (alpha 0)", Use("lora", "epoch-1", lora_alpha=0)),
    Row("lora_alpha32", "LoRA 1 epoch, alpha 32", BOARDS["lora_alpha32"]),
    Row("lora", "LoRA 1 epoch, alpha 10", LORA_1),
    Row("lora_more_epochs", "LoRA {lora_epochs} epochs, alpha 10", BOARDS["lora_more_epochs"]),
    Row("gan_5", "GAN 5 epochs", BOARDS["gan_5"]),
    Row("gan", "GAN 20 epochs", BOARDS["gan"]),
    Row("clip_centric", "CLIP-centric", BOARDS["clip_centric"]),
    Row("temporal_coherence", "temporal coherence", BOARDS["temporal_coherence"]),
    Row("combined", "combined", BOARDS["combined"]),
    Row("story_pipeline", "SAGANets pipeline (captioner + LoRA 1 epoch, alpha 10)", "stories"),
)
STORIES_FROM_PREFIXES = LORA_1  # the visualizer of the stories continued from test prefixes


def run_profile(profile: Profile, report_dir: Path, runs_dir: Path, reuse: bool = False) -> Path:
    """Every run of RUNS, the BOARDS, the stories from test prefixes and every row of ROWS, then
    the report."""
    from visiontales.report import build_report

    r = Runner(profile, report_dir, runs_dir, reuse)
    roots = {"vist": profile.vist_root, "flintstones": profile.flintstones_root}
    if profile.name == "tiny":
        for dataset, root in roots.items():
            if not root.is_dir():
                r.vt(f"synth {dataset}", ["data", "synth", "--dataset", dataset, "--out", str(root), "--seed", "0"])
        r.vt("bootstrap tiny-domain backbones", ["bootstrap"])
    runs = {}
    for run in RUNS:
        epochs = profile.epochs.get(run.name, run.epochs)
        extra = [] if epochs is None else ["--trainer.max_epochs", str(epochs)]
        runs[run.name] = r.fit(run.name, run.config, roots[run.dataset], [*extra, *r.snapshots(run.snapshots)])

    def checkpoint(use: Use) -> str:
        return str(runs[use.run] / "checkpoints" / f"{use.checkpoint}.ckpt")

    def alpha(use: Use) -> list[str]:
        return [] if use.lora_alpha is None else ["--lora-alpha", str(use.lora_alpha)]

    vist, flint = roots["vist"], roots["flintstones"]
    last = {name: runs[name] / "checkpoints" / "last.ckpt" for name in runs}
    r.vt("storyteller samples", [*r.lightning_args("predict", "storyteller_samples", "clip_storyteller_prefix", vist),
                                 "--trainer.limit_predict_batches", "1", "--ckpt_path", str(last["storyteller_prefix"])])
    r.vt("captioner samples", [*r.lightning_args("predict", "captioner_samples", "sagan_captioner", flint),
                               "--trainer.limit_predict_batches", "1", "--ckpt_path", str(last["captioner"])])
    story = ["--captioner", str(last["captioner"]), "--first-caption", FIRST_CAPTION, "--frames", "5", "--seed", "0"]
    for name, use in BOARDS.items():
        r.vt(f"story {name}", ["story", "--visualizer", checkpoint(use), *story, *alpha(use),
                               "--out", str(report_dir / "stories" / name)])
    r.vt("stories from test prefixes", [
        *r.lightning_args("predict", "sagan_stories", "sagan_story", flint),
        "--model.init_args.captioner_checkpoint", str(last["captioner"]),
        "--model.init_args.visualizer_checkpoint", checkpoint(STORIES_FROM_PREFIXES),
        "--model.init_args.lora_alpha", str(STORIES_FROM_PREFIXES.lora_alpha),
        "--trainer.limit_predict_batches", str(profile.stories)])

    # every row on the same split, captions and seeds; the image options are ignored for text models
    image = ["--classifier", str(last["character_classifier"]), "--clip", profile.clip]
    dataset_of = {run.name: run.dataset for run in RUNS}
    for row in ROWS:
        if isinstance(row.source, Use):
            args = ["--checkpoint", checkpoint(row.source), *alpha(row.source),
                    "--data-root", str(roots[dataset_of[row.source.run]])]
        elif row.source == "real frames":
            args = ["--real-frames", "--data-root", str(flint)]
        else:
            args = ["--stories", str(runs_dir / "sagan_stories"), "--data-root", str(flint)]
        r.evaluate(row.id, [*args, *image])

    manifest = {"profile": profile.name, "vist_root": str(vist), "runs": r.runs, "timings_s": r.timings,
                "rows": [{"id": row.id, "label": row.label.format(lora_epochs=profile.lora_epochs)} for row in ROWS],
                "boards": list(BOARDS), "lora_epochs": profile.lora_epochs}
    (report_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return build_report(report_dir, runs_dir, manifest)


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
