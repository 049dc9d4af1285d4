"""Every model family under DDP: a few training steps with two CPU processes (gloo), and the
validation metrics of that run equal those of one process validating the same weights on the
same data (each evaluation item on one rank, none repeated; per-item seeds).

The storyteller runs under `ddp`, whose second rank Lightning starts anew from the command line
(as on a GPU machine; the torchrun test starts both itself); the other families under `ddp_fork`,
the same DDP from a forked second rank: what differs by family is how its metrics and samples are
split and gathered, not how ranks start, and a fork saves a second import of the libraries (~13 s
on 2 cores)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import NamedTuple

import pytest
from conftest import tiny_overrides
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from visiontales.cli import main


class Family(NamedTuple):
    config: str  # experiments/tiny/<config>
    data: str  # dataset fixture
    extra: list[str]  # options that keep it small
    metrics: tuple[str, ...]  # compared with one process
    strategy: str


FAMILIES = {
    "storyteller": Family("clip_storyteller_prefix.yaml", "vist_root", [], ("val/loss", "val/bleu1", "val/cider"),
                          "ddp"),
    "captioner": Family("sagan_captioner.yaml", "flintstones_root", [], ("val/loss", "val/char_f1"), "ddp_fork"),
    "lora": Family("sagan_lora.yaml", "flintstones_root", ["--model.init_args.val_samples", "0"], ("val/loss",),
                   "ddp_fork"),
    "gan": Family("gan.yaml", "flintstones_root", ["--model.init_args.val_samples", "0"],
                  ("val/loss", "val/loss_img"), "ddp_fork"),
}


def _last_scalars(run) -> dict[str, float]:
    events = EventAccumulator(str(run))
    events.Reload()
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}


def _fit_args(family: str, request, tmp_path) -> tuple[list[str], str]:
    f = FAMILIES[family]
    args = tiny_overrides(f.config, request.getfixturevalue(f.data), tmp_path, max_epochs=1, limit_train_batches=2,
                          limit_val_batches=1.0, check_val_every_n_epoch=1) + f.extra
    return args, f"tiny_{f.config.removesuffix('.yaml')}"


def _validates_like_one_process(family: str, args: list[str], run) -> None:
    """The metrics the distributed fit logged at its validation equal one process validating its
    last checkpoint."""
    distributed = _last_scalars(run / "ddp")
    assert main(["validate", *args, "--trainer.logger.init_args.version", "single",
                 "--ckpt_path", str(run / "ddp" / "checkpoints" / "last.ckpt")]) == 0
    single = _last_scalars(run / "single")
    for metric in FAMILIES[family].metrics:
        assert distributed[metric] == pytest.approx(single[metric], rel=1e-4, abs=1e-5), metric


@pytest.mark.parametrize("family", list(FAMILIES))
def test_ddp_fit_validates_like_one_process(family, request, tmp_path):
    args, name = _fit_args(family, request, tmp_path)
    ddp = subprocess.run([sys.executable, "-m", "visiontales.cli", "fit", *args, "--trainer.strategy", FAMILIES[family].strategy,
                          "--trainer.devices", "2", "--trainer.logger.init_args.version", "ddp"],
                         cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
                         timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in ddp.stderr + ddp.stdout  # the second process really ran
    assert (tmp_path / "runs" / name / "ddp" / "checkpoints" / "last.ckpt").is_file()
    _validates_like_one_process(family, args, tmp_path / "runs" / name)


def test_two_nodes_launched_by_torchrun_validate_like_one_process(request, tmp_path):
    """`visiontales fit` as 2 nodes x 1 process on localhost, each node started by torchrun as a
    cluster would start it (static rendezvous at node 0's address)."""
    args, name = _fit_args("storyteller", request, tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                               "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port),
                               "-m", "visiontales.cli", "fit", *args, "--trainer.num_nodes", "2",
                               "--trainer.devices", "1", "--trainer.strategy", "ddp",
                               "--trainer.logger.init_args.version", "ddp"],
                              cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "GLOBAL_RANK: 1" in "".join(outputs) and "MEMBER: 2/2" in "".join(outputs)
    _validates_like_one_process("storyteller", args, tmp_path / "runs" / name)
