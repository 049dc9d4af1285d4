import lightning as L
import pytest
import torch

from visiontales.models.lora_diffusion import LoRADiffusionVisualizer

CAPTIONS = ["Fred is walking in the yard.", "Wilma and Betty are talking in the kitchen."]


@pytest.fixture(scope="module")
def visualizer():
    torch.manual_seed(0)
    return LoRADiffusionVisualizer(sd="tiny", lora_rank=4, lora_alpha=32, resolution=32,
                                   num_inference_steps=3, guidance_scale=1.0)


def _batch(n=2, size=32):
    return {"texts": [CAPTIONS + CAPTIONS + CAPTIONS[:1]] * n, "prefix_len": [1] * n,
            "images": torch.rand(n, 5, 3, size, size) * 2 - 1, "story_id": [str(i) for i in range(n)]}


def _unet_output(model, scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 4, 16, 16, generator=g)
    states = model.encode_captions(CAPTIONS[:1])
    with torch.no_grad():
        return model.sd.unet(latents, torch.tensor([500]), encoder_hidden_states=states,
                             cross_attention_kwargs={"scale": scale}).sample


def _nonzero_lora(model):
    with torch.no_grad():  # gaussian init leaves B = 0: give the adapters an effect to test
        for name, p in model.sd.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)


def test_only_lora_weights_are_trainable_and_change():
    torch.manual_seed(0)
    model = LoRADiffusionVisualizer(sd="tiny", lora_rank=4, resolution=32, lr=1e-2)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all("lora_A" in n or "lora_B" in n for n in names)
    assert all(any(t in n for t in ("to_q", "to_k", "to_v")) for n in names)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = model.configure_optimizers()
    loss = model.diffusion_loss(_batch())
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= names


def test_lora_scale_zero_is_the_base_unet_and_inference_alpha_matters(visualizer):
    _nonzero_lora(visualizer)
    with_lora = _unet_output(visualizer, scale=1.0)
    off = _unet_output(visualizer, scale=0.0)
    visualizer.sd.unet.disable_adapters()
    base = _unet_output(visualizer, scale=1.0)
    visualizer.sd.unet.enable_adapters()
    assert torch.allclose(off, base, atol=1e-6)
    assert not torch.allclose(with_lora, base, atol=1e-4)
    # alpha 10 with training alpha 32: scale 10/32, between the base and the full update
    frames_32 = visualizer.generate(CAPTIONS, seeds=[0, 1], lora_alpha=32).frames
    frames_10 = visualizer.generate(CAPTIONS, seeds=[0, 1], lora_alpha=10).frames
    frames_0 = visualizer.generate(CAPTIONS, seeds=[0, 1], lora_alpha=0).frames
    assert frames_10.shape == (2, 3, 32, 32)
    assert not torch.allclose(frames_32, frames_10) and not torch.allclose(frames_10, frames_0)
    assert torch.equal(visualizer.generate(CAPTIONS, seeds=[0, 1], lora_alpha=10).frames, frames_10)  # seeded


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_merged_adapters_draw_as_unmerged_and_leave_every_weight_as_it_was(precision):
    torch.manual_seed(0)
    model = LoRADiffusionVisualizer(sd="tiny", lora_rank=4, lora_alpha=32, resolution=32)
    _nonzero_lora(model)
    sd = model.sd
    sd.cast_frozen(precision)
    before = {n: p.detach().clone() for n, p in sd.unet.named_parameters()}
    noise = model.seeded_noise(sd.latent_shape(32), [0, 1])
    states = model.encode_captions(CAPTIONS)
    unmerged = sd.sample(states, noise, num_steps=4, sampler="ddim", lora_scale=10 / 32)
    with sd.merged_lora(10 / 32):
        merged = sd.sample(states, noise, num_steps=4, sampler="ddim")
    base = sd.sample(states, noise, num_steps=4, sampler="ddim", lora_scale=0.0)
    tolerance = 1e-4 if precision == "32-true" else 0.1
    assert (merged - unmerged).abs().max() < tolerance < (unmerged - base).abs().max()
    assert all(torch.equal(p, before[n]) for n, p in sd.unet.named_parameters())  # bit for bit
    assert torch.equal(sd.sample(states, noise, num_steps=4, sampler="ddim", lora_scale=10 / 32), unmerged)


def test_loss_falls_on_an_overfit_batch():
    torch.manual_seed(0)
    model = LoRADiffusionVisualizer(sd="tiny", lora_rank=8, resolution=32, lr=5e-3,
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    batch = _batch()
    latents, states = model.targets(batch)
    optimizer = model.configure_optimizers()
    losses = []
    for step in range(120):
        loss = model.sd.diffusion_loss(latents, states, generator=torch.Generator().manual_seed(step % 4))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-4:]) < 0.85 * sum(losses[:4])  # same noise and timesteps: a steady fall


def test_checkpoint_holds_only_adapters(flintstones_root, tmp_path):
    from data_modules.flintstones import FlintstonesSVDataModule

    model = LoRADiffusionVisualizer(sd="tiny", resolution=32, lr=1e-2, val_samples=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=3, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, FlintstonesSVDataModule(str(flintstones_root), resolution=32, batch_size=2))
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    checkpoint = torch.load(tmp_path / "a.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["state_dict"] and all("lora_" in k for k in checkpoint["state_dict"])
    assert len(checkpoint["state_dict"]) == len(model.trainable_parameters)
    lora = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}
    resumed = LoRADiffusionVisualizer.load_from_checkpoint(tmp_path / "a.ckpt", map_location="cpu")
    assert all(torch.equal(resumed.state_dict()[k], v) for k, v in lora.items())


def test_resumed_at_an_epoch_boundary_equals_a_straight_run(flintstones_root, tmp_path):
    """2 epochs straight == 1 epoch, then `fit --ckpt_path last.ckpt` to 2 (same noise, timesteps,
    caption dropout, prefix lengths and shuffles: the RNG states travel with the checkpoint)."""
    from conftest import fit_twice_and_resumed

    straight, resumed = fit_twice_and_resumed(
        lambda: LoRADiffusionVisualizer(sd="tiny", resolution=32, lr=1e-2, caption_dropout=0.3, noise_offset=0.1,
                                        num_inference_steps=2, guidance_scale=1.0, val_samples=1),
        flintstones_root, tmp_path)
    assert straight.keys() == resumed.keys() and all("lora_" in k for k in straight)
    assert all(torch.allclose(straight[k], resumed[k], atol=1e-6) for k in straight)


def test_val_loss_repeats_exactly(flintstones_root, tmp_path):
    from data_modules.flintstones import FlintstonesSVDataModule

    model = LoRADiffusionVisualizer(sd="tiny", resolution=32, noise_offset=0.1, val_samples=0)
    datamodule = FlintstonesSVDataModule(str(flintstones_root), resolution=32, eval_batch_size=4)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, limit_val_batches=2)
    first, second = (trainer.validate(model, datamodule, verbose=False)[0]["val/loss"] for _ in range(2))
    assert first == second


def test_unsupported_precision_is_refused_with_one_line(flintstones_root, tmp_path, capsys):
    from conftest import tiny_overrides

    from visiontales.cli import main

    args = tiny_overrides("sagan_lora.yaml", flintstones_root, tmp_path, fast_dev_run="true", precision="bf16-true")
    assert main(["fit", *args, "--data.init_args.resolution", "32", "--model.init_args.resolution", "32"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "precision 'bf16-true' is not supported" in err[0] and "bf16-mixed" in err[0]


def test_export_loads_into_a_diffusers_pipeline_with_the_same_output(visualizer, tmp_path):
    from diffusers import StableDiffusionPipeline

    from visiontales.backbones import home

    _nonzero_lora(visualizer)
    visualizer.export_lora(tmp_path / "lora")
    base = next((home() / "backbones").glob("tiny-sd-*"))
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None)
    pipe.load_lora_weights(tmp_path / "lora")
    for scale in (1.0, 10 / 32):
        g = torch.Generator().manual_seed(0)
        latents = torch.randn(1, 4, 16, 16, generator=g)
        states = visualizer.encode_captions(CAPTIONS[:1])
        with torch.no_grad():
            theirs = pipe.unet(latents, torch.tensor([500]), encoder_hidden_states=states,
                               cross_attention_kwargs={"scale": scale}).sample
        assert torch.allclose(theirs, _unet_output(visualizer, scale), atol=1e-5)


def test_half_precision_keeps_adapters_fp32(flintstones_root, tmp_path):
    from data_modules.flintstones import FlintstonesSVDataModule

    model = LoRADiffusionVisualizer(sd="tiny", resolution=32, val_samples=0)
    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", max_steps=2, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, FlintstonesSVDataModule(str(flintstones_root), resolution=32, batch_size=2))
    assert all(p.dtype == torch.float32 for p in model.trainable_parameters)
    assert model.sd.vae.dtype == model.sd.text_encoder.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for n, p in model.sd.unet.named_parameters() if "lora_" not in n)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_latent_cache_fills_as_training_draws_frames_and_then_skips_the_encoders(flintstones_root, tmp_path,
                                                                                monkeypatch):
    from data_modules.flintstones import FlintstonesSVDataModule

    monkeypatch.setenv("VISIONTALES_HOME", str(tmp_path / "home"))
    model = LoRADiffusionVisualizer(sd="tiny", resolution=32, cache=True, val_samples=0)
    encode_frames, encoded = model.sd.encode_frames, []
    monkeypatch.setattr(model.sd, "encode_frames", lambda frames: encoded.append(len(frames)) or encode_frames(frames))
    dm = FlintstonesSVDataModule(str(flintstones_root), resolution=32, batch_size=2)
    trainer = L.Trainer(accelerator="cpu", max_steps=3, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, dm)
    # nothing encoded up front: the frames the three steps drew, each once, as an uncached run would
    assert 1 <= sum(encoded) == len(model.latent_cache) <= 3 * 2
    key = next(iter(model.latent_cache.present))
    frame = dm.load_frame(key, dm.index.frames_path(key.split("#")[0]))
    assert torch.allclose(model.latent_cache[key], encode_frames(frame[None])[0], atol=2e-3)  # kept in fp16
    items = [dm.datasets["train"][i] for i in range(len(dm.datasets["train"]))]
    served = {f"{it['clip_ids'][it['prefix_len']]}#{int(it['frame_index'][it['prefix_len']])}":
              it["target_image"] is not None for it in items}
    assert not any(served[k] for k in served if k in model.latent_cache)  # the loader skips cached frames
    assert all(served[k] for k in served if k not in model.latent_cache)  # and decodes the others

    batch = next(iter(dm.train_dataloader()))
    model.targets(batch)  # caches this batch's frames
    calls = []
    monkeypatch.setattr(model.sd.vae, "encode", lambda *a, **k: calls.append("vae"))
    monkeypatch.setattr(model.sd.text_encoder, "forward", lambda *a, **k: calls.append("text"))
    latents, states = model.targets(batch)
    assert calls == [] and latents.shape == (2, 4, 16, 16) and states.shape[1:] == (77, 32)

    # once every frame of every clip is cached the loader decodes none, and a later run finds them all
    monkeypatch.undo()
    files = dm.frame_files("fit")
    rest = [k for k in files if k not in model.latent_cache]
    model.latent_cache.add(rest, encode_frames(torch.stack([dm.load_frame(k, files[k]) for k in rest])))
    assert model.latent_cache.complete and dm.datasets["train"][0]["target_image"] is None
    assert dm.datasets["val"][0]["target_image"] is not None  # validation shows its ground truth
    from visiontales.feature_cache import FeatureCache

    assert FeatureCache(model.latent_cache.cache.root.parent, model.latent_cache.cache.key,
                        dtype=torch.float16).filling(files).complete


def test_character_tokens_are_appended_and_trained(tmp_path):
    torch.manual_seed(0)
    model = LoRADiffusionVisualizer(sd="tiny", resolution=32, character_tokens=True, lr=1e-2)
    labels = torch.zeros(2, 7)
    labels[0, 1] = labels[0, 3] = 1  # Fred, Barney (the labels' order: Wilma, Fred, Betty, Barney, ...)
    assert model.prompts(["Two friends talk.", "Nobody."], labels) == ["Two friends talk. <fred> <barney>", "Nobody."]
    assert model.prompts(["Wilma and Mr Slate laugh."]) == ["Wilma and Mr Slate laugh. <wilma> <mr_slate>"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("trainable_tokens" in n for n in trainable)
    assert all("lora_" in n or "trainable_tokens" in n for n in trainable)
    before = model.encode_captions(["Fred is walking."]).clone()
    batch = _batch()
    batch["characters"] = torch.ones(2, 5, 7)
    optimizer = model.configure_optimizers()
    model.diffusion_loss(batch).backward()
    optimizer.step()
    after = model.encode_captions(["Fred is walking."])
    assert not torch.allclose(before, after)  # <fred>'s embedding moved
    assert torch.equal(model.encode_captions(["Nothing here."]), model.encode_captions(["Nothing here."]))
    trainer = L.Trainer(accelerator="cpu", logger=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    loaded = LoRADiffusionVisualizer.load_from_checkpoint(tmp_path / "c.ckpt", map_location="cpu")
    assert torch.allclose(loaded.encode_captions(["Fred is walking."]), after, atol=1e-6)


@pytest.mark.parametrize("schedule,expected", [("linear", [0.0, 0.5, 1.0, 0.75, 0.5, 0.25]),
                                               ("constant", [0.0, 0.5, 1.0, 1.0, 1.0, 1.0])])
def test_lr_schedule_warms_up_then_follows_its_shape_over_the_whole_run(flintstones_root, tmp_path, schedule,
                                                                         expected):
    from data_modules.flintstones import FlintstonesSVDataModule

    class LRs(L.Callback):
        def __init__(self) -> None:
            self.seen: list[float] = []

        def on_train_batch_start(self, trainer, *args) -> None:
            self.seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    lrs = LRs()
    model = LoRADiffusionVisualizer(sd="tiny", resolution=32, lr=1e-2, lr_scheduler=schedule, lr_warmup_steps=2,
                                    val_samples=0)
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=3, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=tmp_path, callbacks=[lrs])
    trainer.fit(model, FlintstonesSVDataModule(str(flintstones_root), resolution=32, batch_size=2))
    assert lrs.seen == pytest.approx([1e-2 * f for f in expected])
