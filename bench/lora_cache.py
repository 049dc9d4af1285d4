"""LoRADiffusionVisualizer training with the latent and caption-embedding caches (`cache: true`)
against without, on the same models and data, in the same process:

- the first cached run (cold cache, filled as training encodes frames) against the uncached run,
  whole fits: `lora_cache_first_run` (<= 1.0: turning the cache on is never the slower choice);
- a later cached run (the same seed draws the same frames: all cached) against the uncached run,
  median step: `lora_cache_step` at 64 px on the tiny SD (<= 1.0), or with `--paper-size`
  `lora_cache_step_512`: SD 1.5's UNet and VAE (random weights, built here from their published
  configs), 512 px, batch 1, where the VAE encode is a large part of an uncached step (<= 0.5).

With it, the floor no cache can go below: a hand-written step of the same LoRA UNet alone (diffusion
loss on random latents and caption states, backward, AdamW), so the ratio reads against what is
left to cut: `floor_ratio` (floor / uncached step) and `over_floor` (cached step / floor).

    python bench/lora_cache.py [--steps 60] [--resolution 64] [--batch-size 8]
    python bench/lora_cache.py --paper-size     # about 6 min on 2 CPU cores, 5 GB of disk
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


def fit(root: Path, sd: str, steps: int, resolution: int, batch_size: int, cache: bool, workdir: Path,
        skip: int) -> tuple[float, float]:
    """(seconds of the whole fit, median seconds per training step after `skip`)."""
    from data_modules.flintstones import FlintstonesSVDataModule
    from visiontales.models.lora_diffusion import LoRADiffusionVisualizer

    L.seed_everything(0)
    model = LoRADiffusionVisualizer(sd=sd, resolution=resolution, val_samples=0, cache=cache)
    timer = StepTimer()
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, limit_val_batches=0, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer], logger=False,
                        default_root_dir=workdir)
    start = time.perf_counter()
    trainer.fit(model, FlintstonesSVDataModule(str(root), resolution=resolution, batch_size=batch_size))
    return time.perf_counter() - start, timer.step_seconds(skip)


def unet_floor(sd: str, steps: int, resolution: int, batch_size: int, skip: int) -> float:
    """Median seconds of a bare step of the visualizer's LoRA UNet: no data, no encoders, no loop."""
    import statistics

    import torch

    from visiontales.models.lora_diffusion import LoRADiffusionVisualizer

    L.seed_everything(0)
    model = LoRADiffusionVisualizer(sd=sd, resolution=resolution, val_samples=0)
    model.sd.unet.train()
    optimizer = torch.optim.AdamW(model.trainable_parameters, lr=1e-4)
    latents = torch.randn(batch_size, *model.sd.latent_shape(resolution))
    states = torch.randn(batch_size, model.sd.tokenizer.model_max_length, model.sd.text_encoder.config.hidden_size)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = model.sd.diffusion_loss(latents, states)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[skip:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 60; 6 at paper size)")
    parser.add_argument("--resolution", type=int, default=None, help="frame side (default 64; 512 at paper size)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 8; 1 at paper size")
    parser.add_argument("--paper-size", action="store_true", help="SD 1.5's UNet and VAE (random weights), 512 px")
    opts = parser.parse_args()
    paper = opts.paper_size
    steps = opts.steps or (6 if paper else 60)
    resolution = opts.resolution or (512 if paper else 64)
    batch_size = opts.batch_size or (1 if paper else 8)

    from data_modules.synthetic import write_synthetic_flintstones

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["VISIONTALES_HOME"] = str(tmp / "home")  # a cold cache to start from
        write_synthetic_flintstones(tmp / "f", seed=0, episodes=20)
        sd = "tiny"
        if paper:
            from visiontales.stand_ins import build_sd

            sd = str(tmp / "sd15")
            build_sd(Path(sd))
        args = (tmp / "f", sd, steps, resolution, batch_size)
        skip = 1 if paper else 5
        plain_fit, plain_step = fit(*args, cache=False, workdir=tmp, skip=skip)
        cold_fit, cold_step = fit(*args, cache=True, workdir=tmp, skip=skip)
        warm_fit, warm_step = fit(*args, cache=True, workdir=tmp, skip=skip)
        floor = unet_floor(sd, 4 if paper else 20, resolution, batch_size, skip)
    model = "SD 1.5-sized UNet and VAE, random weights" if paper else "tiny SD"
    print(f"\nLoRADiffusionVisualizer ({model}), {resolution} px, batch {batch_size}, {steps} steps, "
          f"CPU threads {os.cpu_count()}")
    print(f"{'run':<34}{'fit s':>8}{'ms/step':>10}")
    print(f"{'no cache (VAE + text each step)':<34}{plain_fit:>8.1f}{plain_step * 1000:>10.1f}")
    print(f"{'cache, first run (fills it)':<34}{cold_fit:>8.1f}{cold_step * 1000:>10.1f}")
    print(f"{'cache, later run (all cached)':<34}{warm_fit:>8.1f}{warm_step * 1000:>10.1f}")
    print(f"{'floor: bare LoRA UNet step':<34}{'':>8}{floor * 1000:>10.1f}")
    details = {"resolution": resolution, "batch_size": batch_size, "steps": steps,
               "ms_per_step": round(warm_step * 1000, 1), "uncached_ms_per_step": round(plain_step * 1000, 1),
               "first_run_fit_s": round(cold_fit, 1), "uncached_fit_s": round(plain_fit, 1),
               "floor_ms_per_step": round(floor * 1000, 1), "floor_ratio": round(floor / plain_step, 3),
               "over_floor": round(warm_step / floor, 3)}
    if paper:
        record("lora_cache_step_512", warm_step / plain_step, 0.5, "lower",
               "LoRA step with cache / without (SD 1.5 size, 512 px)", **details)
    else:
        record("lora_cache_step", warm_step / plain_step, 1.0, "lower", "LoRA step with cache / without", **details)
    record("lora_cache_first_run" + ("_512" if paper else ""), cold_fit / plain_fit, 1.0, "lower",
           "first cached fit (fills the cache) / uncached fit", **details)


if __name__ == "__main__":
    main()
