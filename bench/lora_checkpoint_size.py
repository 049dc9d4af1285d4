"""Size of a LoRADiffusionVisualizer checkpoint's adapters for SD 1.5 at a given rank, computed
from an SD 1.5-sized UNet built on the meta device (no weights, no download, no memory).

    python bench/lora_checkpoint_size.py [--rank 4] [--targets to_q to_k to_v]
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--targets", nargs="+", default=["to_q", "to_k", "to_v"])
    opts = parser.parse_args()

    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    from visiontales.stand_ins import SD15_UNET  # stable-diffusion-v1-5's unet/config.json

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
        base = sum(p.numel() for p in unet.parameters())
        unet.add_adapter(LoraConfig(r=opts.rank, lora_alpha=32, target_modules=opts.targets))
    lora = sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n)
    print(f"SD 1.5 UNet: {base / 1e6:.1f} M parameters ({base * 4 / 2**20:.0f} MiB fp32, left out of checkpoints)")
    print(f"LoRA rank {opts.rank} on {', '.join(opts.targets)}: {lora:,} parameters = "
          f"{lora * 4 / 2**20:.2f} MiB fp32 in the state dict; "
          f"{lora * 12 / 2**20:.2f} MiB with AdamW's two moments in a resumable checkpoint")


if __name__ == "__main__":
    main()
