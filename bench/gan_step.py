"""Our Lightning training step of GANVisualizer (experiments/tiny/gan.yaml: the conv generator,
the projection discriminator, L_adv + 10 L1 + L_clip + 0.1 L_char through the tiny-domain CLIP)
against a plain PyTorch loop of the shape of PyTorch's DCGAN tutorial on the same modules, the
same stories (2 a step, 10 frames) and the same optimizers, in the same process.

The reference is what one writes by hand: one forward pass of G, a D step on the detached frames,
a G step through D (D's gradients left to be zeroed at its next step), CLIP's patch embedding the
stock `nn.Conv2d`. Ours differs in Lightning's loop, logging and manual optimization (toggled
optimizers, the divergence guard) and in what GANVisualizer does for speed: the patch embedding as
one matrix product (visiontales.models.gan.PatchEmbedding). Target: Lightning / reference <= 1.0. The two alternate `--repeats` times and the
best run of each is compared (a step is ~0.5 s; this machine's load drifts by about 10%).

    python bench/gan_step.py [--steps 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import yaml
from results import record
from timing import StepTimer, median_step

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "experiments" / "tiny" / "gan.yaml"


def make(root: Path):
    """The tiny GAN and its data module, as experiments/tiny/gan.yaml builds them."""
    from data_modules.flintstones import FlintstonesSVDataModule
    from visiontales.models.gan import GANVisualizer

    config = yaml.safe_load(CONFIG.read_text())
    L.seed_everything(0, verbose=False)
    model = GANVisualizer(**config["model"]["init_args"])
    dm = FlintstonesSVDataModule(**{**config["data"]["init_args"], "root": str(root)})
    return model, dm


def reference_loop(root: Path, steps: int) -> float:
    """Median seconds per step of the DCGAN tutorial's loop on the same modules, CLIP's stock patch convolution."""
    from visiontales import losses

    model, dm = make(root)
    conv = model.clip.visual.conv1  # back to the stock convolution, the same weights
    model.clip.visual.conv1 = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                              bias=conv.bias is not None).requires_grad_(False)
    model.clip.visual.conv1.load_state_dict(conv.state_dict())
    g, d, h = model.generator, model.discriminator, model.hparams
    opt_g = torch.optim.Adam(g.parameters(), lr=h.lr_g, betas=tuple(h.betas))
    opt_d = torch.optim.Adam(d.parameters(), lr=h.lr_d, betas=tuple(h.betas))
    dm.setup("fit")
    model.train()
    times = [time.perf_counter()]
    while len(times) <= steps:
        for batch in dm.train_dataloader():
            real, captions, b, s = model.story_batch(batch)
            cond = model.caption_embeddings(captions)
            z = torch.randn(len(real), h.z_dim)
            fake = g(z, cond)
            d_loss = losses.discriminator_loss(d(real, cond), d(fake.detach(), cond), h.adversarial_loss)
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
            terms = model.generator_terms(fake, real, cond, b, s)
            g_loss = sum(model.weighted(terms).values())
            opt_g.zero_grad()
            g_loss.backward()
            opt_g.step()
            g_loss.item()  # the tutorial's log line
            times.append(time.perf_counter())
            if len(times) > steps:
                break
    return median_step(times, 5)


def lightning_loop(root: Path, steps: int, workdir: Path) -> float:
    """Median seconds per step of `Trainer.fit` with TensorBoard logging, as `visiontales fit` runs."""
    from lightning.pytorch.loggers import TensorBoardLogger

    model, dm = make(root)
    timer = StepTimer()
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, limit_val_batches=0, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                        logger=TensorBoardLogger(workdir, name="bench"), log_every_n_steps=5)
    trainer.fit(model, dm)
    return timer.step_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3, help="alternate the two loops this many times")
    opts = parser.parse_args()

    from data_modules.synthetic import write_synthetic_flintstones
    from visiontales.bootstrap import build_domain_backbones

    torch.set_num_threads(os.cpu_count() or 1)
    build_domain_backbones()  # the tiny config names tiny-domain: installed once, kept in VISIONTALES_HOME
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_synthetic_flintstones(tmp / "f", seed=0, episodes=20)
        reference, ours = [], []
        for _ in range(opts.repeats):  # alternate, so drift in machine load hits both alike
            reference.append(reference_loop(tmp / "f", opts.steps))
            ours.append(lightning_loop(tmp / "f", opts.steps, tmp))
    r, o = min(reference), min(ours)
    print(f"\nGANVisualizer (tiny gan.yaml), 2 stories (10 frames) a step at 64 px, {opts.steps} steps, best of "
          f"{opts.repeats}, CPU threads {os.cpu_count()}")
    print(f"DCGAN-tutorial loop, stock conv:    {r * 1000:8.1f} ms/step   (runs: {', '.join(f'{x * 1000:.0f}' for x in reference)})")
    print(f"Lightning (ours):                   {o * 1000:8.1f} ms/step   (runs: {', '.join(f'{x * 1000:.0f}' for x in ours)})")
    record("gan_step", o / r, 1.0, "lower", "Lightning GAN step / DCGAN-tutorial loop on the same modules",
           ms_per_step=round(o * 1000, 1), reference_ms_per_step=round(r * 1000, 1))


if __name__ == "__main__":
    main()
