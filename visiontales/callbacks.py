"""Callbacks: what the models produce turned into things a person can look at (text samples,
prediction files, epoch snapshots), and the random states an exact resume needs."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from data_modules.common import SKIPPED

log = logging.getLogger(__name__)


class TextSamples(L.Callback):
    """Logs the first `n` validation samples of each epoch to TensorBoard as a Markdown table.

    The module's validation_step returns {"samples": [{"column": "text", ...}, ...]}.
    """

    def __init__(self, n: int = 4, tag: str = "val/samples") -> None:
        self.n, self.tag = n, tag
        self.rows: list[dict[str, str]] = []

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if isinstance(outputs, dict) and len(self.rows) < self.n:
            self.rows.extend(outputs.get("samples", [])[: self.n - len(self.rows)])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.rows or trainer.sanity_checking or not trainer.is_global_zero:
            return
        experiment = getattr(trainer.logger, "experiment", None)
        if not hasattr(experiment, "add_text"):
            return
        columns = list(self.rows[0])
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(str(row[c]).replace("|", "\\|") for c in columns) + " |" for row in self.rows]
        experiment.add_text(self.tag, "\n".join(lines), global_step=trainer.global_step)


class SkippedItems(L.Callback):
    """Takes the notes of items that could not be read (files changed after the data check; see
    `data_modules.common.SkippingDataset`) off each batch and says at the end of the epoch how many
    were skipped and which, so a damaged file costs one item, not the run."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def _take(self, batch: Any) -> None:
        if isinstance(batch, dict):
            self.notes += batch.pop(SKIPPED, [])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._take(batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._take(batch)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._take(batch)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._take(batch)

    def _report(self, trainer: L.Trainer, what: str) -> None:
        if self.notes:
            rank = f" (rank {trainer.global_rank})" if trainer.world_size > 1 else ""
            shown = "; ".join(self.notes[:5]) + ("; ..." if len(self.notes) > 5 else "")
            log.warning(f"{what}{rank}: {len(self.notes)} item(s) could not be read and were skipped, "
                        f"another item standing in (run `visiontales data check`): {shown}")
        self.notes = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer, f"epoch {trainer.current_epoch}")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer, "validation")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer, "test")

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer, "predict")


class JSONPredictionWriter(BasePredictionWriter):
    """Writes every record that predict_step returns to `<log dir>/predictions.json`, and shows the
    first few on the console."""

    def __init__(self, filename: str = "predictions.json", show: int = 2) -> None:
        super().__init__(write_interval="epoch")
        self.filename, self.show = filename, show

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        records: list[dict[str, Any]] = [r for batch in predictions for r in batch]
        if trainer.world_size > 1:
            import torch.distributed as dist

            gathered: list = [None] * trainer.world_size
            dist.all_gather_object(gathered, records)
            records = [r for part in gathered for r in part]
        if not trainer.is_global_zero:
            return
        out = Path(trainer.log_dir or ".") / self.filename
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(records, indent=1))
        for record in records[: self.show]:
            rank_zero_info("\n".join(f"{k:>10}: {v}" for k, v in record.items()) + "\n")
        rank_zero_info(f"wrote {len(records)} predictions to {out}")


class EpochSnapshots(L.Callback):
    """Saves a checkpoint at the end of the listed epochs (1-based) as
    `<log dir>/checkpoints/epoch-<n>.ckpt`, beside what the model's own ModelCheckpoint keeps: for
    comparing one run at several lengths (the GAN at 5 and 20 epochs, LoRA at 1 and more)."""

    def __init__(self, epochs: list[int]) -> None:
        self.epochs = set(epochs)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch in self.epochs:
            path = Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints" / f"epoch-{epoch}.ckpt"
            trainer.save_checkpoint(path)
            rank_zero_info(f"saved {path}")


class RNGStates(L.Callback):
    """Saves the Python, NumPy and torch (CPU and CUDA) random states with every checkpoint and
    restores them when training resumes from it, so that a resumed run draws the same noise,
    timesteps, prefix lengths and shuffles as a straight one (Lightning saves none of them).

    They are restored when the checkpoint is loaded, before the training data loader of the
    resumed epoch is created (Lightning's sanity check runs with its RNG isolated). Only rank 0's
    states are written; under DDP every rank restores them, which is exact because
    `seed_everything` seeds every rank alike and each rank draws as many numbers per step. The
    CUDA state is the current device's (each rank's own device). Data loader workers are
    re-seeded from the restored state every epoch (they are not persistent). Stored as tensors
    and plain numbers, so the checkpoint loads with `weights_only=True`; Lightning's own
    `_collect_rng_states` keeps NumPy's state as an array, which that refuses.
    """

    def state_dict(self) -> dict[str, Any]:
        version, state, gauss = random.getstate()
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        return {"python": [version, list(state), gauss], "numpy": [kind, torch.from_numpy(keys.astype(np.int64)),
                                                                   pos, has_gauss, cached],
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, values, gauss = state["python"]
        random.setstate((version, tuple(values), gauss))
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if state["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])


class StepCost(L.Callback):
    """What a training step costs: FLOPs (torch's FlopCounterMode over one whole step, forward,
    backward and optimizer, the `count_step`-th), the bytes of tensors autograd saves for the
    backward in that step (activation memory), seconds per step (median, warm-up and counted steps
    left out), the model's bytes, and peak memory (CUDA: max allocated; CPU: the process's peak
    resident set). Written to `out` (JSON) at the end of fit: what bench/paper_estimates.py turns
    into estimates, and what MFU is measured from on a GPU."""

    def __init__(self, out: str = "step_cost.json", count_step: int = 1) -> None:
        self.out, self.count_step = Path(out), count_step
        self.flops: int | None = None
        self.saved_bytes = 0
        self.times: list[float] = []
        self.seen = 0
        self._counter = self._hooks = None
        self._start = 0.0

    def _sync(self, trainer: L.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import time

        if self.seen == self.count_step:
            from torch.utils.flop_counter import FlopCounterMode

            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()
            seen: set[int] = set()

            def pack(tensor: torch.Tensor) -> torch.Tensor:
                key = tensor.untyped_storage().data_ptr()
                if key not in seen:
                    seen.add(key)
                    self.saved_bytes += tensor.untyped_storage().nbytes()
                return tensor

            self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)
            self._hooks.__enter__()
        self._sync(trainer)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import time

        self._sync(trainer)
        elapsed = time.perf_counter() - self._start
        if self._counter is not None:
            self._hooks.__exit__(None, None, None)
            self._counter.__exit__(None, None, None)
            self.flops, self._counter = self._counter.get_total_flops(), None
        elif self.seen > 0:  # the first step pays for warm-up; the counted one for counting
            self.times.append(elapsed)
        self.seen += 1

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import resource

        if trainer.strategy.root_device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(trainer.strategy.root_device)
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        tensors = [*pl_module.parameters(), *pl_module.buffers()]
        trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        result = {"flops_per_step": self.flops, "s_per_step": float(np.median(self.times)) if self.times else None,
                  "steps_timed": len(self.times), "saved_for_backward_bytes": self.saved_bytes,
                  "model_bytes": sum(t.numel() * t.element_size() for t in tensors), "trainable_parameters": trainable,
                  "peak_memory_bytes": peak,
                  "device": str(trainer.strategy.root_device), "precision": str(trainer.precision)}
        if trainer.is_global_zero:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(json.dumps(result, indent=1))
            rank_zero_info(f"step cost: {json.dumps(result)}")


class TrainableEMA(L.Callback):
    """An exponential moving average of the trainable weights (adapters, heads, fine-tuned GPT-2),
    updated after every optimizer step: ema = decay * ema + (1 - decay) * weight (torch's
    `get_ema_multi_avg_fn`). Validation runs on the averaged weights, and checkpoints hold them
    in `state_dict`, so `evaluate`, `story` and `export` use them; the raw weights travel in the
    checkpoint under `ema_raw_weights`, so a resumed run goes on from where it stopped. Frozen parts
    are never copied (Lightning's `EMAWeightAveraging` averages a deep copy of the whole module:
    Stable Diffusion twice over); buffers (BatchNorm statistics) stay as trained.

    Add it to a run with `--trainer.callbacks+=visiontales.callbacks.TrainableEMA
    --trainer.callbacks.decay 0.999`, or in a config's `trainer.callbacks`.
    """

    RAW_KEY = "ema_raw_weights"

    def __init__(self, decay: float = 0.999) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be within (0, 1), got {decay}")
        self.decay = decay
        self.names: list[str] = []  # one name per trainable parameter
        self.weights: list[torch.Tensor] = []  # the parameters themselves, looked up once
        self.aliases: dict[str, list[str]] = {}  # every state-dict name of it (tied weights have several)
        self.average: list[torch.Tensor] = []
        self.updated_at = 0  # the global step of the last update

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.names = [name for name, p in pl_module.named_parameters() if p.requires_grad]
            first = {id(p): name for name, p in pl_module.named_parameters() if p.requires_grad}
            self.aliases = {name: [] for name in self.names}
            for name, p in pl_module.named_parameters(remove_duplicate=False):
                if id(p) in first:
                    self.aliases[first[id(p)]].append(name)
            # found once: walking the modules later would hash torchmetrics metrics, which fails
            # for list states (CaptionScores) once they hold values
            self.weights = [p for p in pl_module.parameters() if p.requires_grad]
            self.average = [p.detach().clone() for p in self.weights]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # setup runs before the strategy moves the module to its device (and a resume's
        # on_load_checkpoint after it, copying across devices): the averages follow the weights here
        self.average = [average.to(p.device) for average, p in zip(self.average, self.weights, strict=True)]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step > self.updated_at:  # an optimizer step was taken (not mid-accumulation)
            from torch.optim.swa_utils import get_ema_multi_avg_fn

            with torch.no_grad():
                get_ema_multi_avg_fn(self.decay)(self.average, [p.detach() for p in self.weights], None)
            self.updated_at = trainer.global_step

    def _swap(self) -> None:
        with torch.no_grad():
            for p, average in zip(self.weights, self.average, strict=True):
                raw = p.detach().clone()
                p.copy_(average)
                average.copy_(raw)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.average:
            self._swap()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.average:
            self._swap()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if not self.average:
            return
        state = checkpoint["state_dict"]
        checkpoint[self.RAW_KEY] = {name: state[name] for name in self.names}
        for name, average in zip(self.names, self.average, strict=True):
            state.update(dict.fromkeys(self.aliases[name], average.detach().clone()))

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        """On resume: the module was loaded with the averaged weights; they become the average
        again, and the raw weights go back into the module."""
        raw = checkpoint.get(self.RAW_KEY)
        if not self.average or raw is None:
            return
        with torch.no_grad():
            for name, p, average in zip(self.names, self.weights, self.average, strict=True):
                average.copy_(p)
                p.copy_(raw[name])

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updated_at": self.updated_at}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.updated_at = state_dict["updated_at"]
        if state_dict.get("decay") != self.decay:
            log.warning("TrainableEMA: resuming with decay %s; the checkpoint's average was kept with %s",
                        self.decay, state_dict.get("decay"))


class Compile(L.Callback):
    """`torch.compile` for a model's heavy parts when fitting starts: by default the submodules
    listed in the model class's `compile_targets` (the LoRA visualizer's UNet, the text models'
    GPT-2), or those given by name. Compiled in place (`nn.Module.compile`), so state-dict keys, and with
    them checkpoints, do not change. Whether it pays depends on the machine: `bench/compile.py`.

    `--trainer.callbacks+=visiontales.callbacks.Compile [--trainer.callbacks.modules '[sd.unet]']
    [--trainer.callbacks.mode max-autotune]`.
    """

    def __init__(self, modules: list[str] | None = None, mode: str | None = None, dynamic: bool | None = None) -> None:
        self.modules, self.mode, self.dynamic = modules, mode, dynamic

    def targets(self, pl_module: L.LightningModule) -> list[str]:
        names = list(self.modules or getattr(pl_module, "compile_targets", ()))
        if not names:
            raise ValueError(f"{type(pl_module).__name__} names no compile_targets: give Compile(modules=[...])")
        return names

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        for name in self.targets(pl_module):
            try:
                module = pl_module.get_submodule(name)
            except AttributeError as e:
                raise ValueError(f"Compile: {type(pl_module).__name__} has no submodule '{name}'") from e
            module.compile(mode=self.mode, dynamic=self.dynamic)
            rank_zero_info(f"torch.compile: {name} ({type(module).__name__})")
