"""Prefix (ClipCap-style) against prompt (the paper's) conditioning, after equal training.

Writes a synthetic VIST, trains CLIPStoryteller from experiments/tiny/clip_storyteller.yaml and
clip_storyteller_prefix.yaml for the same number of epochs, and prints their test-split scores
side by side. Both runs go through the same LightningCLI path as `visiontales fit`.

    python bench/conditioning.py [--epochs 8] [--albums 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train_and_test(config: str, root: Path, out: Path, epochs: int, seed: int) -> dict[str, float]:
    from lightning.pytorch.cli import LightningCLI

    cli = LightningCLI(run=False, subclass_mode_model=True, subclass_mode_data=True, args=[
        "--config", str(REPO / "experiments" / "tiny" / config), "--seed_everything", str(seed),
        "--data.init_args.root", str(root), "--trainer.max_epochs", str(epochs),
        "--trainer.logger.init_args.save_dir", str(out), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false"])
    cli.trainer.fit(cli.model, cli.datamodule)
    (metrics,) = cli.trainer.test(cli.model, cli.datamodule, ckpt_path="last", verbose=False)
    return {k.removeprefix("test/"): float(v) for k, v in metrics.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--albums", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args()

    from data_modules.synthetic import write_synthetic_vist
    from visiontales.bootstrap import build_domain_backbones

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_domain_backbones()  # the tiny configs name tiny-domain: built once, kept in VISIONTALES_HOME
        write_synthetic_vist(tmp / "vist", seed=opts.seed, albums=opts.albums)
        results = {}
        for name, config in (("prompt", "clip_storyteller.yaml"), ("prefix", "clip_storyteller_prefix.yaml")):
            start = time.perf_counter()
            results[name] = train_and_test(config, tmp / "vist", tmp / "runs", opts.epochs, opts.seed)
            results[name]["seconds"] = time.perf_counter() - start
    names = ("loss", "bleu1", "bleu4", "meteor", "rougeL", "cider", "seconds")
    print(f"\nsynthetic VIST test split, {opts.albums} albums, {opts.epochs} epochs each, seed {opts.seed}")
    print(f"{'conditioning':<13}" + "".join(f"{n:>9}" for n in names))
    for conditioning, scores in results.items():
        print(f"{conditioning:<13}" + "".join(f"{scores[n]:>9.3f}" for n in names))
    print(f"CIDEr prefix / prompt: {results['prefix']['cider'] / max(results['prompt']['cider'], 1e-9):.2f}x")


if __name__ == "__main__":
    main()
