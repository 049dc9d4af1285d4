"""Estimates of what `make reproduce-paper PROFILE=paper` costs on a GPU: per training run, the
steps of the paper's schedule on the real datasets, GPU hours, peak GPU memory, and the disk its
caches take. Made where no GPU is at hand, so they are estimates:

- FLOPs per step are counted (torch FlopCounterMode, visiontales.callbacks.StepCost) on one real
  training step of each paper config at real size (the paper-size stand-ins of `visiontales
  bootstrap --paper-size`, the smoke's stand-in data), at batch 1, and scaled to the config's batch;
- GPU hours = steps x FLOPs / (an H100's dense bf16 peak x an assumed MFU), with a floor of
  --min-step-ms per step (small models at batch 1 are bound by kernel launches, not FLOPs);
- peak memory = the model's bytes + 3 x the trainable parameters in fp32 (gradients, AdamW's two
  moments) + the tensors saved for the backward (counted in the same step) x the batch;
- the CPU's own seconds per step (batch 1) are printed beside, as measured.

    python bench/paper_estimates.py [--mfu 0.3] [--out bench/paper_estimates.json]

Run after `make smoke-paper` (it reuses the stand-ins and the smoke data); about 5 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
H100_BF16_DENSE = 989e12  # FLOP/s
# the real datasets: VIST as the paper used it (about 3,000 three-image sequences); FlintstonesSV's
# 20,132 / 2,071 / 2,309 train / val / test clips, each starting one story of five
PAPER_EXAMPLES = {"vist": 3000, "flintstones": 20132}
FLINTSTONES_TEST_CLIPS = 2309
# config: (dataset, epochs, batch, dataset the batch counts: stories per batch)
RUNS = {
    "clip_storyteller_prefix": ("vist", 7, 1), "clip_storyteller": ("vist", 7, 1),
    "character_classifier": ("flintstones", 20, 16), "sagan_captioner": ("flintstones", 1, 8),
    "sagan_lora": ("flintstones", 3, 8), "gan": ("flintstones", 20, 8), "clip_centric": ("flintstones", 20, 8),
    "temporal_coherence": ("flintstones", 20, 8), "combined": ("flintstones", 20, 8),
}
GB = 1e9


def measure(config: str, vist: Path, flintstones: Path, out: Path, env: dict[str, str]) -> dict:
    dataset = RUNS[config][0]
    root = vist if dataset == "vist" else flintstones
    args = [sys.executable, "-m", "visiontales.cli", "fit", "--config", str(ROOT / "experiments" / f"{config}.yaml"),
            "--data.init_args.root", str(root), "--data.init_args.batch_size", "1",
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "0",
            "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(out / "runs"), "--trainer.logger.init_args.name", config,
            "--trainer.callbacks+=visiontales.callbacks.StepCost", f"--trainer.callbacks.out={out / config}.json"]
    if config == "sagan_lora":
        args += ["--model.init_args.cache", "false"]  # the cache's first pass would encode every frame
    subprocess.run(args, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    return json.loads((out / f"{config}.json").read_text())


SAMPLING = """
import json, yaml, torch
from torch.utils.flop_counter import FlopCounterMode
from visiontales.models.lora_diffusion import LoRADiffusionVisualizer
init = yaml.safe_load(open({config!r}))["model"]["init_args"]
flops = {{}}
for steps in (1, 2):
    model = LoRADiffusionVisualizer(**{{**init, "num_inference_steps": steps}}).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.generate(["Fred and Barney are talking in the quarry."], [0])
    flops[steps] = counter.get_total_flops()
print(json.dumps({{"per_step": flops[2] - flops[1], "fixed": 2 * flops[1] - flops[2]}}))
"""


def measure_sampling(env: dict[str, str]) -> dict:
    """FLOPs of drawing one frame with the paper's LoRA visualizer: per denoising step (guidance
    included) and once per frame (caption encoding, VAE decode)."""
    code = SAMPLING.format(config=str(ROOT / "experiments" / "sagan_lora.yaml"))
    out = subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def estimate(config: str, cost: dict, mfu: float, min_step_s: float) -> dict:
    dataset, epochs, batch = RUNS[config]
    steps = epochs * -(-PAPER_EXAMPLES[dataset] // batch)
    flops = cost["flops_per_step"] * batch
    seconds = steps * max(flops / (H100_BF16_DENSE * mfu), min_step_s)
    memory = cost["model_bytes"] + 3 * 4 * cost["trainable_parameters"] + cost["saved_for_backward_bytes"] * batch
    return {"steps": steps, "batch": batch, "epochs": epochs, "tflops_per_step": flops / 1e12,
            "gpu_hours": seconds / 3600, "peak_gpu_memory_gb": memory / GB,
            "cpu_s_per_step_batch1": cost["s_per_step"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mfu", type=float, default=0.3, help="assumed model FLOPs utilisation (default 0.3)")
    parser.add_argument("--min-step-ms", type=float, default=25.0, help="floor per step (launch-bound small steps)")
    parser.add_argument("--vist", type=Path, default=ROOT / "data" / "vist-smoke")
    parser.add_argument("--flintstones", type=Path, default=ROOT / "data" / "flintstones-smoke")
    parser.add_argument("--configs", nargs="+", default=list(RUNS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "paper_estimates.json")
    opts = parser.parse_args()

    from visiontales.preflight import CAPTION_BYTES, LATENT_BYTES
    from visiontales.stand_ins import hub_environment

    env = {**os.environ, **hub_environment(), "HF_HUB_VERBOSITY": "error"}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for config in opts.configs:
            cost = measure(config, opts.vist, opts.flintstones, Path(tmp), env)
            results[config] = estimate(config, cost, opts.mfu, opts.min_step_ms / 1000)
            r = results[config]
            print(f"{config:<24} {r['steps']:>7} steps x {r['tflops_per_step']:8.3f} TFLOP: {r['gpu_hours']:7.2f} "
                  f"GPU h, peak ~{r['peak_gpu_memory_gb']:5.1f} GB (CPU, batch 1: {r['cpu_s_per_step_batch1']:.1f} s/step)",
                  flush=True)
    train_val_clips = PAPER_EXAMPLES["flintstones"] + 2071
    caches = {"lora_latents_gb": train_val_clips * 5 * LATENT_BYTES / GB, "lora_captions_gb": train_val_clips * CAPTION_BYTES / GB}
    # sampling: each of the four LoRA rows draws every test clip's frame, 30 DDIM steps with guidance
    frame = measure_sampling(env)
    frame_flops = 30 * frame["per_step"] + frame["fixed"]
    sampling_hours = 4 * FLINTSTONES_TEST_CLIPS * frame_flops / (H100_BF16_DENSE * opts.mfu) / 3600
    total = sum(r["gpu_hours"] for r in results.values())
    print(f"one 512 px frame, 30 DDIM steps with guidance: {frame_flops / 1e12:.1f} TFLOP; the four LoRA evaluation "
          f"rows ({4 * FLINTSTONES_TEST_CLIPS} frames): {sampling_hours:.2f} GPU h")
    print(f"caches: LoRA latents {caches['lora_latents_gb']:.1f} GB, caption states {caches['lora_captions_gb']:.1f} GB; "
          f"training total {total:.1f} GPU h (H100 bf16, MFU {opts.mfu})")
    summary = {"assumptions": {"gpu": "H100 SXM, 989 TFLOP/s dense bf16", "mfu": opts.mfu,
                               "min_step_s": opts.min_step_ms / 1000, "examples": PAPER_EXAMPLES,
                               "test_clips": FLINTSTONES_TEST_CLIPS},
               "runs": results, "caches": caches, "training_gpu_hours": total,
               "sampling": {"tflops_per_frame": frame_flops / 1e12, "lora_rows_gpu_hours": sampling_hours}}
    opts.out.write_text(json.dumps(summary, indent=1))
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
