"""Epoch time of CLIPStoryteller (prefix conditioning) with the CLIP feature cache against without.

Without the cache every step decodes three JPEGs per item and runs the frozen CLIP image encoder;
with it, the first run encodes every photo once and later epochs and runs read 512-d vectors.
By default CLIP is ViT-B/32 at its real size with random weights (no download needed), so the
encoder costs what the paper's does; `--clip tiny` uses the test-sized one.

    python bench/feature_cache.py [--clip vit-b-32|tiny] [--albums 100] [--epochs 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import lightning as L


class EpochTimer(L.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(time.perf_counter() - self.start)


def run(clip: str, root: Path, epochs: int, cache: bool, workdir: Path) -> tuple[float, float]:
    """(seconds of the whole fit call, mean seconds of a training epoch)."""
    from data_modules.vist import VISTDataModule
    from visiontales.models.storyteller import CLIPStoryteller

    L.seed_everything(0)
    model = CLIPStoryteller(gpt2="tiny", clip=clip, conditioning="prefix", feature_cache=cache)
    timer = EpochTimer()
    trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[timer], default_root_dir=workdir)
    start = time.perf_counter()
    trainer.fit(model, VISTDataModule(str(root), batch_size=8, num_workers=0))
    return time.perf_counter() - start, sum(timer.seconds) / len(timer.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", choices=("vit-b-32", "tiny"), default="vit-b-32")
    parser.add_argument("--albums", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=1)
    opts = parser.parse_args()

    import open_clip

    from data_modules.synthetic import write_synthetic_vist
    from visiontales.backbones import save_clip

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["VISIONTALES_HOME"] = str(tmp / "home")  # a cold cache to start from
        write_synthetic_vist(tmp / "vist", seed=0, albums=opts.albums)
        clip = "tiny"
        if opts.clip == "vit-b-32":
            model = open_clip.create_model("ViT-B-32", pretrained=None)
            save_clip(model, open_clip.get_model_config("ViT-B-32"), tmp / "vit-b-32")
            clip = str(tmp / "vit-b-32")
        plain_fit, plain_epoch = run(clip, tmp / "vist", opts.epochs, cache=False, workdir=tmp)
        cold_fit, cold_epoch = run(clip, tmp / "vist", opts.epochs, cache=True, workdir=tmp)
        warm_fit, warm_epoch = run(clip, tmp / "vist", opts.epochs, cache=True, workdir=tmp)
    print(f"\nCLIPStoryteller prefix, CLIP {opts.clip}, synthetic VIST {opts.albums} albums, "
          f"{opts.epochs} epoch(s), CPU threads {os.cpu_count()}")
    print(f"{'run':<28}{'fit s':>9}{'epoch s':>9}")
    print(f"{'no cache (encode each step)':<28}{plain_fit:>9.2f}{plain_epoch:>9.2f}")
    print(f"{'cache, first run (builds)':<28}{cold_fit:>9.2f}{cold_epoch:>9.2f}")
    print(f"{'cache, later run':<28}{warm_fit:>9.2f}{warm_epoch:>9.2f}")
    print(f"epoch time without / with cache: {plain_epoch / warm_epoch:.1f}x; "
          f"whole first run with cache vs without: {cold_fit / plain_fit:.2f}x")


if __name__ == "__main__":
    main()
