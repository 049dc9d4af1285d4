"""Every model family under DDP: a few training steps with two CPU processes (gloo), and the
validation metrics of that run equal those of one process validating the same weights on the
same data (each evaluation item on one rank, none repeated; per-item seeds)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import tiny_overrides
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from visiontales.cli import main

# family: (tiny config, dataset fixture, options that keep it small, metrics compared)
FAMILIES = {
    "storyteller": ("clip_storyteller_prefix.yaml", "vist_root", [], ("val/loss", "val/bleu1", "val/cider")),
    "captioner": ("sagan_captioner.yaml", "flintstones_root", [], ("val/loss", "val/char_f1")),
    "lora": ("sagan_lora.yaml", "flintstones_root", ["--model.init_args.val_samples", "0"], ("val/loss",)),
    "gan": ("gan.yaml", "flintstones_root", ["--model.init_args.val_samples", "0"], ("val/loss", "val/loss_img")),
}


def _last_scalars(run) -> dict[str, float]:
    events = EventAccumulator(str(run))
    events.Reload()
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_ddp_fit_validates_like_one_process(family, request, tmp_path):
    config, data, extra, metrics = FAMILIES[family]
    root = request.getfixturevalue(data)
    name = config.removesuffix(".yaml")
    args = tiny_overrides(config, root, tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1.0,
                          check_val_every_n_epoch=1) + extra
    ddp = subprocess.run([sys.executable, "-m", "visiontales.cli", "fit", *args, "--trainer.strategy", "ddp",
                          "--trainer.devices", "2", "--trainer.logger.init_args.version", "ddp"],
                         cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
                         timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in ddp.stderr + ddp.stdout  # the second process really ran
    run = tmp_path / "runs" / f"tiny_{name}"
    distributed = _last_scalars(run / "ddp")
    assert (run / "ddp" / "checkpoints" / "last.ckpt").is_file()

    assert main(["validate", *args, "--trainer.logger.init_args.version", "single",
                 "--ckpt_path", str(run / "ddp" / "checkpoints" / "last.ckpt")]) == 0
    single = _last_scalars(run / "single")
    for metric in metrics:
        assert distributed[metric] == pytest.approx(single[metric], rel=1e-4, abs=1e-5), metric
