import lightning as L
import pytest
import torch

from data_modules.vist import VISTDataModule
from visiontales.models.storyteller import CLIPStoryteller

STORY = ["we went to the beach today .", "there was a dog at the beach .", "everyone loved the dog ."]


def _batch(texts, images=None):
    batch = {"texts": texts, "photo_ids": [["1", "2", "3"]] * len(texts), "story_id": ["s"] * len(texts),
             "references": [[" ".join(t)] for t in texts]}
    batch["images"] = torch.randn(len(texts), 3, 3, 224, 224) if images is None else images
    return batch


@pytest.fixture(scope="module")
def prompt_model():
    return CLIPStoryteller(gpt2="tiny", conditioning="prompt")


def test_labels_cover_only_the_story(prompt_model):
    model = prompt_model
    short = [STORY[0], STORY[1], "ok ."]
    embeds, mask, labels = model.inputs(_batch([STORY, short]))
    p = len(model.prompt_ids)
    story = model.story_ids({"texts": [STORY]})[0]
    assert embeds.shape[:2] == labels.shape == mask.shape
    assert (labels[:, :p] == -100).all()
    assert labels[0, p:].tolist() == story  # the story tokens, ending in EOS
    assert story[-1] == model.tokenizer.eos_token_id
    n_short = len(model.story_ids({"texts": [short]})[0])
    assert (labels[1, p + n_short:] == -100).all() and (mask[1, p + n_short:] == 0).all()


def test_prompt_conditioning_ignores_the_images(prompt_model):
    a = prompt_model.condition(_batch([STORY]))
    b = prompt_model.condition(_batch([STORY], images=torch.zeros(1, 3, 3, 224, 224)))
    assert torch.equal(a, b)
    assert prompt_model.clip is None


def test_prefix_conditioning_depends_on_the_images():
    model = CLIPStoryteller(gpt2="tiny", clip="tiny", conditioning="prefix", prefix_length=4)
    a = model.condition(_batch([STORY]))
    b = model.condition(_batch([STORY], images=torch.zeros(1, 3, 3, 224, 224)))
    assert a.shape == (1, 4, model.gpt2.config.n_embd)
    assert not torch.allclose(a, b)
    per_image = CLIPStoryteller(gpt2="tiny", clip="tiny", conditioning="prefix", prefix_length=4,
                                image_fusion="per_image", mapper="transformer", mapper_layers=1)
    assert per_image.condition(_batch([STORY])).shape == (1, 12, model.gpt2.config.n_embd)


@pytest.mark.parametrize("conditioning", ["prompt", "prefix"])
def test_overfits_one_batch_and_tells_the_whole_story(conditioning):
    torch.manual_seed(0)
    model = CLIPStoryteller(gpt2="tiny", clip="tiny", conditioning=conditioning, lr=3e-3, max_new_tokens=40)
    batch = _batch([STORY])
    optimizer = model.configure_optimizers()
    losses = []
    for _ in range(60):
        loss = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    model.eval()
    # three sentences: decoding runs to EOS, not to the first "."
    assert model.generate_stories(batch) == [" ".join(STORY)]
    model.hparams.decoding = "beam"
    assert model.generate_stories(batch) == [" ".join(STORY)]


def test_feature_cache_encodes_each_photo_once(vist_root, tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONTALES_HOME", str(tmp_path))  # an empty cache, whatever ran before
    model = CLIPStoryteller(gpt2="tiny", clip="tiny", conditioning="prefix")
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    encoded = []
    real_encode = model.encode_images
    monkeypatch.setattr(model, "encode_images", lambda images: encoded.append(len(images)) or real_encode(images))

    def setup():
        dm = VISTDataModule(str(vist_root))
        trainer.strategy.connect(model)
        model.trainer = trainer
        trainer.datamodule = dm
        dm.setup("validate")
        model.setup("validate")
        return dm

    dm = setup()
    n_photos = len(dm.image_paths("validate"))
    assert sum(encoded) == n_photos
    item = dm.datasets["val"][0]
    direct = real_encode(torch.stack([dm.load_photo('', p) for p in dm.datasets["val"].groups[0][0].image_paths])[None])
    assert torch.allclose(item["image_features"], direct[0], atol=1e-5)
    encoded.clear()
    dm = setup()  # a later run: everything comes from the disk cache
    assert encoded == []
    assert torch.allclose(dm.datasets["val"][0]["image_features"], direct[0], atol=1e-5)


def test_a_frozen_gpt2_stays_in_eval_mode_and_a_tuned_one_trains_with_dropout(vist_root, tmp_path):
    models = {"frozen": CLIPStoryteller(gpt2="tiny", clip="tiny", conditioning="prefix", freeze_gpt2=True),
              "tuned": CLIPStoryteller(gpt2="tiny", clip="tiny", conditioning="prefix")}
    for model in models.values():
        trainer = L.Trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
        trainer.fit(model, VISTDataModule(str(vist_root), batch_size=2))
        model.train()  # whoever calls it: frozen parts stay in eval mode
    frozen, tuned = models["frozen"], models["tuned"]
    assert not any(m.training for m in frozen.gpt2.modules()) and frozen.mapper.training
    assert not any(m.training for m in [*frozen.clip.modules(), *tuned.clip.modules()])
    assert tuned.gpt2.training and all(m.training for m in tuned.gpt2.modules())


def test_checkpoint_leaves_out_frozen_clip_and_loads_back(vist_root, tmp_path):
    model = CLIPStoryteller(gpt2="tiny", clip="tiny", conditioning="prefix", max_new_tokens=10)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(model, VISTDataModule(str(vist_root), batch_size=2))
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    assert not any(k.startswith("clip.") for k in state)
    assert any(k.startswith("mapper.") for k in state) and any(k.startswith("gpt2.") for k in state)
    loaded = CLIPStoryteller.load_from_checkpoint(path, map_location="cpu").eval()
    model.eval()
    batch = _batch([STORY])
    assert loaded.generate_stories(batch) == model.generate_stories(batch)


def test_prefix_conditioning_beats_the_papers_prompt_after_equal_training(tmp_path):
    """The acceptance comparison of bench/conditioning.py, without its per-epoch validation."""
    from conftest import tiny_overrides
    from lightning.pytorch.cli import LightningCLI

    from data_modules.synthetic import write_synthetic_vist

    vist_root = tmp_path / "vist"
    write_synthetic_vist(vist_root, seed=0, albums=200)  # 160 train albums: enough to generalise scenes
    cider = {}
    for conditioning, config in (("prompt", "clip_storyteller.yaml"), ("prefix", "clip_storyteller_prefix.yaml")):
        cli = LightningCLI(run=False, subclass_mode_model=True, subclass_mode_data=True, args=[
            *tiny_overrides(config, vist_root, tmp_path, max_epochs=8, limit_val_batches=0,
                            enable_model_summary="false")])
        cli.trainer.fit(cli.model, cli.datamodule)
        (metrics,) = cli.trainer.test(cli.model, cli.datamodule, verbose=False)
        cider[conditioning] = metrics["test/cider"]
    assert cider["prefix"] > 1.3 * cider["prompt"], cider
