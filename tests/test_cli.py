import importlib
import json
import os
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import EXPERIMENTS, REPO, tiny_overrides
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from visiontales.cli import main

ALL_CONFIGS = sorted(EXPERIMENTS.rglob("*.yaml"))


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda p: str(p.relative_to(EXPERIMENTS)))
def test_every_shipped_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)

    def resolve(class_path):
        module, name = class_path.rsplit(".", 1)
        return getattr(importlib.import_module(module), name)

    assert issubclass(resolve(printed["model"]["class_path"]), L.LightningModule)
    assert issubclass(resolve(printed["data"]["class_path"]), L.LightningDataModule)


def test_paper_config_holds_the_papers_settings():
    config = yaml.safe_load((EXPERIMENTS / "clip_storyteller.yaml").read_text())
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    assert (model["gpt2"], model["clip"], model["conditioning"]) == ("openai-community/gpt2", "ViT-B-32-quickgelu@openai", "prompt")
    assert model["lr"] == 5e-5 and data["batch_size"] == 1 and config["trainer"]["max_epochs"] == 7


def test_data_synth_then_check_json(tmp_path, capsys):
    assert main(["data", "synth", "--dataset", "vist", "--out", str(tmp_path / "v"), "--albums", "10"]) == 0
    capsys.readouterr()
    assert main(["data", "check", "--dataset", "vist", "--root", str(tmp_path / "v"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)  # exactly one JSON object, nothing else
    assert set(report) == {"dataset", "splits"} and set(report["splits"]) == {"train", "val", "test"}
    assert report["splits"]["train"] == {"stories": 16, "sequences": 13, "dropped": {
        "missing_image": 1, "unreadable_image": 1, "empty_caption": 1},
        "defects": {"missing_image": 1, "unreadable_image": 1, "empty_caption": 1}}


def test_data_check_of_nothing_usable_exits_2_with_one_line(tmp_path, capsys):
    (tmp_path / "annotations" / "sis").mkdir(parents=True)
    (tmp_path / "annotations" / "sis" / "val.story-in-sequence.json").write_text("{not json")
    assert main(["data", "check", "--dataset", "vist", "--root", str(tmp_path), "--json"]) == 2
    assert "val.story-in-sequence.json: not valid JSON" in _error_line(capsys)
    assert main(["data", "check", "--dataset", "vist", "--root", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: dataset folder not found" in _error_line(capsys)


def test_config_key_typo_exits_2_naming_the_key(tmp_path, capsys):
    text = (EXPERIMENTS / "tiny" / "clip_storyteller.yaml").read_text().replace("    lr:", "    lrr:")
    (tmp_path / "typo.yaml").write_text(text)
    assert main(["fit", "--config", str(tmp_path / "typo.yaml")]) == 2
    line = _error_line(capsys)
    assert "Option 'lrr' is not accepted" in line and "typo.yaml" in line


def test_missing_checkpoint_exits_2_naming_the_path(tmp_path, capsys):
    assert main(["test", "--config", str(EXPERIMENTS / "tiny" / "clip_storyteller.yaml"),
                 "--ckpt_path", str(tmp_path / "nope.ckpt")]) == 2
    assert "nope.ckpt: checkpoint not found" in _error_line(capsys)
    image = next(Path(REPO).rglob("*.py"))  # any existing file: the checkpoint is checked first
    assert main(["tell", "--checkpoint", str(tmp_path / "nope.ckpt"), str(image), str(image), str(image)]) == 2
    assert "nope.ckpt: checkpoint not found" in _error_line(capsys)
    assert main(["export-lora", "--checkpoint", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path)]) == 2
    assert "nope.ckpt: checkpoint not found" in _error_line(capsys)


def test_fit_logs_checkpoints_then_tell_and_predict(vist_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = tiny_overrides("clip_storyteller_prefix.yaml", vist_root, tmp_path, max_epochs=2)
    assert main(["fit", *args, "--trainer.logger.init_args.version", "v"]) == 0
    run = tmp_path / "runs" / "tiny_clip_storyteller_prefix" / "v"
    assert (run / "config.yaml").is_file()
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    events = EventAccumulator(str(run))
    events.Reload()
    # last.ckpt: the state after the last step; best.ckpt: the epoch of the highest val/cider
    last, best = (torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=False)
                  for name in ("last.ckpt", "best.ckpt"))
    cider = [e.value for e in events.Scalars("val/cider")]
    steps = max(e.step for e in events.Scalars("train/loss_epoch")) + 1  # logged at the last step's index
    assert last["epoch"] == 1 and last["global_step"] == steps
    assert best["epoch"] == cider.index(max(cider))
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss_step", "train/loss_epoch", "val/loss", "val/bleu1", "val/bleu4", "val/meteor",
            "val/rougeL", "val/cider"} <= scalars
    losses = [e.value for e in events.Scalars("train/loss_epoch")]
    assert losses[-1] < losses[0]
    assert "val/samples/text_summary" in events.Tags()["tensors"]

    images = sorted((vist_root / "images" / "test").glob("*.jpg"))[:3]
    capsys.readouterr()
    assert main(["tell", "--checkpoint", str(run / "checkpoints" / "last.ckpt"), *map(str, images)]) == 0
    story = capsys.readouterr().out.strip()
    assert len(story.split()) >= 5
    # a backbone that cannot be built is one line naming what to do, not a wrapped config error
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["clip"] = "tiny-domain"
    torch.save(checkpoint, tmp_path / "domain.ckpt")
    home = os.environ["VISIONTALES_HOME"]
    monkeypatch.setenv("VISIONTALES_HOME", str(tmp_path / "empty-home"))
    assert main(["tell", "--checkpoint", str(tmp_path / "domain.ckpt"), *map(str, images)]) == 2
    assert "tiny-domain clip backbone is not built" in capsys.readouterr().err
    monkeypatch.setenv("VISIONTALES_HOME", home)

    assert main(["predict", *args, "--trainer.logger.init_args.version", "p",
                 "--ckpt_path", str(run / "checkpoints" / "last.ckpt")]) == 0
    predictions = json.loads((tmp_path / "runs" / "tiny_clip_storyteller_prefix" / "p" / "predictions.json").read_text())
    distinct = {tuple(p["photo_ids"]) for p in predictions}
    assert len(predictions) == len(distinct) == 12 - sum(len(p["references"]) - 1 for p in predictions)
    assert all(p["story"] and p["references"] for p in predictions)


def test_bf16_mixed_precision_trains(vist_root, tmp_path):
    args = tiny_overrides("clip_storyteller_prefix.yaml", vist_root, tmp_path, max_epochs=3, precision="bf16-mixed",
                          limit_val_batches=0)
    assert main(["fit", *args, "--trainer.logger.init_args.version", "bf16"]) == 0
    events = EventAccumulator(str(tmp_path / "runs" / "tiny_clip_storyteller_prefix" / "bf16"))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss_epoch")]
    assert len(losses) == 3 and all(loss == loss for loss in losses)  # finite, not NaN
    assert losses[-1] < losses[0]


def test_help_texts_list_commands_and_model_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    commands = ("fit", "validate", "test", "predict", "reproduce", "bootstrap", "evaluate", "story", "data", "tell",
                "export (export-lora)")
    assert all(f"\n    {command} " in usage or f"\n    {command}\n" in usage for command in commands), usage
    with pytest.raises(SystemExit):
        main(["fit", "--model.help", "visiontales.models.storyteller.CLIPStoryteller"])
    options = capsys.readouterr().out
    assert "--model.conditioning {prompt,prefix}" in options and "ClipCap-style" in options
    with pytest.raises(SystemExit):
        main(["data", "--help"])
    assert "synth" in capsys.readouterr().out


def test_flintstones_synth_then_check_json(tmp_path, capsys):
    assert main(["data", "synth", "--dataset", "flintstones", "--out", str(tmp_path / "f"), "--episodes", "10"]) == 0
    capsys.readouterr()
    assert main(["data", "check", "--dataset", "flintstones", "--root", str(tmp_path / "f"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dataset"] == "flintstones" and set(report["splits"]) == {"train", "val", "test"}
    assert set(report["splits"]["train"]) == {"clips", "stories", "dropped", "defects"}
    assert report["splits"]["train"]["dropped"] == {"missing_frames": 5, "bad_frames": 5, "empty_caption": 5,
                                                    "no_followers": 8 * 4 + 1}


@pytest.mark.parametrize(("dataset", "option", "wanted"), [
    ("vist", "--albums", "--albums must be at least 10 (one album per split at least), got 4"),
    ("flintstones", "--episodes", "--episodes must be at least 10 (one episode per split at least), got 4")])
def test_synth_too_small_is_one_error_line_and_writes_nothing(dataset, option, wanted, tmp_path, capsys):
    assert main(["data", "synth", "--dataset", dataset, "--out", str(tmp_path / "d"), option, "4"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {wanted}"]
    assert not (tmp_path / "d").exists()


def test_captioner_fit_logs_its_metrics_then_predicts(flintstones_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = tiny_overrides("sagan_captioner.yaml", flintstones_root, tmp_path, max_epochs=2,
                          check_val_every_n_epoch=1)
    assert main(["fit", *args, "--trainer.logger.init_args.version", "v"]) == 0
    run = tmp_path / "runs" / "tiny_sagan_captioner" / "v"
    events = EventAccumulator(str(run))
    events.Reload()
    assert {"train/loss_epoch", "val/loss", "val/bleu4", "val/meteor", "val/rougeL", "val/cider", "val/char_f1",
            "val/ppl"} <= set(events.Tags()["scalars"])
    ppl = [e.value for e in events.Scalars("val/ppl")]
    assert ppl[-1] < ppl[0] and 1.0 < ppl[-1]
    assert "val/samples/text_summary" in events.Tags()["tensors"]
    assert main(["predict", *args, "--trainer.logger.init_args.version", "p",
                 "--ckpt_path", str(run / "checkpoints" / "last.ckpt")]) == 0
    predictions = json.loads((tmp_path / "runs" / "tiny_sagan_captioner" / "p" / "predictions.json").read_text())
    assert len(predictions) == 20  # the test split's stories
    assert all(set(p) == {"story_id", "prefix", "generated", "reference"} and p["generated"] for p in predictions)


def test_a_missing_data_folder_stops_fit_before_any_model_is_built(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    monkeypatch.setenv("VISIONTALES_HOME", str(home))
    config = str(REPO / "experiments" / "tiny" / "sagan_lora.yaml")
    assert main(["fit", "--config", config, "--data.init_args.root", str(tmp_path / "nonexistent")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'nonexistent'}: dataset folder not found (--data.init_args.root)"]
    assert not home.exists()  # no backbone looked for, none built


def test_serve_without_a_model_or_without_gradio_is_one_error_line(capsys, monkeypatch):
    assert main(["serve"]) == 2
    assert "serve needs a model" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "gradio", None)  # as if the serve extra were not installed
    assert main(["serve", "--captioner", "c.ckpt"]) == 2
    assert "pip install -e '.[serve]'" in capsys.readouterr().err


def test_web_app_answers_bad_input_with_an_error_line(tmp_path):
    from visiontales.models.captioner import SAGANetsCaptioner
    from visiontales.models.lora_diffusion import LoRADiffusionVisualizer
    from visiontales.serve import StoryApp

    nothing = StoryApp()
    assert nothing.tell([], "greedy")[0].startswith("error: no storyteller")
    assert next(nothing.draw("A caption.", 3, 10, 0, 0))[0].startswith("error: drawing needs a captioner")
    app = StoryApp(None, SAGANetsCaptioner(gpt2="tiny", max_new_tokens=8).eval(),
                   LoRADiffusionVisualizer(sd="tiny", resolution=32, num_inference_steps=2, guidance_scale=1.0).eval())
    assert next(app.draw(" \n ", 3, 10, 0, 0))[0] == "error: type a first caption (one caption per line)"
    assert next(app.draw("One.\nTwo.\nThree.", 2, 10, 0, 0))[0].startswith("error: 2 frames is fewer than the 3")
    assert next(app.draw("One.", 2, 10, 0, 1.5))[0].startswith("error: continuity strength must be within")
    *steps, (status, shown, files) = list(app.draw("One.\nTwo.", 3, 10, 0, 0))
    assert [s[0] for s in steps] == ["drawing: 1 of 3 frames", "drawing: 2 of 3 frames", "drawing: 3 of 3 frames"]
    assert status == "done: 3 frames" and [c for _, c in shown][:2] == ["One.", "Two."] and len(shown) == 3
    assert [p.rsplit("/", 1)[-1] for p in files] == ["storyboard.png", "story.json"]


def test_the_data_commands_and_bootstrap_import_no_lightning():
    # what `data check`, `data synth` and `bootstrap` import: Lightning alone took ~9 s of their
    # ~14 s start on 2 cores
    import subprocess
    import sys

    code = ("import sys; from visiontales import bootstrap, cli; cli._datasets(); "
            "print(sorted(m for m in ('lightning', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
