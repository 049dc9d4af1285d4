"""`visiontales reproduce --profile tiny|paper` (`make reproduce-paper PROFILE=...`): every table
and figure of both papers, from one command, into reports/<profile>/index.html.

Each step is the `visiontales` command a person would type (fit, predict, story, evaluate), run in a
process of its own and logged to reports/<profile>/log.txt; runs are written under runs/<profile>/.

- tiny: synthetic VIST and FlintstonesSV (written if absent), the tiny-domain backbones
  (visiontales.bootstrap), experiments/tiny/*.yaml, CPU; the epochs of the papers, shorter epochs.
- paper: the real datasets under data/vist and data/flintstones (or $VIST_ROOT, $FLINTSTONES_ROOT),
  the real weights (GPT-2, CLIP ViT-B/32, Stable Diffusion 1.5) in the Hugging Face cache, a GPU;
  all checked before anything runs.
"""

from __future__ import annotations

import contextlib
import functools
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


COUNTS = ("--trainer.max_epochs", "--trainer.limit_train_batches", "--trainer.limit_val_batches",
          "--trainer.limit_predict_batches", "--data.init_args.batch_size", "--data.init_args.eval_batch_size",
          "--model.init_args.num_inference_steps", "--model.init_args.val_samples", "--model.init_args.samples_to_log",
          "--frames", "--max-frames", "--trainer.callbacks.epochs")
"""The options by which one profile's steps may differ from another's: counts, never what is run."""


@dataclass
class Profile:
    name: str
    experiments: Path
    vist_root: Path
    flintstones_root: Path
    backbones: dict[str, str]  # the specs the configs name, by role (gpt2, clip, sd); clip also scores CLIPScore
    epochs: dict[str, int]  # epochs per run where the profile sets them ("lora": the "more than one epoch" run)
    train: dict[str, list[str]] = field(default_factory=dict)  # extra trainer arguments per run
    train_all: list[str] = field(default_factory=list)  # extra arguments of every fit
    snapshots: dict[int, int] = field(default_factory=dict)  # a run's snapshot epoch -> the one kept here
    stories: int = 4  # test stories continued from their prefixes (predict batches)
    board_frames: int = 5  # frames of each storyboard
    predict: list[str] = field(default_factory=list)  # extra arguments of predict steps
    evaluate: list[str] = field(default_factory=list)  # extra arguments of image evaluations
    sample: list[str] = field(default_factory=list)  # placement of story and evaluate (--device, --precision)
    env: dict[str, str] = field(default_factory=dict)  # environment of every step
    # each step forked from a process that imported the libraries once (PRELOAD), instead of a fresh
    # `python -m visiontales.cli`: the CPU profile, where the imports are 4-13 s of each of ~40 steps.
    # Not where a step may start DDP: Lightning relaunches the ranks from the command line.
    forked: bool = False

    @property
    def lora_epochs(self) -> int:
        return self.epochs["lora"]

    @property
    def clip(self) -> str:
        return self.backbones["clip"]

    def snapshot(self, epoch: int) -> int:
        return self.snapshots.get(epoch, epoch)


PAPER_BACKBONES = {"gpt2": "openai-community/gpt2", "clip": "ViT-B-32-quickgelu@openai",
                   "sd": "stable-diffusion-v1-5/stable-diffusion-v1-5"}


def profiles() -> dict[str, Profile]:
    from visiontales.stand_ins import hub_environment

    data = Path(os.environ.get("VISIONTALES_DATA", "data"))
    short = ["--trainer.limit_train_batches", "80"]  # 160 stories an epoch (the GAN family: 2 a batch)
    tiny_domain = dict.fromkeys(PAPER_BACKBONES, "tiny-domain")
    paper = Profile("paper", Path("experiments"), Path(os.environ.get("VIST_ROOT", data / "vist")),
                    Path(os.environ.get("FLINTSTONES_ROOT", data / "flintstones")), dict(PAPER_BACKBONES),
                    epochs={"lora": 3}, sample=["--precision", "bf16-mixed"])
    # the paper's steps at real size with every count shrunk, on whatever device is there
    smoke_epochs = {"storyteller_prefix": 1, "storyteller_prompt": 1, "character_classifier": 1, "captioner": 1,
                    "lora": 2, "gan": 2, "clip_centric": 1, "temporal_coherence": 1, "combined": 1}
    smoke = Profile(
        "smoke", Path("experiments"), data / "vist-smoke", data / "flintstones-smoke", dict(PAPER_BACKBONES),
        epochs=smoke_epochs, snapshots={1: 1, 5: 1}, stories=1, board_frames=2,
        train_all=["--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
                   "--data.init_args.batch_size", "1", "--data.init_args.eval_batch_size", "1"],
        train={"lora": ["--model.init_args.num_inference_steps", "1", "--model.init_args.val_samples", "1"]},
        predict=["--data.init_args.eval_batch_size", "1"], evaluate=["--max-frames", "2"], sample=list(paper.sample), env={**hub_environment(), "HF_HUB_VERBOSITY": "error"})
    return {
        "tiny": Profile("tiny", Path("experiments/tiny"), data / "vist-synthetic", data / "flintstones-synthetic",
                        tiny_domain, epochs={"lora": 4},
                        train={"gan": short, "clip_centric": short, "temporal_coherence": short, "combined": short},
                        forked=True),
        "smoke": smoke,
        "paper": paper,
    }


# ------------------------------------------------------------------------------------- runner


@dataclass
class Step:
    """One `visiontales` command of a reproduction; `run` names the training run a fit step writes."""

    name: str
    args: list[str]
    run: str | None = None


def resolved_config(text: str) -> str:
    """A hash of a resolved LightningCLI config (its YAML), `ckpt_path` aside: what makes a run the same run."""
    import hashlib

    import yaml

    config = yaml.safe_load(text) or {}
    config.pop("ckpt_path", None)
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


# what the steps of a forked profile import, imported once by their parent (the fork server)
PRELOAD = ["lightning.pytorch.cli", "transformers", "diffusers", "peft", "open_clip", "torchmetrics",
           "visiontales.cli", "visiontales.models.lora_diffusion", "visiontales.models.gan",
           "visiontales.models.captioner", "visiontales.models.storyteller", "visiontales.evaluation.evaluate",
           "data_modules.flintstones", "data_modules.vist"]


def serve_steps() -> None:
    """The fork server of a forked profile (`python -m visiontales.reproduce`, started by Runner): imports
    PRELOAD once, then for each line `[args, log]` on stdin forks a child that runs `visiontales <args>`
    with its output appended to `log`, and answers with the child's exit status on stdout."""
    import importlib
    import traceback

    for module in PRELOAD:
        importlib.import_module(module)
    for line in sys.stdin:
        args, log = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.dup2(os.open(os.devnull, os.O_RDONLY), sys.stdin.fileno())  # the server's requests are not its
                fd = os.open(log, os.O_WRONLY | os.O_APPEND)
                os.dup2(fd, sys.stdout.fileno())
                os.dup2(fd, sys.stderr.fileno())
                os.close(fd)
                sys.argv = ["visiontales", *args]
                from visiontales.cli import main

                code = main(args)
            except SystemExit as e:  # argparse and jsonargparse exit on bad arguments
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)


class Runner:
    """Runs steps each in a process of its own (a subprocess, or a child of a fork server that
    imported the libraries once: Profile.forked), logging each command and its output to log.txt.

    A fit step's run directory holds `finished.json` (the hash of its resolved config) once its
    last epoch is done. With `reuse`, a finished run of the same config is kept, an interrupted one
    (no marker, a last.ckpt, the same config) resumes from last.ckpt, anything else trains anew."""

    def __init__(self, profile: Profile, report_dir: Path, runs_dir: Path, reuse: bool = False) -> None:
        self.profile, self.report_dir, self.runs_dir, self.reuse = profile, report_dir, runs_dir, reuse
        report_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(report_dir / "log.txt", "a")
        self.runs: dict[str, dict] = {}  # run name -> {"dir", "config", "command"}
        self.timings: dict[str, float] = {}
        self.finished: list[str] = []

    def command(self, args: list[str]) -> list[str]:
        return [sys.executable, "-m", "visiontales.cli", *args]

    def vt(self, name: str, args: list[str]) -> None:
        """Run one `visiontales` command; stop the whole reproduction if it fails."""
        line = "visiontales " + " ".join(shlex.quote(a) for a in args)
        print(f"[{self.profile.name}] {name}: {line}", flush=True)
        self.log.write(f"\n$ {line}\n")
        self.log.flush()
        start = time.time()
        if self.profile.forked:
            code = self.run_forked(args)
        else:
            code = subprocess.run(self.command(args), stdout=self.log, stderr=subprocess.STDOUT,
                                  env={**os.environ, **self.profile.env}).returncode
        self.timings[name] = round(time.time() - start, 1)
        self.log.write(f"# {name}: {self.timings[name]} s, exit {code}\n")
        self.log.flush()
        if code:
            kept = f"; `--reuse` keeps the {len(self.finished)} finished run(s) and resumes an interrupted one" \
                if self.finished or args[0] == "fit" else ""
            raise VisionTalesError(f"step '{name}' failed (exit {code}); see "
                                   f"{self.report_dir / 'log.txt'}{kept}")

    @functools.cached_property
    def fork_server(self) -> subprocess.Popen:
        """The process the steps of a forked profile are forked from (serve_steps)."""
        return subprocess.Popen([sys.executable, "-m", "visiontales.reproduce"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=self.log, text=True,
                                env={**os.environ, **self.profile.env})

    def run_forked(self, args: list[str]) -> int:
        """Run `visiontales <args>` in a child of the fork server; its exit status."""
        self.fork_server.stdin.write(json.dumps([args, self.log.name]) + "\n")
        self.fork_server.stdin.flush()
        answer = self.fork_server.stdout.readline()
        if not answer:
            raise VisionTalesError(f"the process the steps are forked from stopped; see {self.log.name}")
        return int(answer)

    def close(self) -> int | None:
        """Stop the fork server, if one started (its stdin closed, it leaves its loop), and close
        the log; the server's exit status."""
        server = self.__dict__.pop("fork_server", None)  # the cached_property's value, where it started
        code = None
        if server is not None:
            server.stdin.close()
            code = server.wait(timeout=60)
        self.log.close()
        return code

    def config_hash(self, args: list[str]) -> str:
        """The hash of the config `visiontales fit <args>` would resolve (LightningCLI's --print_config)."""
        result = subprocess.run(self.command([*args, "--print_config"]), capture_output=True, text=True,
                                env={**os.environ, **self.profile.env})
        if result.returncode:
            raise VisionTalesError(f"cannot resolve the config of `visiontales {' '.join(args)}`: "
                                   f"{(result.stderr.strip().splitlines() or [''])[-1]}")
        return resolved_config(result.stdout)

    def fit(self, step: Step) -> Path:
        """Train a run (or keep or resume it, see the class); returns its log dir."""
        run = self.runs_dir / step.run
        marker, last = run / "finished.json", run / "checkpoints" / "last.ckpt"
        args, action = step.args, "train"
        if self.reuse and run.is_dir():
            wanted = self.config_hash(step.args)
            done = json.loads(marker.read_text()) if marker.is_file() else {}
            saved = run / "config.yaml"
            if done.get("config") == wanted:
                action = "keep"
            elif not done and last.is_file() and saved.is_file() and resolved_config(saved.read_text()) == wanted:
                action, args = "resume", [*step.args, "--ckpt_path", str(last)]
        if action == "keep":
            print(f"[{self.profile.name}] {step.name}: finished before with the same config, kept ({run})", flush=True)
        else:
            if action == "train":
                shutil.rmtree(run, ignore_errors=True)  # a rerun starts clean: no stale events or checkpoints
            self.vt(f"{step.name} ({action})" if action == "resume" else step.name, args)
            marker.write_text(json.dumps({"config": resolved_config((run / "config.yaml").read_text()),
                                          "finished": time.strftime("%Y-%m-%d %H:%M:%S")}))
        self.finished.append(step.run)
        self.runs[step.run] = {"dir": str(run), "config": str(run / "config.yaml"),
                               "command": "visiontales " + " ".join(step.args)}
        return run

    def lightning_args(self, command: str, name: str, config: str, root: Path) -> list[str]:
        """`visiontales <command>` on a config of the profile and `root`, logging to runs/<profile>/<name>/."""
        return [command, "--config", str(self.profile.experiments / f"{config}.yaml"), "--data.init_args.root",
                str(root), "--trainer.logger.init_args.save_dir", str(self.runs_dir), "--trainer.logger.init_args.name",
                name, "--trainer.logger.init_args.version", "", "--trainer.enable_progress_bar", "false"]


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
    source: Use | Literal["real frames", "vae reconstructions", "stories", "stories with continuity"]


RUNS = (
    Run("storyteller_prefix", "clip_storyteller_prefix", "vist", 7),
    Run("storyteller_prompt", "clip_storyteller", "vist", 7),
    Run("character_classifier", "character_classifier", "flintstones"),
    Run("captioner", "sagan_captioner", "flintstones", 1),
    Run("lora", "sagan_lora", "flintstones", snapshots=(1,)),
    Run("gan", "gan", "flintstones", 20, snapshots=(5,)),
    # the variants' epochs are not the paper's (it gives none): measured on the tiny profile, 6 epochs drew
    # as well as 10 for these two (Char-F1 / Char-Acc 0.360 / 0.116 vs 0.370 / 0.125 and 0.303 / 0.125 vs
    # 0.256 / 0.107) but not for combined (0.280 / 0.062 vs 0.417 / 0.071)
    Run("clip_centric", "clip_centric", "flintstones", 6),
    Run("temporal_coherence", "temporal_coherence", "flintstones", 6),
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
    Row("vae_reconstructions", "real frames through the VAE (the ceiling of a latent visualizer)", "vae reconstructions"),
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
    Row("story_pipeline_continuity", "SAGANets pipeline, each frame started from the one before (continuity "
        "strength {continuity})", "stories with continuity"),
)
STORIES_FROM_PREFIXES = LORA_1  # the visualizer of the stories continued from test prefixes
CONTINUITY = 0.7  # the continuity strength of the story_pipeline_continuity row (beyond the paper)
# the story-pipeline runs: their run folder and the predict options that set them apart
STORY_RUNS = {"stories": ("sagan_stories", []),
              "stories with continuity": ("sagan_stories_continuity",
                                          ["--model.init_args.continuity_strength", str(CONTINUITY)])}


def backbone_overrides(config: Path, backbones: dict[str, str]) -> list[str]:
    """`--model.init_args.<role> <spec>` for each backbone a config names differently from the profile."""
    import yaml

    init = (yaml.safe_load(config.read_text()).get("model") or {}).get("init_args") or {}
    return [arg for role, spec in backbones.items() if role in init and init[role] != spec
            for arg in (f"--model.init_args.{role}", spec)]


def plan(profile: Profile, report_dir: Path, runs_dir: Path) -> list[Step]:
    """Every step of a reproduction in order: the profile's preparation (synthetic data, backbones),
    then the same list for every profile (fit each run of RUNS, sample, draw the BOARDS, continue test
    stories, evaluate each row of ROWS), differing between profiles only in COUNTS."""
    r = Runner.__new__(Runner)
    r.profile, r.runs_dir = profile, runs_dir
    roots = {"vist": profile.vist_root, "flintstones": profile.flintstones_root}
    steps = []
    if profile.name != "paper":
        # smoke: the smallest sets the writers make, VIST with photos of the real sizes and kinds
        sizes = {"vist": ["--albums", "10", "--photo-kinds", "real"], "flintstones": ["--episodes", "10"]} \
            if profile.name == "smoke" else {}
        for dataset, root in roots.items():
            if not root.is_dir():
                steps.append(Step(f"synth {dataset}", ["data", "synth", "--dataset", dataset, "--out", str(root),
                                                       "--seed", "0", *sizes.get(dataset, [])]))
        steps.append(Step("bootstrap backbones", ["bootstrap", *(["--paper-size"] if profile.name == "smoke" else [])]))
    b = profile.backbones
    steps.append(Step("backbones", ["backbones", "--gpt2", b["gpt2"], "--clip", b["clip"], "--sd", b["sd"],
                                    "--json", str(report_dir / "backbones.json")]))
    runs = {run.name: runs_dir / run.name for run in RUNS}
    for run in RUNS:
        epochs = profile.epochs.get(run.name, run.epochs)
        extra = [] if epochs is None else ["--trainer.max_epochs", str(epochs)]
        snapshots = sorted({profile.snapshot(e) for e in run.snapshots})
        if snapshots:
            extra += ["--trainer.callbacks+=visiontales.callbacks.EpochSnapshots",
                      f"--trainer.callbacks.epochs={json.dumps(snapshots)}"]
        config = profile.experiments / f"{run.config}.yaml"
        args = [*r.lightning_args("fit", run.name, run.config, roots[run.dataset]), *backbone_overrides(config, b),
                *profile.train_all, *profile.train.get(run.name, []), *extra]
        steps.append(Step(f"fit {run.name}", args, run=run.name))

    def checkpoint(use: Use) -> str:
        name = use.checkpoint
        if name.startswith("epoch-"):
            name = f"epoch-{profile.snapshot(int(name.split('-')[1]))}"
        return str(runs[use.run] / "checkpoints" / f"{name}.ckpt")

    def alpha(use: Use) -> list[str]:
        return [] if use.lora_alpha is None else ["--lora-alpha", str(use.lora_alpha)]

    vist, flint = roots["vist"], roots["flintstones"]
    last = {name: str(runs[name] / "checkpoints" / "last.ckpt") for name in runs}
    predict = ["--trainer.limit_predict_batches", "1", *profile.predict]
    steps += [Step("storyteller samples", [*r.lightning_args("predict", "storyteller_samples",
                                                             "clip_storyteller_prefix", vist),
                                           *predict, "--ckpt_path", last["storyteller_prefix"]]),
              Step("captioner samples", [*r.lightning_args("predict", "captioner_samples", "sagan_captioner", flint),
                                         *predict, "--ckpt_path", last["captioner"]])]
    story = ["--captioner", last["captioner"], "--first-caption", FIRST_CAPTION, "--frames", str(profile.board_frames),
             "--seed", "0", *profile.sample]
    steps += [Step(f"story {name}", ["story", "--visualizer", checkpoint(use), *story, *alpha(use),
                                     "--out", str(report_dir / "stories" / name)]) for name, use in BOARDS.items()]
    for source, (name, options) in STORY_RUNS.items():
        steps.append(Step(f"{source} from test prefixes", [
            *r.lightning_args("predict", name, "sagan_story", flint), *profile.predict,
            "--model.init_args.captioner_checkpoint", last["captioner"],
            "--model.init_args.visualizer_checkpoint", checkpoint(STORIES_FROM_PREFIXES),
            "--model.init_args.lora_alpha", str(STORIES_FROM_PREFIXES.lora_alpha), *options,
            "--trainer.limit_predict_batches", str(profile.stories)]))

    # every row on the same split, captions and seeds; the image options are ignored for text models
    image = ["--classifier", last["character_classifier"], "--clip", profile.clip, *profile.evaluate, *profile.sample]
    dataset_of = {run.name: run.dataset for run in RUNS}
    for row in ROWS:
        if isinstance(row.source, Use):
            args = ["--checkpoint", checkpoint(row.source), *alpha(row.source),
                    "--data-root", str(roots[dataset_of[row.source.run]])]
        elif row.source == "real frames":
            args = ["--real-frames", "--data-root", str(flint)]
        elif row.source == "vae reconstructions":
            args = ["--real-frames", "--through-vae", profile.backbones["sd"], "--data-root", str(flint)]
        else:
            args = ["--stories", str(runs_dir / STORY_RUNS[row.source][0]), "--data-root", str(flint)]
        steps.append(Step(f"evaluate {row.id}", ["evaluate", "--out", str(report_dir / "eval" / row.id), *args, *image]))
    return steps


def run_profile(profile: Profile, report_dir: Path, runs_dir: Path, reuse: bool = False) -> Path:
    """Every step of `plan`, then the report."""
    from visiontales.report import build_report

    with contextlib.closing(Runner(profile, report_dir, runs_dir, reuse)) as r:
        r.log.write(f"\n# visiontales reproduce --profile {profile.name} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        for step in plan(profile, report_dir, runs_dir):
            if step.run:
                r.fit(step)
            else:
                r.vt(step.name, step.args)
    manifest = {"profile": profile.name, "vist_root": str(profile.vist_root), "runs": r.runs, "timings_s": r.timings,
                "rows": [{"id": row.id, "label": row.label.format(lora_epochs=profile.lora_epochs, continuity=CONTINUITY)}
                         for row in ROWS],
                "boards": list(BOARDS), "lora_epochs": profile.lora_epochs}
    (report_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return build_report(report_dir, runs_dir, manifest)


def main(profile_name: str, reports: Path = Path("reports"), runs: Path = Path("runs"), reuse: bool = False,
         backbones: dict[str, str | None] | None = None) -> int:
    """Check everything the profile needs (one `error:` line per problem, exit 2, nothing run), then
    run it. `backbones`: specs (e.g. local directories) to use instead of the profile's, by role."""
    from visiontales.preflight import preflight

    available = profiles()
    if profile_name not in available:
        raise VisionTalesError(f"unknown profile '{profile_name}' (choose {' or '.join(available)})")
    profile = available[profile_name]
    profile.backbones.update({role: spec for role, spec in (backbones or {}).items() if spec})
    problems = preflight(profile)
    if problems:
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        return 2
    start = time.time()
    page = run_profile(profile, reports / profile_name, runs / profile_name, reuse)
    print(f"wrote {page} in {(time.time() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    serve_steps()
