"""Our Lightning training step of LoRADiffusionVisualizer against a plain PyTorch loop doing the
same work (same model object class and settings, same data module, same batches, same optimizer),
in the same process. Target: Lightning / plain <= 1.0. Each loop's time is the median step of a
run; the two loops alternate `--repeats` times and the best run of each is compared (this machine's
load drifts by about 10% between runs, so one pair alone can miss either way).

    python bench/lora_loop.py [--steps 60] [--resolution 64] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from results import record
from timing import StepTimer, median_step


def make(root: Path, resolution: int, batch_size: int):
    from data_modules.flintstones import FlintstonesSVDataModule
    from visiontales.models.lora_diffusion import LoRADiffusionVisualizer

    L.seed_everything(0)
    model = LoRADiffusionVisualizer(sd="tiny", resolution=resolution, val_samples=0)
    dm = FlintstonesSVDataModule(str(root), resolution=resolution, batch_size=batch_size)
    return model, dm


def plain_loop(root: Path, steps: int, resolution: int, batch_size: int) -> float:
    """Median seconds per step of a hand-written loop: fetch, targets, loss, backward, step."""
    model, dm = make(root, resolution, batch_size)
    dm.setup("fit")
    dm.serve_target_frames()  # one image per sample, as the model's setup asks (and diffusers' script loads)
    model.train()
    optimizer = model.configure_optimizers()
    times, done = [time.perf_counter()], 0
    while done < steps:
        for batch in dm.train_dataloader():
            loss = model.diffusion_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter())
            done += 1
            if done == steps:
                break
    return median_step(times, 6)


def lightning_loop(root: Path, steps: int, resolution: int, batch_size: int, workdir: Path) -> float:
    """Median seconds per step of `Trainer.fit` with TensorBoard logging, as `visiontales fit` runs."""
    from lightning.pytorch.loggers import TensorBoardLogger

    model, dm = make(root, resolution, batch_size)
    timer = StepTimer()
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, limit_val_batches=0, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                        logger=TensorBoardLogger(workdir, name="bench"), log_every_n_steps=10)
    trainer.fit(model, dm)
    return timer.step_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="alternate the two loops this many times")
    opts = parser.parse_args()

    from data_modules.synthetic import write_synthetic_flintstones

    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("VISIONTALES_HOME", str(tmp / "home"))
        write_synthetic_flintstones(tmp / "f", seed=0, episodes=20)
        plain, ours = [], []
        for _ in range(opts.repeats):  # alternate, so drift in machine load hits both alike
            plain.append(plain_loop(tmp / "f", opts.steps, opts.resolution, opts.batch_size))
            ours.append(lightning_loop(tmp / "f", opts.steps, opts.resolution, opts.batch_size, tmp))
    p, o = min(plain), min(ours)
    print(f"\nLoRADiffusionVisualizer (tiny SD), {opts.resolution} px, batch {opts.batch_size}, {opts.steps} steps, "
          f"best of {opts.repeats}, CPU threads {os.cpu_count()}")
    print(f"plain PyTorch loop: {p * 1000:8.1f} ms/step")
    print(f"Lightning (ours):   {o * 1000:8.1f} ms/step")
    record("lora_step_uncached", o / p, 1.0, "lower", "Lightning step / plain PyTorch loop (LoRA, uncached)",
           ms_per_step=round(o * 1000, 1), reference_ms_per_step=round(p * 1000, 1))


if __name__ == "__main__":
    main()
