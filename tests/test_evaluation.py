"""Image metrics, `visiontales evaluate`, the tiny-domain bootstrap, the report and the paper
profile's up-front checks."""

import json

import lightning as L
import pytest
import torch

from visiontales.cli import main
from visiontales.errors import VisionTalesError
from visiontales.evaluation.character_classifier import CharacterClassifier
from visiontales.evaluation.image_metrics import (
    PROTOCOL_CLASSIFIER,
    clip_score,
    find_inception_weights,
    frechet_distance,
    to_uint8,
)


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return CharacterClassifier(backbone="resnet18", resolution=32).eval()


def _frames(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 32, 32, generator=g) * 2 - 1 + shift).clamp(-1, 1)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_the_difference(classifier, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no InceptionV3 weights here: the classifier's features
    real = _frames(40, 0)
    same, protocol = frechet_distance(real, real, classifier)
    assert protocol == PROTOCOL_CLASSIFIER and "NOT comparable" in protocol
    assert same == pytest.approx(0.0, abs=1e-3)
    near, _ = frechet_distance(real, _frames(40, 1), classifier)  # same distribution, other samples
    far, _ = frechet_distance(real, _frames(40, 1, shift=0.8), classifier)  # washed-out frames
    assert 0 < near < far


def test_inception_weights_are_found_or_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert find_inception_weights() is None
    with pytest.raises(VisionTalesError, match="nope.pth: InceptionV3 FID weights not found"):
        find_inception_weights(tmp_path / "nope.pth")
    cached = tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert find_inception_weights() == cached


def test_to_uint8_resizes_to_the_protocol_size():
    frames = torch.full((2, 3, 128, 128), 1.0)
    out = to_uint8(frames)
    assert out.shape == (2, 3, 64, 64) and out.dtype == torch.uint8 and int(out.min()) == 255


def test_bootstrap_clip_learns_and_clip_score_follows_it():
    """A few steps of the tiny-domain CLIP training already pair frames with their own captions
    better than with another frame's; CLIPScore is 100 * cos clipped at 0."""
    import open_clip

    from visiontales.backbones import TINY_CLIP
    from visiontales.bootstrap import flintstones_samples, pixels, train_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None, **TINY_CLIP)
    losses = train_clip(model, steps=40)
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])
    model.eval()
    pairs = flintstones_samples(24, seed=7)
    frames = pixels([p for p, _ in pairs], 64).float() / 127.5 - 1
    captions = [c for _, c in pairs]
    matched = clip_score(model, frames, captions)
    shuffled = clip_score(model, frames, captions[1:] + captions[:1])
    assert 0 <= shuffled < matched <= 100


def test_bootstrap_gpt2_and_vae_losses_fall(tmp_path):
    from diffusers import AutoencoderKL

    from visiontales.backbones import TINY_VAE, build_tiny_gpt2
    from visiontales.bootstrap import train_gpt2, train_vae

    build_tiny_gpt2(tmp_path / "gpt2")
    losses = train_gpt2(tmp_path / "gpt2", steps=40)
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])
    assert (tmp_path / "gpt2" / "model.safetensors").is_file()
    torch.manual_seed(0)
    vae = AutoencoderKL(**{**TINY_VAE, "block_out_channels": [16, 32], "norm_num_groups": 8})  # 18 s, not 45
    losses = train_vae(vae, steps=12)
    assert sum(losses[-3:]) < 0.85 * sum(losses[:3])
    assert vae.config.scaling_factor != TINY_VAE["scaling_factor"]  # measured, as SD's was


# ------------------------------------------------------------------------------------ evaluate


@pytest.fixture(scope="module")
def trained(tmp_path_factory, flintstones_root):
    """A visualizer, a captioner and a character classifier checkpoint, as `fit` writes them."""
    from data_modules.flintstones import FlintstonesSVDataModule
    from visiontales.models.captioner import SAGANetsCaptioner
    from visiontales.models.lora_diffusion import LoRADiffusionVisualizer

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("trained")
    models = {"visualizer": LoRADiffusionVisualizer(sd="tiny", resolution=32, num_inference_steps=3,
                                                    guidance_scale=1.0, val_samples=0),
              "captioner": SAGANetsCaptioner(gpt2="tiny", max_new_tokens=8),
              "classifier": CharacterClassifier(resolution=32)}
    paths = {}
    for name, model in models.items():
        trainer = L.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=0, logger=False,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=out)
        datamodule = FlintstonesSVDataModule(str(flintstones_root), resolution=32, batch_size=2, eval_batch_size=8)
        trainer.fit(model, datamodule)
        paths[name] = out / f"{name}.ckpt"
        trainer.save_checkpoint(paths[name])
    return paths


def test_evaluate_a_visualizer_writes_its_files_and_repeats_itself(trained, flintstones_root, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    args = ["evaluate", "--checkpoint", str(trained["visualizer"]), "--data-root", str(flintstones_root),
            "--classifier", str(trained["classifier"]), "--clip", "tiny", "--max-frames", "10"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    first = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert first["kind"] == "LoRADiffusionVisualizer" and first["count"] == 10 and first["split"] == "test"
    assert set(first["metrics"]) == {"char_acc", "char_f1", "fid", "clip_score"}
    assert first["protocols"]["fid"] == PROTOCOL_CLASSIFIER
    assert first["metrics"] == json.loads((tmp_path / "b" / "metrics.json").read_text())["metrics"]
    table = (tmp_path / "a" / "metrics.md").read_text()
    assert "| Char-F1 |" in table and "NOT comparable with published FID" in table
    assert (tmp_path / "a" / "samples.png").is_file()
    # the split's real frames score themselves: FID 0
    assert main(["evaluate", "--real-frames", *args[3:], "--out", str(tmp_path / "real")]) == 0
    real = json.loads((tmp_path / "real" / "metrics.json").read_text())["metrics"]
    assert real["fid"] == pytest.approx(0.0, abs=1e-3)
    # as an untrained VAE rebuilds them they are far from themselves; the option needs --real-frames
    assert main(["evaluate", "--real-frames", "--through-vae", "tiny", *args[3:], "--out", str(tmp_path / "vae")]) == 0
    through = json.loads((tmp_path / "vae" / "metrics.json").read_text())
    assert through["kind"] == "real frames through the VAE" and through["metrics"]["fid"] > 1.0
    assert main(["evaluate", "--through-vae", "tiny", *args[1:], "--out", str(tmp_path / "x")]) == 2


def test_evaluate_the_captioner_gives_text_metrics(trained, flintstones_root, tmp_path):
    assert main(["evaluate", "--checkpoint", str(trained["captioner"]), "--data-root", str(flintstones_root),
                 "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["kind"] == "SAGANetsCaptioner"
    assert {"bleu4", "cider", "meteor", "char_f1", "ppl"} <= set(result["metrics"])


def test_evaluate_stories_scores_the_pipeline(trained, flintstones_root, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for seed in (0, 1):
        assert main(["story", "--captioner", str(trained["captioner"]), "--visualizer", str(trained["visualizer"]),
                     "--first-caption", "Fred is walking in the yard.", "--frames", "3", "--seed", str(seed),
                     "--out", str(tmp_path / "stories" / f"s{seed}")]) == 0
    assert main(["evaluate", "--stories", str(tmp_path / "stories"), "--data-root", str(flintstones_root),
                 "--classifier", str(trained["classifier"]), "--clip", "tiny", "--out", str(tmp_path / "eval")]) == 0
    result = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert result["count"] == 6 and result["settings"]["stories"] == 2
    assert {"fid", "clip_score", "named_char_f1"} <= set(result["metrics"])


def test_evaluate_errors_are_one_line(trained, flintstones_root, tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(trained["visualizer"]), "--data-root", str(flintstones_root),
                 "--out", str(tmp_path)]) == 2
    assert "--classifier is needed" in capsys.readouterr().err
    assert main(["evaluate", "--stories", str(tmp_path), "--data-root", str(flintstones_root),
                 "--classifier", str(trained["classifier"]), "--clip", "tiny", "--out", str(tmp_path)]) == 2
    assert "no story.json found" in capsys.readouterr().err


# -------------------------------------------------------------------------------------- report


def test_report_links_only_to_files_that_exist(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from visiontales.report import build_report, epoch_series, missing_links

    runs, report = tmp_path / "runs", tmp_path / "report"
    manifest = {"profile": "test", "runs": {}, "lora_epochs": 2,
                "rows": [{"id": "gan", "label": "GAN 20 epochs"}, {"id": "lora", "label": "LoRA"}]}
    for name in ("storyteller_prefix", "lora", "gan", "clip_centric", "temporal_coherence", "combined"):
        writer = SummaryWriter(runs / name)
        for epoch, value in enumerate((3.0, 2.0, 1.5)):
            writer.add_scalar("train/loss_epoch", value, epoch)
            writer.add_scalar("train/g_loss_epoch", value + 1, epoch)
        writer.close()
        manifest["runs"][name] = {"dir": str(runs / name), "config": str(runs / name / "config.yaml"),
                                  "command": f"visiontales fit {name}"}
    (runs / "gan" / "config.yaml").write_text("model: {}\n")
    assert epoch_series(runs / "lora", "train/loss_epoch") == [3.0, 2.0, 1.5]
    (report / "eval" / "gan").mkdir(parents=True)
    (report / "eval" / "gan" / "metrics.json").write_text(json.dumps(
        {"metrics": {"char_f1": 0.5, "fid": 12.0}, "protocols": {"fid": "some protocol"}}))
    (report / "eval" / "gan" / "metrics.md").write_text("| m | v |\n")
    (report / "manifest.json").write_text("{}")
    (report / "log.txt").write_text("")
    page = build_report(report, runs, manifest)
    text = page.read_text()
    assert missing_links(page) == []
    assert "assets/storyteller_loss.png" in text and (report / "assets" / "gan_loss.png").is_file()
    assert "50.00" in text and "12.000 [1]" in text and "FID [1]: some protocol" in text and "not run" in text
    # the table as data: evaluated rows by id, under evaluate's metric names
    assert json.loads((report / "results.json").read_text()) == {
        "gan": {"char_f1": 0.5, "fid": 12.0, "fid_protocol": "some protocol"}}
    assert "configs/gan.yaml" in text and "not produced" in text  # missing storyboards are said, not linked
    (report / "assets" / "gan_loss.png").unlink()
    assert missing_links(page) == ["assets/gan_loss.png"]


def test_paper_profile_without_data_stops_with_one_line_per_missing_item(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VISIONTALES_DATA", str(tmp_path / "nothing"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert main(["reproduce", "--profile", "paper", "--reports", str(tmp_path / "r")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) >= 8 and all(line.startswith("error: ") for line in lines)
    assert any("VIST SIS annotations" in line for line in lines)
    assert any("stable-diffusion-v1-5" in line for line in lines)
    assert not (tmp_path / "r").exists()  # nothing ran


@pytest.mark.skipif(not __import__("visiontales.screenshot", fromlist=["x"]).find_browser()
                    and not __import__("os").environ.get("VISIONTALES_REQUIRE_BROWSER"),
                    reason="no Chromium on this machine (apt-get install chromium)")
def test_headless_chromium_renders_a_page(tmp_path):
    from PIL import Image

    from visiontales.screenshot import screenshot

    page = tmp_path / "index.html"
    page.write_text("<html><body style='background:#00ff00'><h1>VisionTales</h1></body></html>")
    out = screenshot(page, tmp_path / "shot.png", width=320, height=200)
    with Image.open(out) as img:
        assert img.size == (320, 200)
        assert img.convert("RGB").getpixel((300, 190)) == (0, 255, 0)  # the page's background, rendered


class _Judge:
    """A stand-in classifier whose decisions per frame are given: frame value i -> row i."""

    device = torch.device("cpu")
    hparams = {"settings": ["quarry", "living room"]}

    def __init__(self, characters: list[list[int]], settings: list[int]) -> None:
        self.characters, self.settings = torch.tensor(characters).float(), torch.tensor(settings)

    def eval(self):
        return self

    def predict_characters(self, frames):
        return self.characters[frames[:, 0, 0, 0].long()]

    def predict_settings(self, frames):
        return self.settings[frames[:, 0, 0, 0].long()]


def test_story_consistency_counts_shared_characters_and_settings():
    from visiontales.evaluation.evaluate import named_setting, story_consistency

    assert named_setting("Fred is walking in the living room.", ["living room", "room"]) == "living room"
    assert named_setting("Fred is walking.", ["quarry"]) is None
    captions = ["Fred and Barney are talking in the quarry.", "Fred is laughing in the quarry.",
                "Wilma is sitting in the living room."]
    frames = torch.arange(3).float().view(3, 1, 1, 1).expand(3, 3, 4, 4)
    story = {"captions": captions, "frame_tensor": frames, "given_frames": [False] * 3}
    fred, barney = [0, 1, 0, 0, 0, 0, 0], [0, 1, 0, 1, 0, 0, 0]  # barney: Fred and Barney
    # pair 0-1 shares Fred and the quarry; pair 1-2 shares nothing: two checks
    assert story_consistency([story], _Judge([barney, fred, fred], [0, 0, 1])) == (1.0, 2)
    assert story_consistency([story], _Judge([barney, [0] * 7, fred], [0, 1, 1])) == (0.0, 2)
    # a given (real) frame is not the pipeline's: its pairs are skipped
    given = {**story, "given_frames": [True, False, False]}
    assert story_consistency([given], _Judge([barney, fred, fred], [0, 0, 1]))[1] == 0
