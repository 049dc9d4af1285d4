"""Character-mention F1 of SAGANetsCaptioner reading its prefix against one that ignores it.

Same synthetic FlintstonesSV, same tiny config (experiments/tiny/sagan_captioner.yaml), same
number of steps; only `ignore_prefix` differs. Prints test-split Char-F1, CIDEr and perplexity
for each, over one or more data seeds.

    python bench/captioner_prefix.py [--epochs 30] [--episodes 80] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train_and_test(root: Path, out: Path, epochs: int, seed: int, ignore_prefix: bool) -> dict[str, float]:
    from lightning.pytorch.cli import LightningCLI

    cli = LightningCLI(run=False, subclass_mode_model=True, subclass_mode_data=True, args=[
        "--config", str(REPO / "experiments" / "tiny" / "sagan_captioner.yaml"), "--seed_everything", str(seed),
        "--data.init_args.root", str(root), "--trainer.max_epochs", str(epochs),
        "--trainer.limit_val_batches", "0", "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--model.init_args.ignore_prefix", str(ignore_prefix).lower()])
    cli.trainer.fit(cli.model, cli.datamodule)
    (metrics,) = cli.trainer.test(cli.model, cli.datamodule, verbose=False)
    return {k.removeprefix("test/"): float(v) for k, v in metrics.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--episodes", type=int, default=80)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    opts = parser.parse_args()

    from data_modules.synthetic import write_synthetic_flintstones
    from visiontales.bootstrap import build_domain_backbones

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_domain_backbones()  # the tiny configs name tiny-domain: built once, kept in VISIONTALES_HOME
        for seed in opts.seeds:
            root = tmp / f"flintstones-{seed}"
            write_synthetic_flintstones(root, seed=seed, episodes=opts.episodes)
            for ignore in (False, True):
                start = time.perf_counter()
                scores = train_and_test(root, tmp / "runs", opts.epochs, seed, ignore)
                rows.append((seed, "ignored" if ignore else "read", scores, time.perf_counter() - start))
    print(f"\nsynthetic FlintstonesSV ({opts.episodes} episodes), tiny captioner, {opts.epochs} epochs, test split")
    print(f"{'seed':>4}  {'prefix':<8}{'char_f1':>9}{'cider':>9}{'bleu4':>9}{'ppl':>9}{'seconds':>9}")
    for seed, prefix, s, seconds in rows:
        print(f"{seed:>4}  {prefix:<8}{s['char_f1']:>9.3f}{s['cider']:>9.3f}{s['bleu4']:>9.3f}{s['ppl']:>9.3f}{seconds:>9.1f}")


if __name__ == "__main__":
    main()
