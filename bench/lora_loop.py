"""Our Lightning training step of LoRADiffusionVisualizer against a plain PyTorch loop of the shape of
diffusers' `examples/text_to_image/train_text_to_image_lora.py` (its dataset transform, collate
and DataLoader, and its step: `vae.encode(...).latent_dist.sample()`, the text encoder on the
batch's token ids, `noise_scheduler.add_noise`, the UNet, MSE, backward, gradient clipping at
`max_grad_norm` 1.0, AdamW, a constant lr scheduler, and its `loss.item()` for the log), over the
same model components, the same training stories (frame k+1 of each, as our data module serves)
and the same optimizer settings, in the same process. Both run `cache: false` and clip at 1.0.
Target: Lightning / script-shaped loop <= 1.0. Each loop's time is the median step of a run; the
two loops alternate `--repeats` times and the best run of each is compared (this machine's load
drifts by about 10% between runs, so one pair alone can miss either way).

    python bench/lora_loop.py [--steps 60] [--resolution 64] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from results import record
from timing import StepTimer, median_step

MAX_GRAD_NORM = 1.0  # the script's default --max_grad_norm


def make(root: Path, resolution: int, batch_size: int):
    from data_modules.flintstones import FlintstonesSVDataModule
    from visiontales.models.lora_diffusion import LoRADiffusionVisualizer

    L.seed_everything(0)
    model = LoRADiffusionVisualizer(sd="tiny", resolution=resolution, val_samples=0)
    dm = FlintstonesSVDataModule(str(root), resolution=resolution, batch_size=batch_size)
    return model, dm


class ScriptDataset(torch.utils.data.Dataset):
    """The script's `train_dataset.with_transform(preprocess_train)` over our training stories:
    item i is frame k+1 of story i (k and the clip's frame drawn as our data module draws them),
    as a PIL image through the script's `train_transforms`, and its caption through its
    `tokenize_captions`."""

    def __init__(self, stories, index, tokenizer, resolution: int, max_prefix: int) -> None:
        from torchvision import transforms

        self.stories, self.index, self.tokenizer, self.max_prefix = stories, index, tokenizer, max_prefix
        self.train_transforms = transforms.Compose([
            transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(resolution),
            transforms.Lambda(lambda x: x),  # --random_flip off
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5]),
        ])

    def __len__(self) -> int:
        return len(self.stories)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        from PIL import Image

        story = self.stories[i]
        k = random.randint(0, self.max_prefix)
        clip = story[k]
        frames = np.load(self.index.frames_path(clip), mmap_mode="r")
        image = Image.fromarray(np.array(frames[random.randrange(len(frames))])).convert("RGB")
        input_ids = self.tokenizer(self.index.clips[clip].caption, max_length=self.tokenizer.model_max_length,
                                   padding="max_length", truncation=True, return_tensors="pt").input_ids[0]
        return {"pixel_values": self.train_transforms(image), "input_ids": input_ids}


def collate_fn(examples):
    pixel_values = torch.stack([example["pixel_values"] for example in examples])
    pixel_values = pixel_values.to(memory_format=torch.contiguous_format).float()
    input_ids = torch.stack([example["input_ids"] for example in examples])
    return {"pixel_values": pixel_values, "input_ids": input_ids}


def script_loop(root: Path, steps: int, resolution: int, batch_size: int) -> float:
    """Median seconds per step of the diffusers script's training loop (fp32, one process, no
    gradient accumulation), written out plainly over our model's components."""
    from diffusers.optimization import get_scheduler

    model, dm = make(root, resolution, batch_size)
    dm.setup("fit")
    sd = model.sd
    vae, text_encoder, unet, noise_scheduler = sd.vae, sd.text_encoder, sd.unet, sd.noise_scheduler
    dataset = ScriptDataset(dm.datasets["train"].stories, dm.index, sd.tokenizer, resolution,
                            dm.hparams.max_prefix_len)
    train_dataloader = torch.utils.data.DataLoader(dataset, shuffle=True, collate_fn=collate_fn,
                                                   batch_size=batch_size, num_workers=dm.hparams.num_workers)
    lora_layers = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(lora_layers, lr=model.hparams.lr, betas=(0.9, 0.999),
                                  weight_decay=model.hparams.weight_decay, eps=1e-08)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0, num_training_steps=steps)
    times, done = [time.perf_counter()], 0
    while done < steps:
        unet.train()
        train_loss = 0.0
        for batch in train_dataloader:
            latents = vae.encode(batch["pixel_values"]).latent_dist.sample()
            latents = latents * vae.config.scaling_factor
            noise = torch.randn_like(latents)
            bsz = latents.shape[0]
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,), device=latents.device)
            timesteps = timesteps.long()
            noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
            encoder_hidden_states = text_encoder(batch["input_ids"], return_dict=False)[0]
            if noise_scheduler.config.prediction_type == "epsilon":
                target = noise
            elif noise_scheduler.config.prediction_type == "v_prediction":
                target = noise_scheduler.get_velocity(latents, noise, timesteps)
            else:
                raise ValueError(f"Unknown prediction type {noise_scheduler.config.prediction_type}")
            model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
            loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
            train_loss += loss.repeat(batch_size).mean().item()  # the script's host syncs: its logged loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lora_layers, MAX_GRAD_NORM)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
            _logs = {"step_loss": loss.detach().item(), "lr": lr_scheduler.get_last_lr()[0]}  # and progress bar
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
                        gradient_clip_val=MAX_GRAD_NORM, logger=TensorBoardLogger(workdir, name="bench"),
                        log_every_n_steps=10)
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
        script, ours = [], []
        for _ in range(opts.repeats):  # alternate, so drift in machine load hits both alike
            script.append(script_loop(tmp / "f", opts.steps, opts.resolution, opts.batch_size))
            ours.append(lightning_loop(tmp / "f", opts.steps, opts.resolution, opts.batch_size, tmp))
    s, o = min(script), min(ours)
    print(f"\nLoRADiffusionVisualizer (tiny SD), {opts.resolution} px, batch {opts.batch_size}, {opts.steps} steps, "
          f"best of {opts.repeats}, CPU threads {os.cpu_count()}")
    print(f"diffusers script's loop: {s * 1000:8.1f} ms/step   (runs: {', '.join(f'{x * 1000:.0f}' for x in script)})")
    print(f"Lightning (ours):        {o * 1000:8.1f} ms/step   (runs: {', '.join(f'{x * 1000:.0f}' for x in ours)})")
    record("lora_step_uncached", o / s, 1.0, "lower",
           "Lightning step / diffusers' train_text_to_image_lora.py loop (LoRA, uncached)",
           ms_per_step=round(o * 1000, 1), reference_ms_per_step=round(s * 1000, 1))


if __name__ == "__main__":
    main()
