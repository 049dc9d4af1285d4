"""Step timing shared by the bench scripts (run them as `python bench/<script>.py`)."""

from __future__ import annotations

import statistics
import time

import lightning as L


def median_step(times: list[float], skip: int) -> float:
    """Median gap between consecutive step-end times, from times[skip] on (warm-up left out)."""
    times = times[skip:]
    return statistics.median(b - a for a, b in zip(times, times[1:], strict=False))


class StepTimer(L.Callback):
    """Wall time of each training step (batch fetch included), measured from Lightning's hooks."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter())

    def step_seconds(self, skip: int = 5) -> float:
        """Median seconds per step, leaving out the first `skip` steps (warm-up)."""
        return median_step(self.times, skip)
