"""LoRADiffusionVisualizer training step time with the latent and caption-embedding caches
(`cache: true`) against without, on the same tiny models and data, in the same process. The
cached run's one-off encoding pass is reported separately.

    python bench/lora_cache.py [--steps 60] [--resolution 64] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import lightning as L
from results import record
from timing import StepTimer


def fit(root: Path, steps: int, resolution: int, batch_size: int, cache: bool, workdir: Path) -> tuple[float, float]:
    """(seconds of the whole fit, median seconds per training step)."""
    from data_modules.flintstones import FlintstonesSVDataModule
    from visiontales.models.lora_diffusion import LoRADiffusionVisualizer

    L.seed_everything(0)
    model = LoRADiffusionVisualizer(sd="tiny", resolution=resolution, val_samples=0, cache=cache)
    timer = StepTimer()
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, limit_val_batches=0, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer], logger=False,
                        default_root_dir=workdir)
    start = time.perf_counter()
    trainer.fit(model, FlintstonesSVDataModule(str(root), resolution=resolution, batch_size=batch_size))
    return time.perf_counter() - start, timer.step_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    opts = parser.parse_args()

    from data_modules.synthetic import write_synthetic_flintstones

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["VISIONTALES_HOME"] = str(tmp / "home")  # a cold cache to start from
        write_synthetic_flintstones(tmp / "f", seed=0, episodes=20)
        args = (tmp / "f", opts.steps, opts.resolution, opts.batch_size)
        plain_fit, plain_step = fit(*args, cache=False, workdir=tmp)
        cold_fit, cold_step = fit(*args, cache=True, workdir=tmp)
        warm_fit, warm_step = fit(*args, cache=True, workdir=tmp)
    print(f"\nLoRADiffusionVisualizer (tiny SD), {opts.resolution} px, batch {opts.batch_size}, {opts.steps} steps, "
          f"CPU threads {os.cpu_count()}")
    print(f"{'run':<30}{'fit s':>8}{'ms/step':>9}")
    print(f"{'no cache (VAE + text each step)':<30}{plain_fit:>8.1f}{plain_step * 1000:>9.1f}")
    print(f"{'cache, first run (encodes all)':<30}{cold_fit:>8.1f}{cold_step * 1000:>9.1f}")
    print(f"{'cache, later run':<30}{warm_fit:>8.1f}{warm_step * 1000:>9.1f}")
    print(f"step time without / with cache: {plain_step / warm_step:.2f}x")
    record("lora_cache_step", warm_step / plain_step, 1.0, "lower", "LoRA step with cache / without",
           first_run_fit_s=round(cold_fit, 1), uncached_fit_s=round(plain_fit, 1))


if __name__ == "__main__":
    main()
