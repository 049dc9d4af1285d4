import json

import lightning as L
import pytest
import torch
from conftest import EXPERIMENTS
from PIL import Image

from visiontales.cli import main
from visiontales.errors import VisionTalesError
from visiontales.models.captioner import SAGANetsCaptioner
from visiontales.models.lora_diffusion import LoRADiffusionVisualizer
from visiontales.pipeline import SAGANetsPipeline, read_prefix, storyboard

FIRST = "Fred and Barney are talking in the quarry."


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    captioner = SAGANetsCaptioner(gpt2="tiny", max_new_tokens=12).eval()
    visualizer = LoRADiffusionVisualizer(sd="tiny", resolution=32, num_inference_steps=3, guidance_scale=1.0).eval()
    return captioner, visualizer


@pytest.fixture(scope="module")
def checkpoints(models, tmp_path_factory, flintstones_root):
    """Checkpoints written by a Trainer, as `fit` writes them."""
    from data_modules.flintstones import FlintstonesSVDataModule

    out = tmp_path_factory.mktemp("ckpt")
    paths = []
    for model, name in zip(models, ("captioner", "visualizer"), strict=True):
        trainer = L.Trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=out)
        trainer.fit(model, FlintstonesSVDataModule(str(flintstones_root), resolution=32, batch_size=2))
        trainer.save_checkpoint(out / f"{name}.ckpt")
        paths.append(out / f"{name}.ckpt")
        model.eval()
    return paths


def test_pipeline_alternates_until_n_frames(models):
    captioner, visualizer = models
    story = SAGANetsPipeline(captioner, visualizer)([FIRST], [], n_frames=4, seed=3)
    assert len(story.captions) == 4 and story.captions[0] == FIRST  # an untrained captioner may say little
    assert story.frames.shape == (4, 3, 32, 32)
    assert story.given_captions == [True, False, False, False] and story.given_frames == [False] * 4
    again = SAGANetsPipeline(captioner, visualizer)([FIRST], [], n_frames=4, seed=3)
    assert torch.equal(story.frames, again.frames) and story.captions == again.captions


def test_one_by_one_yields_the_story_the_pipeline_tells(models):
    captioner, visualizer = models
    for continuity in (None, 0.5):
        pipeline = SAGANetsPipeline(captioner, visualizer, continuity_strength=continuity)
        story = pipeline([FIRST], [], n_frames=3, seed=2)
        steps = list(pipeline.one_by_one([FIRST], 3, seed=2))
        assert [caption for caption, _ in steps] == story.captions
        assert torch.allclose(torch.stack([frame for _, frame in steps]), story.frames, atol=1e-5)


def test_stories_drawn_together_equal_stories_drawn_one_frame_at_a_time(models):
    captioner, visualizer = models
    pipeline = SAGANetsPipeline(captioner, visualizer)
    given = [torch.rand(3, 32, 32) * 2 - 1]
    together = pipeline.many([([FIRST], []), ([FIRST, FIRST], given)], n_frames=3, seed=5)
    alone = [pipeline([FIRST], [], 3, seed=5), pipeline([FIRST, FIRST], given, 3, seed=5)]
    for a, b in zip(together, alone, strict=True):
        assert a.captions == b.captions and a.given_frames == b.given_frames
        assert torch.allclose(a.frames, b.frames, atol=1e-5)
    # frame by frame through generate, as the continuity path draws: the same frames
    one_by_one = torch.stack([visualizer.generate([c], [5 + i]).frames[0] for i, c in enumerate(alone[0].captions)])
    assert torch.allclose(alone[0].frames, one_by_one.cpu(), atol=1e-5)


def test_given_frames_are_kept_and_continuity_changes_the_next(models):
    captioner, visualizer = models
    given = [torch.rand(3, 64, 64) * 2 - 1, torch.rand(3, 64, 64) * 2 - 1]
    plain = SAGANetsPipeline(captioner, visualizer)([FIRST, FIRST], given, n_frames=3)
    assert plain.given_frames == [True, True, False]
    small = torch.nn.functional.interpolate(given[0][None], size=(32, 32), mode="bilinear", antialias=True)[0]
    assert torch.allclose(plain.frames[0], small)
    carried = SAGANetsPipeline(captioner, visualizer, continuity_strength=0.5)([FIRST, FIRST], given, n_frames=3)
    assert not torch.allclose(plain.frames[2], carried.frames[2])
    again = SAGANetsPipeline(captioner, visualizer, continuity_strength=0.5)([FIRST, FIRST], given, n_frames=3)
    assert torch.equal(carried.frames, again.frames)  # continuity stories repeat exactly
    with pytest.raises(VisionTalesError, match="continuity strength must be within"):
        SAGANetsPipeline(captioner, visualizer, continuity_strength=1.5)


def test_storyboard_has_a_panel_per_frame_and_marks_the_given_one(models):
    story = SAGANetsPipeline(*models)([FIRST], [torch.zeros(3, 32, 32)], n_frames=3)
    board = storyboard(story)
    assert board.width == 3 * (256 + 12) + 12 and board.height > 256
    left_border = [board.getpixel((12 + i * (256 + 12) - 2, 100)) for i in range(3)]
    assert left_border == [(40, 170, 60), (150, 150, 150), (150, 150, 150)]  # given green, generated grey


def test_prefix_file(tmp_path):
    Image.new("RGB", (64, 64), (255, 0, 0)).save(tmp_path / "a.png")
    (tmp_path / "p.json").write_text(json.dumps([{"caption": FIRST, "frame": "a.png"}, {"caption": "Wilma laughs."}]))
    captions, frames = read_prefix(tmp_path / "p.json")
    assert captions == [FIRST, "Wilma laughs."] and len(frames) == 1
    assert frames[0].shape == (3, 64, 64) and frames[0][0].min() == 1.0 and frames[0][1].max() == -1.0
    (tmp_path / "bad.json").write_text(json.dumps([{"caption": FIRST}, {"caption": "x", "frame": "a.png"}]))
    with pytest.raises(VisionTalesError, match="step 1 has no frame but a later step has one"):
        read_prefix(tmp_path / "bad.json")


def test_story_command_writes_the_storyboard(checkpoints, tmp_path, capsys):
    captioner, visualizer = checkpoints
    assert main(["story", "--captioner", str(captioner), "--visualizer", str(visualizer), "--first-caption", FIRST,
                 "--frames", "4", "--out", str(tmp_path / "s"), "--lora-alpha", "10"]) == 0
    record = json.loads((tmp_path / "s" / "story.json").read_text())
    assert len(record["captions"]) == 4 and record["captions"][0] == FIRST
    assert record["settings"]["lora_alpha"] == 10 and record["frames"] == [f"frame_{i:02d}.png" for i in range(4)]
    assert Image.open(tmp_path / "s" / "storyboard.png").width == 4 * (256 + 12) + 12
    assert all((tmp_path / "s" / name).is_file() for name in record["frames"])
    assert "wrote" in capsys.readouterr().out


def test_story_with_a_damaged_or_wrong_checkpoint_is_one_error_line(checkpoints, tmp_path, capsys):
    captioner, visualizer = checkpoints
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(captioner.read_bytes()[:5000])
    story = ["story", "--first-caption", FIRST, "--frames", "2", "--out", str(tmp_path / "s")]
    for args, message in (([ "--captioner", str(cut), "--visualizer", str(visualizer)], f"{cut}: not a readable checkpoint"),
                          (["--captioner", str(visualizer), "--visualizer", str(visualizer)],
                           "a LoRADiffusionVisualizer checkpoint (lora_diffusion), but --captioner takes a SAGANetsCaptioner"),
                          (["--captioner", str(captioner), "--visualizer", str(captioner)],
                           "a SAGANetsCaptioner checkpoint (saganets_captioner), but --visualizer takes a Visualizer")):
        assert main([*story, *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "s").exists()


def test_export_lora_command(checkpoints, tmp_path):
    assert main(["export-lora", "--checkpoint", str(checkpoints[1]), "--out", str(tmp_path / "lora")]) == 0
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_predict_writes_a_story_folder_per_test_story(checkpoints, flintstones_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    captioner, visualizer = checkpoints
    assert main(["predict", "--config", str(EXPERIMENTS / "tiny" / "sagan_story.yaml"),
                 "--data.init_args.root", str(flintstones_root), "--data.init_args.resolution", "32",
                 "--model.init_args.captioner_checkpoint", str(captioner),
                 "--model.init_args.visualizer_checkpoint", str(visualizer),
                 "--trainer.logger.init_args.version", "p", "--trainer.enable_progress_bar", "false"]) == 0
    run = tmp_path / "runs" / "tiny_sagan_story" / "p"
    predictions = json.loads((run / "predictions.json").read_text())
    assert len(predictions) == 2  # one batch of two stories
    for p in predictions:
        folder = run / "stories" / p["story_id"]
        record = json.loads((folder / "story.json").read_text())
        assert len(record["captions"]) == 5 and sum(record["given_frames"]) == p["given"]
        assert (folder / "storyboard.png").is_file()
