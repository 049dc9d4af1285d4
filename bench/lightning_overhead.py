"""What Lightning adds to a training step, apart from the step's own work: a one-layer model
(a step of ~0.5 ms) trained by a plain PyTorch loop, by `Trainer.fit`, and by `Trainer.fit` with
the `self.log("train/loss", on_step=True, on_epoch=True, prog_bar=True)` our modules make, in the
same process. The differences are Lightning's fixed cost per step, to set against a real step's
time (bench/lora_loop.py); not in `make bench`.

    python bench/lightning_overhead.py [--steps 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import lightning as L
import torch
from timing import StepTimer, median_step


class OneLayer(L.LightningModule):
    def __init__(self, log: bool) -> None:
        super().__init__()
        self.layer, self.log_loss = torch.nn.Linear(64, 64), log

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        if self.log_loss:
            self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch[0]))
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def plain_loop(data) -> float:
    model = OneLayer(log=False)
    optimizer = model.configure_optimizers()
    times = [time.perf_counter()]
    for (x,) in data:
        loss = model.layer(x).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter())
    return median_step(times, 5)


def lightning_loop(data, log: bool, workdir: str) -> float:
    from lightning.pytorch.loggers import TensorBoardLogger

    timer = StepTimer()
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[timer], log_every_n_steps=10,
                        logger=TensorBoardLogger(workdir, name="bench"))
    trainer.fit(OneLayer(log), data)
    return timer.step_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    opts = parser.parse_args()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8 * opts.steps, 64)), batch_size=8)
    with tempfile.TemporaryDirectory() as tmp:
        plain, bare, logged = plain_loop(data), lightning_loop(data, False, tmp), lightning_loop(data, True, tmp)
    print(f"plain loop {plain * 1e3:.3f} ms/step; Trainer.fit {bare * 1e3:.3f} ms/step "
          f"(+{(bare - plain) * 1e3:.2f} ms); with self.log {logged * 1e3:.3f} ms/step (+{(logged - plain) * 1e3:.2f} ms)")
    print(f"lightning_fixed_cost: Trainer.fit with self.log / plain loop on a one-layer model = {logged / plain:.2f}")


if __name__ == "__main__":
    main()
