"""`visiontales reproduce`: one step list for every profile, the preflight's one-line errors, finished
runs kept and interrupted ones resumed, and the paper-size stand-ins' Hugging Face cache layout."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, tiny_overrides

from visiontales.cli import main
from visiontales.errors import VisionTalesError
from visiontales.reproduce import COUNTS, Runner, Step, plan, profiles, resolved_config


def _options(args: list[str]) -> dict[str, str]:
    options, key = {}, None
    for token in args[1:]:
        if token.startswith("--"):
            key, _, value = token.partition("=")
            options[key] = value if value else None
            key = None if value else key
        elif key is not None:
            options[key], key = token, None
    return options


def test_smoke_runs_the_paper_profiles_steps_with_other_counts_only(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the profiles name experiments/ relative to the checkout, as make runs them
    every = profiles()
    steps = {}
    for name in ("paper", "smoke"):
        profile = every[name]
        listed = plan(profile, tmp_path / "reports" / name, tmp_path / "runs" / name)
        first = next(i for i, step in enumerate(listed) if step.name == "backbones")
        places = {str(profile.vist_root): "<vist>", str(profile.flintstones_root): "<flintstones>",
                  str(tmp_path / "reports" / name): "<report>", str(tmp_path / "runs" / name): "<runs>"}

        def common(value: str | None, places: dict[str, str] = places) -> str | None:
            for place, label in places.items():
                value = value.replace(place, label) if value else value
            return re.sub(r"epoch-\d+\.ckpt", "epoch-<snapshot>.ckpt", value) if value else value  # a count too

        steps[name] = [(s.name, s.args[0], s.run, {k: common(v) for k, v in _options(s.args).items()})
                       for s in listed[first:]]
    assert [s[:3] for s in steps["smoke"]] == [s[:3] for s in steps["paper"]]
    assert len(steps["paper"]) == 1 + 9 + 2 + 8 + 2 + 16  # backbones, fits, samples, boards, stories (without and with continuity), rows
    configs = [s[3]["--config"] for s in steps["paper"] if "--config" in s[3]]
    assert configs and all(c.startswith("experiments/") and "/tiny/" not in c for c in configs)
    for (name, _, _, paper), (_, _, _, smoke) in zip(steps["paper"], steps["smoke"], strict=True):
        differing = {k for k in paper.keys() | smoke.keys() if paper.get(k) != smoke.get(k)}
        assert differing <= set(COUNTS), (name, differing)


def _fake_fit(calls: list[list[str]], config: str = "model: {lr: 1}"):
    def vt(self, name, args):
        calls.append(args)
        run = self.runs_dir / "r"
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run / "checkpoints" / "last.ckpt").write_text("")
        (run / "config.yaml").write_text(config + ("\nckpt_path: x" if "--ckpt_path" in args else ""))
    return vt


def test_reuse_keeps_finished_runs_resumes_interrupted_ones_and_retrains_changed_ones(tmp_path, monkeypatch):
    profile = profiles()["tiny"]
    wanted = {"hash": resolved_config("model: {lr: 1}")}
    monkeypatch.setattr(Runner, "config_hash", lambda self, args: wanted["hash"])
    calls: list[list[str]] = []
    monkeypatch.setattr(Runner, "vt", _fake_fit(calls))
    step = Step("fit r", ["fit", "--config", "c.yaml"], run="r")
    run = tmp_path / "runs" / "r"

    Runner(profile, tmp_path / "rep", tmp_path / "runs", reuse=True).fit(step)
    assert len(calls) == 1 and json.loads((run / "finished.json").read_text())["config"] == wanted["hash"]
    Runner(profile, tmp_path / "rep", tmp_path / "runs", reuse=True).fit(step)
    assert len(calls) == 1  # finished with the same config: kept
    Runner(profile, tmp_path / "rep", tmp_path / "runs", reuse=False).fit(step)
    assert len(calls) == 2 and "--ckpt_path" not in calls[-1]  # no --reuse: trained again

    (run / "finished.json").unlink()  # interrupted: last.ckpt but no marker
    Runner(profile, tmp_path / "rep", tmp_path / "runs", reuse=True).fit(step)
    assert calls[-1][-2:] == ["--ckpt_path", str(run / "checkpoints" / "last.ckpt")]
    assert (run / "finished.json").is_file()

    (run / "finished.json").unlink()
    wanted["hash"] = resolved_config("model: {lr: 2}")  # the config changed: no resume, a new run
    (run / "stale.txt").write_text("")
    Runner(profile, tmp_path / "rep", tmp_path / "runs", reuse=True).fit(step)
    assert "--ckpt_path" not in calls[-1] and not (run / "stale.txt").exists()


def test_forked_steps_run_like_commands_and_fail_like_them(tmp_path):
    """The tiny profile's steps are forked from one process that imported the libraries once: each
    writes what its command writes and logs its output; a failing one stops the reproduction with
    its step named, and the server goes on serving the steps after it."""
    runner = Runner(profiles()["tiny"], tmp_path / "rep", tmp_path / "runs")
    assert runner.profile.forked
    runner.vt("synth", ["data", "synth", "--dataset", "flintstones", "--out", str(tmp_path / "f"), "--episodes", "10"])
    assert len(list((tmp_path / "f").rglob("*.npy"))) > 100  # 10 episodes of 14 clips (a defect or two among them)
    with pytest.raises(VisionTalesError, match=r"step 'check' failed \(exit 2\)"):
        runner.vt("check", ["data", "check", "--dataset", "flintstones", "--root", str(tmp_path / "missing")])
    runner.vt("check again", ["data", "check", "--dataset", "flintstones", "--root", str(tmp_path / "f")])
    log = (tmp_path / "rep" / "log.txt").read_text()
    assert f"error: {tmp_path / 'missing'}: dataset folder not found" in log
    assert "# check: " in log and log.count(", exit 0") == 2
    assert set(runner.timings) == {"synth", "check", "check again"}
    server = runner.fork_server
    assert server.poll() is None  # one server for every step
    assert runner.close() == 0 and server.poll() == 0 and runner.log.closed


def test_the_finished_marker_matches_the_config_fit_would_resolve(tmp_path, flintstones_root):
    args = ["fit", *tiny_overrides("sagan_captioner.yaml", flintstones_root, tmp_path, max_epochs=1,
                                   limit_train_batches=1, limit_val_batches=1),
            "--trainer.logger.init_args.name", "r", "--trainer.logger.init_args.version", ""]
    assert main(args) == 0
    runner = Runner(profiles()["tiny"], tmp_path / "rep", tmp_path / "runs")
    saved = (tmp_path / "runs" / "r" / "config.yaml").read_text()
    assert runner.config_hash(args) == resolved_config(saved)
    assert runner.config_hash([*args, "--trainer.max_epochs", "2"]) != resolved_config(saved)


def _preflight_errors(args: list[str], tmp_path: Path, capsys) -> list[str]:
    assert main(["reproduce", *args, "--reports", str(tmp_path / "r"), "--runs", str(tmp_path / "runs")]) == 2
    assert not (tmp_path / "r").exists() and not (tmp_path / "runs").exists()  # nothing ran
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and all(line.startswith("error: ") for line in lines)
    return lines


def test_a_clip_whose_activation_does_not_match_its_weights_is_refused(tmp_path, capsys):
    from visiontales.backbones import load_clip
    from visiontales.errors import VisionTalesError

    with pytest.raises(VisionTalesError, match="use 'ViT-B-32-quickgelu@openai'"):
        load_clip("ViT-B-32@openai")
    lines = _preflight_errors(["--profile", "paper", "--clip", "ViT-B-32@openai"], tmp_path, capsys)
    assert sum("'ViT-B-32-quickgelu@openai'" in line for line in lines) == 1


def test_missing_java_stops_every_profile_before_it_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    lines = _preflight_errors(["--profile", "tiny"], tmp_path, capsys)
    assert len(lines) == 1 and "java not found on PATH" in lines[0]


def _hub_repo(cache: Path, repo: str, files: dict[str, str]) -> None:
    from visiontales.stand_ins import write_hub_repo

    source = cache.parent / "src" / repo
    for name, text in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(text)
    write_hub_repo(cache, repo, source)


def test_paper_preflight_finds_weights_as_downloaded_and_names_what_is_missing(tmp_path, monkeypatch, capsys):
    from visiontales.preflight import WEIGHT_FILES

    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("VISIONTALES_DATA", str(tmp_path / "nothing"))
    # GPT-2 downloaded under its old id: found through the alias
    _hub_repo(cache, "gpt2", {group[0]: "{}" for group in WEIGHT_FILES["gpt2"]})
    # SD 1.5 without its UNet weights
    _hub_repo(cache, "stable-diffusion-v1-5/stable-diffusion-v1-5",
              {group[0]: "{}" for group in WEIGHT_FILES["sd"] if group[0] != "unet/diffusion_pytorch_model.safetensors"})
    lines = _preflight_errors(["--profile", "paper"], tmp_path, capsys)
    assert not any("GPT-2" in line for line in lines)
    sd = [line for line in lines if "Stable Diffusion weights" in line]
    assert len(sd) == 1 and "missing unet/diffusion_pytorch_model.safetensors)" in sd[0]
    assert "`hf download stable-diffusion-v1-5/stable-diffusion-v1-5 unet/diffusion_pytorch_model.safetensors`" in sd[0]
    clip = [line for line in lines if "CLIP weights" in line]
    assert len(clip) == 1 and "timm/vit_base_patch32_clip_224.openai" in clip[0]
    assert any("VIST SIS annotations" in line for line in lines)
    assert any("CUDA" in line for line in lines) == (not __import__("torch").cuda.is_available())
    # a local directory given to reproduce is checked instead of the cache
    lines = _preflight_errors(["--profile", "paper", "--sd", str(tmp_path / "sd")], tmp_path, capsys)
    assert any(f"Stable Diffusion directory {tmp_path / 'sd'} not found (--sd)" in line for line in lines)


def test_download_suggestions_fetch_only_the_files_that_are_used(tmp_path, monkeypatch):
    from visiontales.preflight import check_clip, check_hub_weights

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    _, (line,) = check_hub_weights("sd", "stable-diffusion-v1-5/stable-diffusion-v1-5")
    command = line.split("`")[1].split()
    assert command[:3] == ["hf", "download", "stable-diffusion-v1-5/stable-diffusion-v1-5"]
    assert {f.split("/")[0] for f in command[3:]} == {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    assert not any(f.endswith(".ckpt") or "fp16" in f or "non_ema" in f for f in command)
    (line,) = check_clip("ViT-B-32-quickgelu@openai")
    assert "`hf download timm/vit_base_patch32_clip_224.openai open_clip_pytorch_model.bin`" in line


def test_stand_ins_load_by_their_hub_ids_from_a_hub_cache_layout(tmp_path):
    """The layout `bootstrap --paper-size` writes, with tiny weights: loaded offline by hub id
    through the unchanged loaders."""
    from visiontales.backbones import build_tiny_gpt2
    from visiontales.stand_ins import GPT2_VOCAB, gpt2_tokenizer_files, repo_dir, write_hub_repo

    files = tmp_path / "files"
    build_tiny_gpt2(files)
    cache = tmp_path / "hub"
    snapshot = write_hub_repo(cache, "openai-community/gpt2", files)
    assert (repo_dir(cache, "openai-community/gpt2") / "refs" / "main").read_text() == snapshot.name
    assert all(p.is_symlink() and p.resolve().parent.name == "blobs" for p in snapshot.iterdir())
    code = ("from visiontales.backbones import load_gpt2; m, t = load_gpt2('openai-community/gpt2'); "
            "print(m.config.n_layer, len(t))")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    from transformers import AutoTokenizer

    build_tiny_gpt2(tmp_path / "reference")
    assert out.split() == ["2", str(len(AutoTokenizer.from_pretrained(tmp_path / "reference")))]

    gpt2_tokenizer_files(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))  # beside it in the repo
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    assert len(vocab) == GPT2_VOCAB and vocab["<|endoftext|>"] == GPT2_VOCAB - 1
    assert sorted(vocab.values()) == list(range(GPT2_VOCAB))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    ids = tokenizer("Fred and Barney are talking in the quarry.")["input_ids"]
    assert len(tokenizer) == GPT2_VOCAB and 0 < len(ids) < 20
    assert tokenizer.decode(ids) == "Fred and Barney are talking in the quarry."


def test_backbones_reports_each_role(tmp_path):
    out = tmp_path / "backbones.json"
    assert main(["backbones", "--gpt2", "tiny", "--clip", "tiny", "--sd", "tiny", "--json", str(out)]) == 0
    described = json.loads(out.read_text())
    assert list(described) == ["gpt2", "clip", "sd_unet", "sd_vae", "sd_text_encoder"]
    assert described["sd_unet"]["class"] == "UNet2DConditionModel" and described["gpt2"]["parameters"] > 10_000


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA GPU is visible")
def test_a_device_that_is_not_there_is_one_line(tmp_path, capsys):
    from visiontales.devices import Placement

    assert Placement.from_options("auto", "32-true").device.type == "cpu"
    assert main(["tell", "--checkpoint", "x.ckpt", "a", "b", "c", "--device", "cuda:1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --device cuda:1: no CUDA GPU is visible here (use --device cpu or auto)"
    assert main(["tell", "--checkpoint", "x.ckpt", "a", "b", "c", "--device", "tpu"]) == 2
    assert "--device 'tpu': expected auto" in capsys.readouterr().err
