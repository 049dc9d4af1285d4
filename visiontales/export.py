"""`visiontales export`: a trained model in the formats other tools load, with a model card.

Each model kind writes its own files (`VisionTalesModule.export`): the captioner and the
storyteller a transformers GPT-2 directory (peft adapters for a LoRA captioner) and, for the
storyteller's prefix, the mapper as safetensors with its config; the LoRA visualizer diffusers'
LoRA file; the other kinds their weights as safetensors with their hyper-parameters. Beside them,
`README.md`: what the model is, its base weights, the training config, the data, the metrics
`evaluate` measured (given with `--metrics`, else the checkpoint's monitored validation score), and
how to load it.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import yaml

from visiontales.errors import VisionTalesError, read_json

BACKBONE_KEYS = {"gpt2": "GPT-2", "clip": "CLIP", "sd": "Stable Diffusion", "backbone": "classifier backbone"}


def run_config(checkpoint_path: Path) -> str | None:
    """The LightningCLI config saved beside the run (runs/<name>/<version>/config.yaml), if any."""
    for folder in list(checkpoint_path.resolve().parents)[:2]:
        if (folder / "config.yaml").is_file():
            return (folder / "config.yaml").read_text()
    return None


def monitored_score(checkpoint: dict[str, Any]) -> tuple[str, float] | None:
    """(monitor, best value) from the checkpoint's ModelCheckpoint state."""
    for key, state in checkpoint.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint") and state.get("monitor") and state.get("best_model_score") is not None:
            return state["monitor"], float(state["best_model_score"])
    return None


def read_metrics(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    metrics = read_json(path, "--metrics takes evaluate's metrics.json")
    if not isinstance(metrics, dict) or not isinstance(metrics.get("metrics"), dict):
        raise VisionTalesError(f"{path}: no 'metrics' object (--metrics takes evaluate's metrics.json)")
    return metrics


def model_card(model, checkpoint: dict[str, Any], checkpoint_path: Path, files: list[Path],
               metrics: dict[str, Any] | None) -> str:
    """README.md of an export."""
    cls = type(model)
    summary = inspect.getdoc(cls).split("\n\n")[0]
    module_doc = (inspect.getdoc(inspect.getmodule(cls)) or "").split("\n\n")[0]
    hparams = {k: v for k, v in model.hparams.items() if not k.startswith("_")}
    bases = [f"- {BACKBONE_KEYS[k]}: `{v}`" for k, v in hparams.items() if k in BACKBONE_KEYS and v]
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    lines = [f"# {cls.__name__} ({cls.kind})", "", summary, "", module_doc, "",
             "Exported by `visiontales export` from `" + str(checkpoint_path) + "` "
             f"(epoch {checkpoint.get('epoch', '?')}, step {checkpoint.get('global_step', '?')}).", "",
             "## Files", "", *[f"- `{f.name}`" for f in files], "",
             "## Base weights", "", *(bases or ["- none (trained from scratch)"]), "",
             "## Data", ""]
    if data:
        lines += [f"- `{k}`: `{v}`" for k, v in data.items() if not str(k).startswith("_")]
    else:
        lines.append("- not recorded in the checkpoint")
    lines += ["", "## Metrics", ""]
    if metrics:
        lines.append(f"`visiontales evaluate` on split `{metrics.get('split')}` of `{metrics.get('data_root')}` "
                     f"({metrics.get('count')} items):")
        lines += ["", "| metric | value |", "|---|---|", *[f"| {k} | {v:.4f} |" if isinstance(v, float) else
                                                       f"| {k} | {v} |" for k, v in metrics["metrics"].items()]]
    else:
        score = monitored_score(checkpoint)
        lines.append(f"Best monitored validation score during training: `{score[0]}` = {score[1]:.4f}. "
                     "(Run `visiontales evaluate` and export with `--metrics metrics.json` for test metrics.)"
                     if score else "None recorded: run `visiontales evaluate` and export with `--metrics metrics.json`.")
    config = run_config(checkpoint_path)
    lines += ["", "## Training config", "", "```yaml",
              (config or yaml.safe_dump({"model": {"class_path": f"{cls.__module__}.{cls.__name__}",
                                                   "init_args": hparams}}, sort_keys=False)).rstrip(), "```", "",
              "## How to load", "", model.export_usage().strip(), ""]
    return "\n".join(lines)


def export(checkpoint_path: Path, out: Path, metrics_path: Path | None = None) -> list[Path]:
    """Write the export of a checkpoint into `out` (created); the files written, the card last."""
    from visiontales.models.base import model_from_checkpoint, read_checkpoint

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise VisionTalesError(f"{out}: exists and is not an empty folder (export writes a fresh one: files left "
                               f"from another export would load with this one)")
    metrics = read_metrics(metrics_path)
    checkpoint = read_checkpoint(checkpoint_path)
    model = model_from_checkpoint(checkpoint, checkpoint_path)
    out.mkdir(parents=True, exist_ok=True)
    files = [f for f in model.export(out) if f.name != "README.md"]  # peft writes a card of its own
    card = out / "README.md"
    card.write_text(model_card(model, checkpoint, Path(checkpoint_path), files, metrics))
    return [*files, card]
