"""The base of every model in VisionTales, the registry of model kinds, and checkpoint loading.

A model registers its kind once, where its class is defined:

    class MyVisualizer(Visualizer, kind="my_visualizer"): ...

and every command finds it through the checkpoint it wrote: `load_model(path, Visualizer)` reads
the kind recorded in the checkpoint, looks it up here, and checks that it plays the asked role.
"""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from torch import nn

from visiontales.errors import VisionTalesError

CLASS_KEY = "visiontales_class"  # the class that wrote a checkpoint (module.QualName)
KIND_KEY = "visiontales_kind"  # its registered kind
MODEL_KINDS: dict[str, type[VisionTalesModule]] = {}

# frozen backbones are in eval mode on purpose (see VisionTalesModule.train)
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


def frozen_parts(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """(name, module) of the largest submodules whose parameters are all frozen."""
    parts = []
    for name, child in module.named_children():
        path = f"{prefix}.{name}" if prefix else name
        flags = [p.requires_grad for p in child.parameters()]
        if flags and not any(flags):
            parts.append((path, child))
        elif any(flags):
            parts += frozen_parts(child, path)
    return parts


class VisionTalesModule(L.LightningModule):
    """What every model here shares.

    - **Kinds.** `kind="..."` in the class statement registers the class in `MODEL_KINDS`; its
      checkpoints record the kind, and `load_model` finds the class by it.
    - **Checkpoints hold learned state only.** A frozen CLIP, GPT-2 or Stable Diffusion base would
      fill every checkpoint (350 MB, 500 MB, 3.4 GB); they are rebuilt from their spec on load and
      put back before strict loading, so a missing trainable key still fails loudly. Learned state
      is the trainable parameters and every buffer outside the frozen parts (BatchNorm statistics,
      spectral norm's power-iteration vectors, which sit on a parametrization below the weight).
    - **Frozen parts stay in eval mode** (no dropout, no statistics updates) whatever calls
      `train()`, and the trainable parts are put in train mode when fitting starts (backbones
      come from `from_pretrained` in eval mode).
    - **Checkpoint files:** `checkpoints/last.ckpt`, the state after the last finished epoch, and
      `checkpoints/best.ckpt` by `monitor`; both carry the RNG states, so a resumed run draws
      what a straight run would have drawn.
    - **Precisions** outside `supported_precisions` are refused with one line at setup (the
      `*-true` half precisions would cast trainable adapters and heads to half precision too).

    Subclasses call `super().setup(stage)` first when they override `setup`.
    """

    kind: ClassVar[str] = ""
    monitor: ClassVar[tuple[str, str]] = ("val/loss", "min")  # (metric, "min" | "max") for best.ckpt
    supported_precisions: ClassVar[tuple[str, ...]] = ("32-true", "bf16-mixed", "16-mixed")
    compile_targets: ClassVar[tuple[str, ...]] = ()  # submodules visiontales.callbacks.Compile compiles

    def __init_subclass__(cls, kind: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if kind is None:
            return
        taken = MODEL_KINDS.get(kind)
        if taken is not None and (taken.__module__, taken.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(f"model kind '{kind}' is already registered by {taken.__module__}.{taken.__qualname__}")
        cls.kind = kind
        MODEL_KINDS[kind] = cls

    # ------------------------------------------------------------------------ train / eval mode

    def train(self, mode: bool = True) -> VisionTalesModule:
        super().train(mode)
        if mode:
            for _, part in frozen_parts(self):
                part.eval()
        return self

    def on_fit_start(self) -> None:
        self.train()

    # --------------------------------------------------------------------------------- setup

    def setup(self, stage: str) -> None:
        precision = str(self.trainer.precision)
        if stage == "fit" and precision not in self.supported_precisions:
            raise VisionTalesError(f"precision '{precision}' is not supported by {type(self).__name__}: use one of "
                                   f"{', '.join(self.supported_precisions)} (--trainer.precision)")

    # ---------------------------------------------------------------------------- checkpoints

    def learned_keys(self) -> set[str]:
        """State-dict keys of the trainable parameters and of the buffers outside frozen parts."""
        frozen = tuple(f"{name}." for name, _ in frozen_parts(self))
        keys = {name for name, p in self.named_parameters(remove_duplicate=False) if p.requires_grad}
        return keys | {name for name, _ in self.named_buffers(remove_duplicate=False) if not name.startswith(frozen)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self.learned_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint[CLASS_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint[KIND_KEY] = self.kind

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {**self.state_dict(), **checkpoint["state_dict"]}

    # -------------------------------------------------------------------------------- export

    def export(self, directory: Path) -> list[Path]:
        """Write the model for use outside this project's checkpoints (`visiontales export`), and
        return the files written. Here: the learned state as `model.safetensors` (the frozen bases
        are named by their specs in `config.json`); kinds with a standard format override this."""
        from safetensors.torch import save_file

        state = self.state_dict()
        learned = {k: state[k].detach().cpu().clone().contiguous() for k in sorted(self.learned_keys()) if k in state}
        save_file(learned, directory / "model.safetensors")
        config = {"class_path": f"{type(self).__module__}.{type(self).__qualname__}", "kind": self.kind,
                  "init_args": {k: v for k, v in self.hparams.items() if not k.startswith("_")}}
        (directory / "config.json").write_text(json.dumps(config, indent=1, default=str) + "\n")
        return [directory / "model.safetensors", directory / "config.json"]

    def export_usage(self) -> str:
        """How to load what `export` wrote (Markdown, for the model card)."""
        name = type(self).__name__
        return f"""The learned weights are plain safetensors (`safetensors.torch.load_file`); with VisionTales
installed, the model is rebuilt from its config (its frozen bases from their specs):

```python
import json
from safetensors.torch import load_file
from {type(self).__module__} import {name}

config = json.load(open("config.json"))
model = {name}(**config["init_args"]).eval()
model.load_state_dict(load_file("model.safetensors"), strict=False)  # the learned state only
```"""

    def configure_callbacks(self) -> list[L.Callback]:
        """best.ckpt by `monitor`, last.ckpt after every epoch (a separate callback: Lightning 2.6
        writes a monitored callback's `last.ckpt` only when it saves a new best), RNG states, the
        report of items skipped as unreadable."""
        from lightning.pytorch.callbacks import ModelCheckpoint

        from visiontales.callbacks import RNGStates, SkippedItems

        metric, mode = self.monitor
        return [ModelCheckpoint(monitor=metric, mode=mode, filename="best", enable_version_counter=False),
                ModelCheckpoint(filename="last", save_on_train_epoch_end=True, enable_version_counter=False),
                RNGStates(), SkippedItems()]


# ------------------------------------------------------------------------------------ loading


def _first_line(error: Exception) -> str:
    """`Type: first line of the message`, for one-line errors."""
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by `visiontales fit`, or one `error:` line naming the file: missing,
    truncated, not a checkpoint, not one of ours, or carrying pickled code (read with
    `weights_only=True`: tensors and plain values only, so unpickling it runs no code)."""
    path = Path(path)
    if not path.is_file():
        raise VisionTalesError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever a damaged or foreign file raises, it is this file's fault
        raise VisionTalesError(f"{path}: not a readable checkpoint ({_first_line(e)})") from e
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise VisionTalesError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    if CLASS_KEY not in checkpoint:
        raise VisionTalesError(f"{path}: not written by `visiontales fit` (no '{CLASS_KEY}')")
    return checkpoint


def model_class(checkpoint: dict[str, Any], path: str | Path) -> type[VisionTalesModule]:
    """The registered class of the kind a checkpoint records; if that kind is not registered yet,
    the module of the class it names is imported (as a config's `class_path` would be)."""
    class_path, kind = str(checkpoint[CLASS_KEY]), checkpoint.get(KIND_KEY)
    if kind not in MODEL_KINDS:
        module, _, name = class_path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except Exception as e:  # noqa: BLE001 - a class that does not import here, for whatever reason
            raise VisionTalesError(f"{path}: written by {class_path}, which does not import here "
                                   f"({_first_line(e)})") from e
        kind = getattr(cls, "kind", None) or kind
    if kind not in MODEL_KINDS:
        raise VisionTalesError(f"{path}: written by {class_path}, which is not a registered model kind")
    return MODEL_KINDS[kind]


def load_model(path: str | Path, role: type[VisionTalesModule] = VisionTalesModule,
               option: str = "--checkpoint") -> VisionTalesModule:
    """The model a checkpoint holds, on the CPU in eval mode, if it is a `role` (a base class such
    as Visualizer); otherwise one `error:` line naming the file and the option it was given to."""
    return model_from_checkpoint(read_checkpoint(path), path, role, option)


def model_from_checkpoint(checkpoint: dict[str, Any], path: str | Path,
                          role: type[VisionTalesModule] = VisionTalesModule,
                          option: str = "--checkpoint") -> VisionTalesModule:
    """`load_model` for a checkpoint already read by `read_checkpoint`."""
    from lightning.pytorch.core.saving import _load_state

    cls = model_class(checkpoint, path)
    if not issubclass(cls, role):
        raise VisionTalesError(f"{path}: a {cls.__name__} checkpoint ({cls.kind}), but {option} takes a {role.__name__}")
    # our hyper-parameters are plain values: build the class directly rather than through
    # LightningCLI's recorded instantiator, which would bury a one-line error in its own
    hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if not k.startswith("_")}
    try:
        model = _load_state(cls, {**checkpoint, "hyper_parameters": hparams})
    except (RuntimeError, TypeError, KeyError, ValueError) as e:
        raise VisionTalesError(f"{path}: does not load into {cls.__name__} ({_first_line(e)})") from e
    return model.eval()
