"""Does `torch.compile` pay here? The LoRA visualizer's training step with its UNet compiled in place
(what `visiontales.callbacks.Compile` does) against the same step eager, same model, data and
batches, in the same process. Prints the steady-state ratio (eager step time / compiled step time:
above 1.0 it is faster once compiled), the compile time (the first steps' extra time) and how
many steps it takes to earn that back.

    python bench/compile.py [--steps 40] [--resolution 64] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from lora_loop import make
from results import record

WARMUP = 5  # steps left out of the steady state (compiling, and recompiling for a new shape)


def step_times(root: Path, steps: int, resolution: int, batch_size: int, compiled: bool) -> list[float]:
    from visiontales.callbacks import Compile

    model, dm = make(root, resolution, batch_size)
    if compiled:
        Compile().setup(None, model, "fit")  # as the callback does in a run
    dm.setup("fit")
    dm.serve_target_frames()
    model.train()
    optimizer = model.configure_optimizers()
    times, last = [], time.perf_counter()
    while len(times) < steps:
        for batch in dm.train_dataloader():
            loss = model.diffusion_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            now = time.perf_counter()
            times.append(now - last)
            last = now
            if len(times) == steps:
                break
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    opts = parser.parse_args()

    from data_modules.synthetic import write_synthetic_flintstones

    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("VISIONTALES_HOME", str(tmp / "home"))
        write_synthetic_flintstones(tmp / "f", seed=0, episodes=20)
        eager = step_times(tmp / "f", opts.steps, opts.resolution, opts.batch_size, compiled=False)
        compiled = step_times(tmp / "f", opts.steps, opts.resolution, opts.batch_size, compiled=True)
    eager_step, compiled_step = statistics.median(eager[WARMUP:]), statistics.median(compiled[WARMUP:])
    compile_s = sum(compiled[:WARMUP]) - WARMUP * compiled_step
    saving = eager_step - compiled_step
    payback = compile_s / saving if saving > 0 else float("inf")
    print(f"\nLoRADiffusionVisualizer (tiny SD), {opts.resolution} px, batch {opts.batch_size}, {opts.steps} steps, "
          f"CPU threads {torch.get_num_threads()}")
    print(f"eager: {eager_step * 1000:.1f} ms/step; compiled UNet: {compiled_step * 1000:.1f} ms/step after "
          f"{compile_s:.0f} s of compiling; pays back after {payback:.0f} steps")
    record("compile_unet_step", eager_step / compiled_step, 1.0, "higher",
           "eager / torch.compile'd UNet LoRA step time (steady state)", compile_s=round(compile_s, 1),
           payback_steps=None if payback == float("inf") else round(payback), eager_ms=round(eager_step * 1000, 1),
           compiled_ms=round(compiled_step * 1000, 1))


if __name__ == "__main__":
    main()
