"""Shared fixtures: a synthetic VIST written once, tiny backbones built once, all under a temp dir.

Nothing here touches the network: the tiny backbones are built from configs and loaded back
through backbones.py exactly like hub weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
VIST_ALBUMS = 60  # 48 train / 6 val / 6 test albums: 96 / 12 / 12 stories
FLINTSTONES_EPISODES = 20  # 16 / 2 / 2 episodes of 14 clips
# read by huggingface_hub at import time: set before anything imports it
os.environ["HF_HUB_OFFLINE"] = "1"
# `make test` runs one pytest-xdist worker per core: one thread each (and in the processes they
# start), or the workers' thread pools fight over the cores
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def visiontales_home(tmp_path_factory) -> Path:
    """Tiny backbones and feature caches go to a per-session temp dir, never ~/.cache."""
    home = tmp_path_factory.mktemp("visiontales_home")
    os.environ["VISIONTALES_HOME"] = str(home)
    return home


@pytest.fixture(autouse=True)
def _work_in_tmp_path(tmp_path, monkeypatch) -> None:
    """Every test runs in its own folder: nothing a run writes by default (runs/, checkpoints/)
    lands in the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def vist_root(tmp_path_factory) -> Path:
    from data_modules.synthetic import write_synthetic_vist

    root = tmp_path_factory.mktemp("vist")
    write_synthetic_vist(root, seed=0, albums=VIST_ALBUMS)
    return root


@pytest.fixture(scope="session")
def flintstones_root(tmp_path_factory) -> Path:
    """20 episodes of 14 clips (16 / 2 / 2 by split), with both optional pickles written."""
    from data_modules.synthetic import write_synthetic_flintstones

    root = tmp_path_factory.mktemp("flintstones")
    write_synthetic_flintstones(root, seed=0, episodes=FLINTSTONES_EPISODES)
    return root


@pytest.fixture(scope="session")
def tiny_gpt2():
    from visiontales.backbones import load_gpt2

    return load_gpt2("tiny")


def tiny_overrides(config: str, root: Path, out: Path, **trainer) -> list[str]:
    """CLI arguments that run a tiny experiment config on `root`, writing under `out`, on the random
    `tiny` backbones (the configs name `tiny-domain`, which take minutes to train once; zero
    terminal SNR, which needs the v objective, is turned off for the `tiny` SD's epsilon)."""
    import yaml

    path = EXPERIMENTS / "tiny" / config
    init_args = yaml.safe_load(path.read_text())["model"].get("init_args", {})
    args = ["--config", str(path), "--data.init_args.root", str(root),
            "--trainer.logger.init_args.save_dir", str(out / "runs"), "--trainer.enable_progress_bar", "false"]
    args += [a for key, spec in init_args.items() if spec == "tiny-domain" for a in (f"--model.init_args.{key}", "tiny")]
    if init_args.get("zero_terminal_snr") and init_args.get("sd") == "tiny-domain":
        args += ["--model.init_args.zero_terminal_snr", "false"]  # the `tiny` SD has SD 1.5's epsilon objective
    for key, value in trainer.items():
        args += [f"--trainer.{key}", str(value)]
    return args


def fit_twice_and_resumed(make_model, flintstones_root: Path, out: Path, batches: int = 3, num_workers: int = 0):
    """A model's learned state after 2 epochs straight, and after 1 epoch and then `fit
    --ckpt_path last.ckpt` to 2 epochs (each run seeded alike, as `seed_everything` in a config)."""
    import lightning as L

    from data_modules.flintstones import FlintstonesSVDataModule

    def fit(folder: Path, epochs: int, ckpt_path: Path | None = None) -> dict:
        L.seed_everything(0)
        model = make_model()
        trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, limit_train_batches=batches, limit_val_batches=1,
                            logger=False, enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=folder)
        datamodule = FlintstonesSVDataModule(str(flintstones_root), resolution=32, batch_size=2, eval_batch_size=2,
                                             num_workers=num_workers)
        trainer.fit(model, datamodule, ckpt_path=ckpt_path)
        assert trainer.current_epoch == epochs
        learned = model.learned_keys()
        return {k: v.detach().clone() for k, v in model.state_dict().items() if k in learned}

    straight = fit(out / "straight", 2)
    fit(out / "split", 1)
    return straight, fit(out / "split", 2, out / "split" / "checkpoints" / "last.ckpt")
