"""Is the FlintstonesSV loader the bottleneck? Stories per second it delivers (2 workers) beside
training steps per second of the tiny captioner, on the synthetic FlintstonesSV.

The loader is timed serving captions only (what the captioner asks for), with all 5 memory-mapped
frames per story (what the GAN family reads) and with frame k+1 only (what the LoRA visualizer
reads), at 128 px and at SD 1.5's 512 px.

    python bench/flintstones_loader.py [--episodes 80] [--batch-size 8] [--batches 200]
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

import lightning as L
from results import record
from timing import StepTimer


def loader_stories_per_second(root: Path, batch_size: int, batches: int, images: str,
                              resolution: int = 128) -> float:
    """images: "none" (captions only), "target" (frame k+1 only, what the LoRA visualizer reads) or
    "files" (all five frames, what the GAN family reads)."""
    from data_modules.flintstones import FlintstonesSVDataModule

    dm = FlintstonesSVDataModule(str(root), batch_size=batch_size, num_workers=2, resolution=resolution)
    dm.setup("fit")
    if images == "none":
        dm.drop_images()
    elif images == "target":
        dm.serve_target_frames()
    epochs = itertools.chain.from_iterable(dm.train_dataloader() for _ in itertools.count())
    next(epochs)  # worker start-up is not throughput
    start = time.perf_counter()
    stories = sum(len(batch["texts"]) for batch in itertools.islice(epochs, batches))
    return stories / (time.perf_counter() - start)


def captioner_steps_per_second(root: Path, batch_size: int, steps: int) -> float:
    from data_modules.flintstones import FlintstonesSVDataModule
    from visiontales.models.captioner import SAGANetsCaptioner

    L.seed_everything(0)
    timer = StepTimer()
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[timer])
    trainer.fit(SAGANetsCaptioner(gpt2="tiny", lr=1e-3),
                FlintstonesSVDataModule(str(root), batch_size=batch_size, num_workers=2))
    return 1.0 / timer.step_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=200)
    opts = parser.parse_args()

    from data_modules.synthetic import write_synthetic_flintstones

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("VISIONTALES_HOME", str(tmp / "home"))
        write_synthetic_flintstones(tmp / "f", seed=0, episodes=opts.episodes)
        captions = loader_stories_per_second(tmp / "f", opts.batch_size, opts.batches, images="none")
        frames = loader_stories_per_second(tmp / "f", opts.batch_size, opts.batches, images="files")
        target = {r: loader_stories_per_second(tmp / "f", opts.batch_size, opts.batches // 4, "target", r)
                  for r in (128, 512)}
        five = loader_stories_per_second(tmp / "f", opts.batch_size, opts.batches // 4, "files", 512)
        steps = captioner_steps_per_second(tmp / "f", opts.batch_size, opts.batches)
    consumed = steps * opts.batch_size
    print(f"\nsynthetic FlintstonesSV, batch size {opts.batch_size}, 2 loader workers, CPU threads {os.cpu_count()}")
    print(f"loader, captions only:         {captions:9.1f} stories/s")
    print(f"loader, captions + 5 frames:   {frames:9.1f} stories/s")
    print(f"loader, captions + frame k+1:  {target[128]:9.1f} stories/s ({target[128] / frames:.2f}x the five frames)")
    print(f"at 512 px (SD 1.5's LoRA run): frame k+1 {target[512]:.1f} stories/s, five frames {five:.1f} "
          f"({target[512] / five:.2f}x)")
    print(f"tiny captioner training:       {steps:9.1f} steps/s = {consumed:.1f} stories/s")
    record("loader_target_frame", target[512] / five, 1.0, "higher",
           "stories/s serving frame k+1 / all five frames (512 px)", at_128_px=round(target[128] / frames, 3))
    print(f"loader headroom over training: {captions / consumed:.1f}x (captions), {frames / consumed:.1f}x (with frames)")


if __name__ == "__main__":
    main()
