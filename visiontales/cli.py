"""`visiontales`: one argparse definition of every command (usage, help and dispatch); `fit`,
`validate`, `test` and `predict` hand their arguments to LightningCLI.

    visiontales fit --config experiments/clip_storyteller.yaml [--trainer.max_epochs 3 ...]
    visiontales data synth --dataset vist --out data/vist-synthetic
    visiontales data check --dataset vist|flintstones --root DIR [--json] [--list-bad]
    visiontales tell --checkpoint runs/.../last.ckpt a.jpg b.jpg c.jpg

User mistakes (a bad file, key, value or path) end in one line `error: ...` and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from visiontales.errors import VisionTalesError

LIGHTNING_COMMANDS = {
    "fit": "train a model: visiontales fit --config experiments/X.yaml [--key value ...]",
    "validate": "run the validation split: visiontales validate --config X.yaml --ckpt_path CKPT",
    "test": "run the test split: visiontales test --config X.yaml --ckpt_path CKPT",
    "predict": "write predictions.json: visiontales predict --config X.yaml --ckpt_path CKPT",
}
LOGGER_DEFAULT = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                  "init_args": {"save_dir": "runs", "name": "visiontales"}}
CHECKPOINT_ALIASES = ("last", "best", "hpc", "registry")


def check_ckpt_path(args: list[str]) -> None:
    """A `--ckpt_path` file is read (weights only, as Lightning will) before LightningCLI parses
    it, so a damaged checkpoint or one carrying pickled code is one `error:` line, not a traceback."""
    from visiontales.models.base import read_checkpoint

    for i, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--ckpt_path=") else \
            args[i + 1] if arg == "--ckpt_path" and i + 1 < len(args) else None
        if value and value not in CHECKPOINT_ALIASES and Path(value).is_file():
            read_checkpoint(value)


def run_lightning(args: list[str] | None) -> None:
    """Run a LightningCLI subcommand; `args=None` reads sys.argv like any console script."""
    from lightning.pytorch.callbacks import LearningRateMonitor, RichProgressBar
    from lightning.pytorch.cli import LightningCLI

    class VisionTalesCLI(LightningCLI):
        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand]
            ckpt = config.get("ckpt_path")
            if ckpt and ckpt not in CHECKPOINT_ALIASES and not Path(ckpt).is_file():
                raise VisionTalesError(f"{ckpt}: checkpoint not found (--ckpt_path)")
            # user input before any model is built (a model may load backbones for minutes)
            root = (config.get("data") or {}).get("init_args", {}).get("root")
            if root and not Path(root).is_dir():
                raise VisionTalesError(f"{root}: dataset folder not found (--data.init_args.root)")
            if config.trainer.enable_progress_bar is not False:
                self.trainer_defaults["callbacks"].append(RichProgressBar())

    check_ckpt_path(sys.argv[1:] if args is None else args)
    VisionTalesCLI(
        args=args,
        subclass_mode_model=True,
        subclass_mode_data=True,
        # callbacks given here are always present (a rich progress bar joins them unless
        # --trainer.enable_progress_bar false); the models add their own checkpointing
        trainer_defaults={"logger": LOGGER_DEFAULT, "callbacks": [LearningRateMonitor(logging_interval="step")]},
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"exit_on_error": False},
        auto_configure_optimizers=False,
    )


# ---------------------------------------------------------------------------------- commands


def _datasets():
    from data_modules import flintstones_format, synthetic, vist_format

    return {"vist": (synthetic.write_synthetic_vist, vist_format.check_dataset),
            "flintstones": (synthetic.write_synthetic_flintstones, flintstones_format.check_dataset)}


def data_synth(opts: argparse.Namespace) -> int:
    write, _ = _datasets()[opts.dataset]
    size = {"albums": opts.albums, "photo_kinds": opts.photo_kinds} if opts.dataset == "vist" \
        else {"episodes": opts.episodes}
    counts = write(opts.out, seed=opts.seed, **size)
    unit = "stories" if opts.dataset == "vist" else "clips"
    print(f"wrote synthetic {opts.dataset} to {opts.out}: " + ", ".join(f"{split} {n} {unit}" for split, n in counts.items()))
    return 0


def data_check(opts: argparse.Namespace) -> int:
    _, check = _datasets()[opts.dataset]
    report = check(opts.root, list_bad=opts.list_bad, workers=opts.workers)
    if opts.json:
        print(json.dumps(report))
        return 0
    print(f"{opts.dataset} at {opts.root}")
    for split, r in report["splits"].items():
        counts = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("dropped", "defects", "bad"))
        dropped = ", ".join(f"{k} {v}" for k, v in r["dropped"].items())
        defects = ", ".join(f"{k} {v}" for k, v in r["defects"].items())
        print(f"  {split:<5} {counts}; dropped: {dropped}; defective parts: {defects}")
    if opts.list_bad:
        for split, r in report["splits"].items():
            for reason, items in r["bad"].items():
                for item, detail in items.items():
                    print(f"{split}\t{reason}\t{item}\t{detail}")
    return 0


def placement(opts: argparse.Namespace):
    from visiontales.devices import Placement

    return Placement.from_options(opts.device, opts.precision)


def tell(opts: argparse.Namespace) -> int:
    from visiontales.models.base import load_model
    from visiontales.models.storyteller import CLIPStoryteller

    where = placement(opts)
    model = where.place(load_model(opts.checkpoint, CLIPStoryteller))
    if opts.decoding:
        model.hparams.decoding = opts.decoding
    if model.clip is None:
        logging.getLogger("visiontales").warning(
            "this storyteller was trained with prompt conditioning (the paper's): it does not look at the images")
    with where.autocast():
        print(model.tell(opts.images))
    return 0


def story(opts: argparse.Namespace) -> int:
    from visiontales.models.base import load_model
    from visiontales.models.captioner import SAGANetsCaptioner
    from visiontales.pipeline import SAGANetsPipeline, read_prefix, write_story
    from visiontales.visualizer import Visualizer

    captions, frames = ([opts.first_caption], []) if opts.first_caption else read_prefix(opts.prefix)
    where = placement(opts)
    pipeline = SAGANetsPipeline(where.place(load_model(opts.captioner, SAGANetsCaptioner, "--captioner")),
                                where.place(load_model(opts.visualizer, Visualizer, "--visualizer")),
                                opts.lora_alpha, opts.continuity_strength)
    with where.autocast():
        told = pipeline(captions, frames, opts.frames, seed=opts.seed)
    board = write_story(told, opts.out, {"captioner": str(opts.captioner), "visualizer": str(opts.visualizer)})
    for i, caption in enumerate(told.captions):
        print(f"{i + 1}. {'(given) ' if told.given_captions[i] else ''}{caption}")
    print(f"wrote {board}")
    return 0


def export(opts: argparse.Namespace) -> int:
    from visiontales.export import export as write

    for path in write(opts.checkpoint, opts.out, opts.metrics):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


def serve(opts: argparse.Namespace) -> int:
    if not (opts.storyteller or opts.captioner or opts.visualizer):
        raise VisionTalesError("serve needs a model: --storyteller CKPT and/or --captioner CKPT --visualizer CKPT")
    try:
        import gradio  # noqa: F401
    except ImportError as e:
        raise VisionTalesError("the web app needs Gradio: pip install -e '.[serve]' (make serve installs it)") from e
    from visiontales.models.base import load_model
    from visiontales.models.captioner import SAGANetsCaptioner
    from visiontales.models.storyteller import CLIPStoryteller
    from visiontales.serve import StoryApp, launch
    from visiontales.visualizer import Visualizer

    where = placement(opts)

    def load(path, role, option):
        return where.place(load_model(path, role, option)) if path else None

    app = StoryApp(load(opts.storyteller, CLIPStoryteller, "--storyteller"),
                   load(opts.captioner, SAGANetsCaptioner, "--captioner"),
                   load(opts.visualizer, Visualizer, "--visualizer"), where)
    print(f"serving on http://{opts.host}:{opts.port} (Ctrl+C stops it)")
    launch(app, opts.host, opts.port)
    return 0


def evaluate(opts: argparse.Namespace) -> int:
    from visiontales.backbones import load_clip, load_vae
    from visiontales.evaluation import evaluate as ev
    from visiontales.evaluation.character_classifier import CharacterClassifier
    from visiontales.models.base import load_model, model_from_checkpoint, read_checkpoint
    from visiontales.models.text_generation import TextGenerationModule
    from visiontales.visualizer import Visualizer

    where, model = placement(opts), None
    if opts.checkpoint:
        checkpoint = read_checkpoint(opts.checkpoint)
        model = model_from_checkpoint(checkpoint, opts.checkpoint)
        if isinstance(model, TextGenerationModule):
            result = ev.evaluate_text_model(model, checkpoint, opts.checkpoint, opts.data_root, opts.split, opts.out,
                                            where)
            return _print_written(result, opts.out)
        if not isinstance(model, Visualizer):
            raise VisionTalesError(f"{opts.checkpoint}: a {type(model).__name__} checkpoint; evaluate scores text "
                                   f"models and visualizers")
    if opts.classifier is None:
        raise VisionTalesError("--classifier is needed for image metrics (train one: visiontales fit "
                               "--config experiments/character_classifier.yaml)")
    if opts.through_vae and not opts.real_frames:
        raise VisionTalesError("--through-vae goes with --real-frames (it scores the real frames as a VAE rebuilds them)")
    vae = where.place(load_vae(opts.through_vae)) if opts.through_vae else None
    classifier = where.place(load_model(opts.classifier, CharacterClassifier, "--classifier"))
    clip_model = where.place(load_clip(opts.clip))
    if opts.stories:
        result = ev.evaluate_stories(opts.stories, opts.data_root, opts.split, opts.out, classifier, clip_model,
                                     opts.inception_weights)
    else:
        if model is not None:
            where.place(model)
        with where.autocast():
            result = ev.evaluate_visualizer(model, opts.checkpoint or "real frames", opts.data_root, opts.split,
                                            opts.out, classifier, clip_model, opts.max_frames, opts.seed,
                                            opts.lora_alpha, opts.inception_weights, reference=model is None,
                                            batch_size=opts.batch_size, through_vae=vae)
    return _print_written(result, opts.out)


def _print_written(result, out: Path) -> int:
    """Write an evaluation's metrics.json and metrics.md, and say what they hold."""
    from visiontales.evaluation.evaluate import LABELS

    for path in result.write(out):
        print(f"wrote {path}")
    print(", ".join(f"{LABELS.get(k, k)} {v:.4f}" for k, v in result.metrics.items()))
    return 0


def reproduce(opts: argparse.Namespace) -> int:
    from visiontales.reproduce import main as run

    return run(opts.profile, opts.reports, opts.runs, opts.reuse, {"gpt2": opts.gpt2, "clip": opts.clip, "sd": opts.sd})


def bootstrap(opts: argparse.Namespace) -> int:
    if opts.paper_size:
        from visiontales.stand_ins import build_paper_size_backbones, hub_environment

        cache = build_paper_size_backbones()
        print(f"paper-size stand-ins (random weights) in the Hugging Face cache {cache}; load them with "
              + " ".join(f"{k}={v}" for k, v in hub_environment().items()))
        return 0
    from visiontales.bootstrap import build_domain_backbones, pack, quality

    directories = build_domain_backbones(rebuild=opts.rebuild)
    for kind, directory in directories.items():
        print(f"tiny-domain {kind}: {directory}")
    if opts.quality or opts.pack:
        measured = quality(directories)
        print(json.dumps(measured))
        if opts.quality:
            opts.quality.write_text(json.dumps(measured, indent=1) + "\n")
        if opts.pack:
            print(f"shipped weights written to {pack(directories, measured)}")
    return 0


def backbones(opts: argparse.Namespace) -> int:
    from visiontales.backbones import describe_backbones

    described = describe_backbones(opts.gpt2, opts.clip, opts.sd)
    for role, d in described.items():
        print(f"{role:<16} {d['parameters'] / 1e6:7.1f}M  {d['class']:<22} {d['spec']}")
    if opts.json:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps(described, indent=1))
        print(f"wrote {opts.json}")
    return 0


# ------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    """Every command, its options and its handler (`run`), in one place."""
    parser = argparse.ArgumentParser(
        prog="visiontales", description="VisionTales: visual storytelling in both directions (images -> story, "
                                        "story -> images). `visiontales <command> --help` lists a command's options.")
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    from visiontales.devices import DEVICES_HELP, PRECISIONS

    on_device = argparse.ArgumentParser(add_help=False)
    on_device.add_argument("--device", default="auto", help=DEVICES_HELP)
    on_device.add_argument("--precision", default="32-true", choices=tuple(PRECISIONS),
                           help="as Lightning names it: 32-true (default), bf16-mixed or 16-mixed (autocast)")
    for name, text in LIGHTNING_COMMANDS.items():  # their options belong to LightningCLI
        commands.add_parser(name, help=text, add_help=False).set_defaults(run=None)

    c = commands.add_parser("reproduce", help="every table and figure of both papers: reports/<profile>/index.html",
                            description="Train, sample and evaluate everything the two papers report, then write "
                                        "reports/<profile>/index.html (log.txt: every command and its output; "
                                        "backbones.json: each backbone's spec, class and size). tiny: synthetic data, "
                                        "tiny-domain backbones, CPU (about 40 min on 2 cores). smoke: the paper's "
                                        "configs and steps at real size (random weights, real-size stand-in data) "
                                        "with every count shrunk, on whatever device is there (about 30 min on 2 CPU "
                                        "cores). paper: the real datasets and weights on a GPU. Everything a profile "
                                        "needs (Java; for paper the data, weights, a GPU, free disk) is checked "
                                        "before anything runs.")
    c.add_argument("--profile", choices=("tiny", "smoke", "paper"), default="tiny")
    c.add_argument("--reports", type=Path, default=Path("reports"), help="reports folder (default reports/)")
    c.add_argument("--runs", type=Path, default=Path("runs"), help="runs folder (default runs/)")
    c.add_argument("--reuse", action="store_true",
                   help="keep runs that finished with the same resolved config (finished.json), resume interrupted "
                        "ones from their last.ckpt; a run whose config changed trains again")
    for role, example in (("gpt2", "openai-community/gpt2"), ("clip", "ViT-B-32-quickgelu@openai"),
                          ("sd", "stable-diffusion-v1-5/stable-diffusion-v1-5")):
        c.add_argument(f"--{role}", metavar="SPEC", help=f"{role} weights instead of the profile's ({example} for "
                                                         f"paper): a local directory or another spec")
    c.set_defaults(run=reproduce)

    c = commands.add_parser("bootstrap", help="install (or train) the tiny-domain backbones, once",
                            description="Put the tiny-domain backbones (GPT-2 + tokenizer, CLIP, Stable Diffusion VAE "
                                        "and UNet, trained on synthetic VIST and FlintstonesSV) under "
                                        "$VISIONTALES_HOME/backbones, where configs naming 'tiny-domain' find them: "
                                        "from the weights that ship with the project (seconds), or trained here where "
                                        "the shipped ones were trained from another recipe or with --rebuild (about "
                                        "18-33 min on 2 CPU cores).")
    c.add_argument("--rebuild", action="store_true",
                   help="train every tiny-domain backbone here from synthetic data, replacing the cached ones")
    c.add_argument("--quality", type=Path, metavar="JSON",
                   help="also measure each backbone on held-out synthetic samples (GPT-2 perplexity, CLIP "
                        "retrieval, VAE PSNR and posterior noise, UNet loss with captions and with the empty "
                        "prompt) and write them to this file")
    c.add_argument("--pack", action="store_true",
                   help="(maintainers) also write the backbones, fp16, as the shipped weights in visiontales/weights "
                        "with their quality and recipe")
    c.add_argument("--paper-size", action="store_true",
                   help="instead, write the paper's backbones at their real size with random weights (GPT-2 124M, "
                        "CLIP ViT-B-32-quickgelu, Stable Diffusion 1.5) as a Hugging Face cache under "
                        "$VISIONTALES_HOME/paper-size/hub, for `reproduce --profile smoke` (~5 GB, minutes)")
    c.set_defaults(run=bootstrap)

    c = commands.add_parser("backbones", help="load the backbones and report each one's class and size",
                            description="Load GPT-2, CLIP and Stable Diffusion through the loaders the configs use "
                                        "and print, for each role (gpt2, clip, sd_unet, sd_vae, sd_text_encoder), "
                                        "its spec, class and parameter count.")
    c.add_argument("--gpt2", default="openai-community/gpt2", help="GPT-2 spec (default: the paper's)")
    c.add_argument("--clip", default="ViT-B-32-quickgelu@openai", help="CLIP spec (default: the paper's)")
    c.add_argument("--sd", default="stable-diffusion-v1-5/stable-diffusion-v1-5",
                   help="Stable Diffusion spec (default: the paper's)")
    c.add_argument("--json", type=Path, help="also write the report to this JSON file")
    c.set_defaults(run=backbones)

    c = commands.add_parser("evaluate", parents=[on_device], help="score a checkpoint or a folder of stories: metrics.json + metrics.md",
                            description="Score a trained model (text metrics for text models; Char-Acc, Char-F1, FID "
                                        "and CLIPScore for visualizers) or a folder of SAGANets stories (the whole "
                                        "pipeline) on a data split; writes metrics.json and metrics.md under --out.")
    source = c.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a checkpoint written by visiontales fit")
    source.add_argument("--stories", type=Path, help="a folder of story.json + frame PNGs (predict / story)")
    source.add_argument("--real-frames", action="store_true",
                        help="score the split's real frames themselves (the ceiling of the image metrics)")
    c.add_argument("--through-vae", metavar="SD_SPEC",
                   help="with --real-frames: score them as this Stable Diffusion's VAE reconstructs them (the "
                        "ceiling of a latent visualizer), e.g. tiny-domain")
    c.add_argument("--data-root", type=Path, required=True, help="the dataset folder (VIST or FlintstonesSV)")
    c.add_argument("--split", choices=("val", "test"), default="test")
    c.add_argument("--out", type=Path, required=True, help="folder to write (created)")
    c.add_argument("--classifier", type=Path, help="CharacterClassifier checkpoint "
                                                   "(experiments/character_classifier.yaml); needed for image metrics")
    c.add_argument("--clip", default="ViT-B-32-quickgelu@openai", help="CLIP for CLIPScore (a load_clip spec)")
    c.add_argument("--inception-weights", type=Path,
                   help="torch-fidelity's InceptionV3 FID weights (default: the torch hub cache, if there); "
                        "without them FID uses the classifier's features and says so")
    c.add_argument("--max-frames", type=int, help="score the first N distinct clips of the split (default all)")
    c.add_argument("--batch-size", type=int, default=8, help="frames drawn at once (default 8)")
    c.add_argument("--seed", type=int, default=0, help="the frame of clip i is drawn with seed + i")
    c.add_argument("--lora-alpha", type=float, help="LoRA alpha to draw with (0: the untrained base model)")
    c.set_defaults(run=evaluate)

    c = commands.add_parser("story", parents=[on_device], help="continue a story: captioner and visualizer alternate (SAGANets)",
                            description="SAGANets: the captioner writes caption k+1, the visualizer draws frame k+1, "
                                        "until N frames; writes storyboard.png, frame_XX.png and story.json under "
                                        "--out.")
    c.add_argument("--captioner", type=Path, required=True, help="a SAGANetsCaptioner checkpoint")
    c.add_argument("--visualizer", type=Path, required=True,
                   help="a visualizer checkpoint (LoRADiffusionVisualizer, GANVisualizer, ...)")
    start = c.add_mutually_exclusive_group(required=True)
    start.add_argument("--first-caption", help="start from this caption alone")
    start.add_argument("--prefix", type=Path, help='JSON list of {"caption": ..., "frame": "image path"} '
                                                   "(frames optional, relative to the JSON file)")
    c.add_argument("--frames", type=int, default=5, help="frames in the finished story")
    c.add_argument("--out", type=Path, required=True, help="folder to write (created)")
    c.add_argument("--lora-alpha", type=float, help="LoRA alpha to draw with (default: the checkpoint's)")
    c.add_argument("--continuity-strength", type=float,
                   help="start each frame from the previous frame's latents, this fraction of them replaced by "
                        "fresh noise (0-1; default: off)")
    c.add_argument("--seed", type=int, default=0, help="frame i is drawn with seed + i")
    c.set_defaults(run=story)

    datasets = ("flintstones", "vist")
    data = commands.add_parser("data", help="dataset tools: synth, check",
                               description="Dataset tools.").add_subparsers(dest="action", metavar="<action>",
                                                                            required=True)
    c = data.add_parser("synth", help="write a synthetic dataset in the real on-disk layout",
                        description="Write a synthetic dataset in the real on-disk layout.")
    c.add_argument("--dataset", choices=datasets, required=True)
    c.add_argument("--out", type=Path, required=True, help="folder to write (created)")
    c.add_argument("--seed", type=int, default=0, help="same seed, same files")
    c.add_argument("--albums", type=int, default=200, help="VIST: photo albums to write (two stories each; at least 10)")
    c.add_argument("--photo-kinds", choices=("plain", "real"), default="plain",
                   help="VIST: plain (small JPEGs) or real (the real set's sizes up to 2048x1536 and kinds: PNG, GIF, "
                        "BMP, grayscale, CMYK, EXIF-rotated)")
    c.add_argument("--episodes", type=int, default=80, help="FlintstonesSV: episodes to write (14 clips each; at least 10)")
    c.set_defaults(run=data_synth)
    c = data.add_parser("check", help="validate a dataset folder; report kept and dropped items and defects per split",
                        description="Validate a dataset folder the way training reads it (every photo decoded "
                                    "upright in RGB; every frames file's shape); report per split the items kept, "
                                    "those dropped by their first problem, and every defective photo, clip or "
                                    "sentence by reason. Exit 0 unless no split has a usable item.")
    c.add_argument("--dataset", choices=datasets, required=True)
    c.add_argument("--root", type=Path, required=True, help="the dataset folder")
    c.add_argument("--json", action="store_true", help="print exactly one JSON object")
    c.add_argument("--list-bad", action="store_true",
                   help="also list every defective photo, clip or sentence (split, reason, id, what is wrong): "
                        "tab-separated lines after the table, or under 'bad' in the JSON")
    c.add_argument("--workers", type=int, default=None,
                   help="VIST: processes that decode unchecked photos (default: up to 16 when there are 64 or more; "
                        "0: this process); verdicts are kept, so a second check takes seconds")
    c.set_defaults(run=data_check)

    c = commands.add_parser("tell", parents=[on_device], help="print a story for three image files with a trained CLIPStoryteller",
                            description="Print a story for three images with a trained CLIPStoryteller.")
    c.add_argument("--checkpoint", type=Path, required=True, help="a CLIPStoryteller checkpoint (.ckpt)")
    c.add_argument("images", type=Path, nargs=3, help="three image files, in story order")
    c.add_argument("--decoding", choices=("greedy", "beam", "nucleus"), help="override the trained setting")
    c.set_defaults(run=tell)

    c = commands.add_parser("serve", parents=[on_device], help="a web app that tells and draws stories (Gradio: pip install -e .[serve])",
                            description="Serve a web app over trained checkpoints: 'Photos to story' (a "
                                        "CLIPStoryteller) and 'Story to pictures' (a SAGANetsCaptioner and a "
                                        "visualizer: frames drawn one by one, storyboard.png and story.json to "
                                        "download). Needs the serve extra (pip install -e '.[serve]').")
    c.add_argument("--storyteller", type=Path, help="a CLIPStoryteller checkpoint (.ckpt)")
    c.add_argument("--captioner", type=Path, help="a SAGANetsCaptioner checkpoint (.ckpt)")
    c.add_argument("--visualizer", type=Path, help="a visualizer checkpoint (.ckpt): LoRA, GAN or your own")
    c.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    c.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    c.set_defaults(run=serve)

    c = commands.add_parser(
        "export", aliases=["export-lora"], help="write a trained model in transformers / diffusers / peft formats, "
        "with a model card", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write a checkpoint's model where other tools load it, with README.md (a model card: what it "
                    "is, base weights, training config, data, metrics, how to load it):\n"
                    "  SAGANetsCaptioner    GPT-2 + tokenizer with the scene tokens (transformers), or peft "
                    "adapters when trained with LoRA\n"
                    "  CLIPStoryteller      GPT-2 + tokenizer (transformers); the prefix mapper as "
                    "prefix_mapper.safetensors; storyteller.json\n"
                    "  LoRADiffusionVisualizer  pytorch_lora_weights.safetensors "
                    "(StableDiffusionPipeline.load_lora_weights)\n"
                    "  other kinds          the learned weights as model.safetensors, config.json\n"
                    "(export-lora is the old name of this command.)")
    c.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint written by visiontales fit (.ckpt)")
    c.add_argument("--out", type=Path, required=True, help="folder to write (created)")
    c.add_argument("--metrics", type=Path, help="metrics.json written by visiontales evaluate for this checkpoint, "
                                                "for the model card (default: its monitored validation score)")
    c.set_defaults(run=export)
    return parser


# -------------------------------------------------------------------------------------- main


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the record (it may be replaced)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _configure_logging() -> None:
    for name in ("visiontales", "data_modules"):
        logger = logging.getLogger(name)
        if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
            handler = _StderrHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # libraries may configure the root logger too; print once


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    _configure_logging()
    parser = build_parser()
    if not args:
        parser.print_help()
        return 0
    opts, rest = parser.parse_known_args(args)
    try:
        if opts.command in LIGHTNING_COMMANDS:
            run_lightning(None if argv is None else args)
            return 0
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return opts.run(opts)
    except VisionTalesError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except argparse.ArgumentError as e:  # jsonargparse: a config key or value that does not parse
        print(f"error: {config_error_line(str(e), args)}", file=sys.stderr)
        return 2


def config_error_line(message: str, args: list[str]) -> str:
    """jsonargparse's nested, multi-line explanation as one line: the key path and the reason."""
    noise = ("Does not validate against any", "Subtypes:", "Errors:", "Given value", "Expected a <class 'NoneType'>")
    parts = [line.strip(" -") for line in message.splitlines() if line.strip(" -")]
    line = " ".join(part for part in parts if not part.startswith(noise))
    configs = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"]
    return f"{line} (config: {', '.join(configs)})" if configs else line


if __name__ == "__main__":
    sys.exit(main())
