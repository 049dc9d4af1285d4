"""Drawing frames: `LoRADiffusionVisualizer.generate` (what evaluate, story and the report use)
against diffusers' `StableDiffusionPipeline` with the exported LoRA, on the same model, sampler,
steps, guidance, batch and starting noise, in the same process. Prints frames/s of both, the ratio
(target >= 1.0) and the largest difference between their frames (they must agree).

    python bench/sampling.py [--sd tiny] [--resolution 64] [--batch-size 8] [--steps 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from results import record

CAPTIONS = ["Fred is walking in the yard.", "Wilma laughs in the kitchen.", "Barney talks to Betty in the quarry.",
            "Dino runs across the living room.", "Pebbles plays with Dino outside.", "Mr Slate shouts in the quarry.",
            "Betty and Wilma sit in the car.", "Fred and Barney eat in the diner."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sd", default="tiny", help="Stable Diffusion spec (tiny, a hub id or a local directory)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()

    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from visiontales.backbones import sd_source
    from visiontales.models.lora_diffusion import LoRADiffusionVisualizer

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = LoRADiffusionVisualizer(sd=opts.sd, resolution=opts.resolution, sampler="ddim",
                                    num_inference_steps=opts.steps, guidance_scale=opts.guidance,
                                    inference_lora_alpha=10).eval()
    with torch.no_grad():  # trained-looking adapters: LoRA's B starts at zero, which would hide them
        for name, p in model.sd.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    captions = (CAPTIONS * (opts.batch_size // len(CAPTIONS) + 1))[: opts.batch_size]
    seeds = list(range(opts.batch_size))
    with tempfile.TemporaryDirectory() as tmp:
        model.export_lora(Path(tmp) / "lora")
        pipe = StableDiffusionPipeline.from_pretrained(sd_source(opts.sd), safety_checker=None,
                                                       requires_safety_checker=False)
        pipe.load_lora_weights(Path(tmp) / "lora")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    noise = model.seeded_noise(model.sd.latent_shape(opts.resolution), seeds)

    def ours() -> torch.Tensor:
        return (model.generate(captions, seeds).frames + 1) / 2

    def theirs() -> torch.Tensor:
        with torch.no_grad():
            return pipe(captions, height=opts.resolution, width=opts.resolution, num_inference_steps=opts.steps,
                        guidance_scale=opts.guidance, latents=noise.clone(), output_type="pt",
                        cross_attention_kwargs={"scale": model.lora_scale()}).images

    ours(), theirs()  # warm-up, untimed: the first draw of each pays for allocations and kernel choice
    times = {"ours": [], "pipeline": []}
    for _ in range(opts.rounds):  # alternate, so drift in machine load hits both alike
        for name, draw in (("ours", ours), ("pipeline", theirs)):
            start = time.perf_counter()
            frames = draw()
            times[name].append(time.perf_counter() - start)
            if name == "ours":
                mine = frames
            else:
                difference = (mine - frames).abs().max().item()
    fps = {name: opts.batch_size / statistics.median(t) for name, t in times.items()}
    print(f"sampling, SD {opts.sd} at {opts.resolution} px, batch {opts.batch_size}, {opts.steps} DDIM steps, guidance "
          f"{opts.guidance}, LoRA at alpha 10, CPU threads {torch.get_num_threads()} (median of {opts.rounds})")
    print(f"generate: {fps['ours']:.2f} frames/s; StableDiffusionPipeline: {fps['pipeline']:.2f} frames/s; "
          f"largest frame difference {difference:.2e}")
    record("sampling", fps["ours"] / fps["pipeline"], 1.0, "higher", "generate / StableDiffusionPipeline frames/s",
           frames_per_s=round(fps["ours"], 3), largest_difference=difference)


if __name__ == "__main__":
    main()
