"""Does the tiny GAN settle? Trains experiments/tiny/gan.yaml on the synthetic FlintstonesSV and
prints, over the last quarter of the steps, the mean g_loss (and its adversarial part), d_loss,
and D's accuracy on real and fake frames (collapse would put these at 0 or 1).

    python bench/gan_balance.py [--epochs 8] [--episodes 80] [-- --model.init_args.lr_d 5e-5 ...]

Arguments after `--` are passed to `visiontales fit` as overrides.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=80)
    parser.add_argument("--config", default="gan.yaml", help="a config under experiments/tiny/")
    opts, overrides = parser.parse_known_args()
    overrides = [a for a in overrides if a != "--"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from data_modules.synthetic import write_synthetic_flintstones
    from visiontales.bootstrap import build_domain_backbones
    from visiontales.cli import main as visiontales

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_domain_backbones()  # the tiny configs name tiny-domain: built once, kept in VISIONTALES_HOME
        write_synthetic_flintstones(tmp / "f", seed=0, episodes=opts.episodes)
        start = time.perf_counter()
        assert visiontales(["fit", "--config", str(REPO / "experiments" / "tiny" / opts.config),
                            "--data.init_args.root", str(tmp / "f"), "--trainer.max_epochs", str(opts.epochs),
                            "--trainer.logger.init_args.save_dir", str(tmp / "runs"),
                            "--trainer.logger.init_args.version", "bench",
                            "--trainer.enable_progress_bar", "false", *overrides]) == 0
        seconds = time.perf_counter() - start
        events = EventAccumulator(str(next((tmp / "runs").glob("*/bench"))), size_guidance={"scalars": 0})
        events.Reload()
        series = {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
                  if tag.startswith("train/") and tag.endswith("_step")}
    n = len(series["train/g_loss_step"])
    print(f"\ntiny {opts.config} {' '.join(overrides)}, {opts.epochs} epochs ({n} logged steps), {seconds / 60:.1f} min on "
          f"{os.cpu_count()} CPU threads; means over the last quarter of the logged steps:")
    for tag in sorted(series):
        values = series[tag][-max(1, len(series[tag]) // 4):]
        print(f"  {tag.removeprefix('train/').removesuffix('_step'):<12} {statistics.mean(values):8.3f}"
              f"   (min {min(values):.3f}, max {max(values):.3f})")


if __name__ == "__main__":
    main()
