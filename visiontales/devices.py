"""Where the commands outside Lightning's loops (evaluate, story, tell) run: `--device
auto|cpu|cuda[:N]` and `--precision` as Lightning names it. The same code runs on the CPU and the GPU;
only the device and the autocast differ."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import torch

from visiontales.errors import VisionTalesError

DEVICES_HELP = "auto (a CUDA GPU if there is one, else the CPU), cpu, cuda or cuda:N (default auto)"
PRECISIONS = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def resolve_device(spec: str) -> torch.device:
    """The torch device `spec` names, or one line saying why it cannot be used here."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if match is None:
        raise VisionTalesError(f"--device '{spec}': expected {DEVICES_HELP}")
    if not torch.cuda.is_available():
        raise VisionTalesError(f"--device {spec}: no CUDA GPU is visible here (use --device cpu or auto)")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise VisionTalesError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return torch.device("cuda", index)


@dataclass(frozen=True)
class Placement:
    """A device and a precision: models are moved with `place`, work runs inside `autocast()`."""

    device: torch.device
    precision: str = "32-true"

    @classmethod
    def from_options(cls, device: str, precision: str) -> Placement:
        if precision not in PRECISIONS:
            raise VisionTalesError(f"--precision '{precision}': choose one of {', '.join(PRECISIONS)}")
        return cls(resolve_device(device), precision)

    def place(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.to(self.device)

    def autocast(self):
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def trainer_options(self) -> dict:
        """The same placement as Lightning Trainer arguments."""
        if self.device.type == "cuda":
            return {"accelerator": "gpu", "devices": [self.device.index or 0], "precision": self.precision}
        return {"accelerator": "cpu", "devices": 1, "precision": self.precision}
