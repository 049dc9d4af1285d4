import math

import lightning as L
import pytest
import torch
from conftest import EXPERIMENTS, tiny_overrides

from data_modules.flintstones import FlintstonesSVDataModule
from visiontales import losses
from visiontales.cli import main
from visiontales.models.gan import GANVisualizer, PatchEmbedding

APPROACHES = ("gan", "clip_centric", "temporal_coherence", "combined")


def test_image_losses():
    fake, real = torch.tensor([[0.0, 1.0], [2.0, -1.0]]), torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert losses.image_loss(fake, real, "l1").item() == pytest.approx((1 + 0 + 2 + 1) / 4)
    assert losses.image_loss(fake, real, "l2").item() == pytest.approx((1 + 0 + 4 + 1) / 4)


def test_clip_loss_is_one_minus_cosine():
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    image = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])  # same, orthogonal, opposite
    assert losses.clip_loss(image, text).item() == pytest.approx((0 + 1 + 2) / 3)


def test_character_and_coherence_losses():
    # one story of three frames: the first two embeddings point the same way, the third turns 90 degrees
    features = torch.tensor([[[2.0, 0.0], [5.0, 0.0], [0.0, 1.0]]])
    assert losses.character_loss(features).item() == pytest.approx((0 + 1) / 2)  # mean of 1 - cos over pairs
    latents = torch.tensor([[[[[0.0, 0.0]]], [[[1.0, 3.0]]]]])  # (B=1, S=2, C=1, h=1, w=2)
    assert losses.coherence_loss(latents).item() == pytest.approx((1 + 9) / 2 / 2)


def test_every_term_is_of_order_one_for_unrelated_frames():
    """The normalisation: for unrelated inputs each term is about 1, so lambda 1 weighs alike."""
    g = torch.Generator().manual_seed(0)
    fake, real = torch.rand(8, 3, 32, 32, generator=g) * 2 - 1, torch.rand(8, 3, 32, 32, generator=g) * 2 - 1
    features = torch.randn(2, 4, 512, generator=g)  # embeddings of unrelated frames
    latents = torch.randn(2, 4, 4, 8, 8, generator=g)  # unit-variance latents of unrelated frames
    terms = {"img": losses.image_loss(fake, real, "l1"), "clip": losses.clip_loss(features[0], features[1]),
             "char": losses.character_loss(features), "coher": losses.coherence_loss(latents),
             "adv": losses.generator_adversarial_loss(torch.zeros(8))}
    assert all(0.4 < value.item() < 1.5 for value in terms.values()), terms
    same = features[:, :1].expand(-1, 4, -1)
    assert losses.character_loss(same).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.coherence_loss(latents[:, :1].expand(-1, 4, -1, -1, -1)).item() == 0.0


def test_adversarial_losses_and_r1():
    zeros = torch.zeros(4)
    assert losses.discriminator_loss(zeros, zeros, "bce").item() == pytest.approx(2 * math.log(2))
    assert losses.discriminator_loss(torch.full((2,), 0.5), torch.full((2,), -2.0), "hinge").item() == pytest.approx(0.5)
    assert losses.generator_adversarial_loss(zeros, "bce").item() == pytest.approx(math.log(2))
    assert losses.generator_adversarial_loss(torch.tensor([1.0, 3.0]), "hinge").item() == pytest.approx(-2.0)
    x = torch.ones(1, 4, requires_grad=True)
    assert losses.r1_penalty((x ** 2).sum(dim=1), x).item() == pytest.approx(16.0)  # ||2x||^2


def _trainer(tmp_path, **kwargs):
    options = dict(accelerator="cpu", max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False,
                   enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    options.update(kwargs)
    return L.Trainer(**options)


def _gan(**kwargs):
    torch.manual_seed(0)
    options = dict(generator="conv", clip="tiny", sd="tiny", resolution=32, width=16, z_dim=16)
    options.update(kwargs)
    return GANVisualizer(**options)


class StepSpy(L.Callback):
    """Records, for each optimizer step, which parameters it changed."""

    def __init__(self):
        self.changed = []

    def on_train_start(self, trainer, pl_module):
        names = {id(p): n for n, p in pl_module.named_parameters()}
        for optimizer in trainer.optimizers:
            snapshot = {}

            def pre(opt, args, kwargs, snapshot=snapshot):
                snapshot.update({id(p): p.detach().clone() for p in pl_module.parameters()})

            def post(opt, args, kwargs, snapshot=snapshot):
                self.changed.append({names[i] for i, p in ((id(p), p) for p in pl_module.parameters())
                                     if not torch.equal(p, snapshot[i])})

            optimizer.register_step_pre_hook(pre)
            optimizer.register_step_post_hook(post)


@pytest.mark.parametrize("generator", ["conv", "sd_lora"])
def test_each_step_changes_only_its_own_side(generator, flintstones_root, tmp_path):
    model = _gan(generator=generator, r1_gamma=1.0)
    spy, forwards = StepSpy(), []
    model.generator.register_forward_hook(lambda module, args, out: forwards.append(out.shape))
    _trainer(tmp_path, callbacks=[spy]).fit(model, FlintstonesSVDataModule(str(flintstones_root), resolution=32,
                                                                           batch_size=2))
    d_changed, g_changed = spy.changed  # D steps first, then G
    assert forwards == [(10, 3, 32, 32)]  # one pass of G over 2 stories' frames serves both steps
    assert d_changed and all(n.startswith("discriminator.") for n in d_changed)
    assert g_changed and all(n.startswith("generator.") for n in g_changed)
    assert not any(n.startswith(("clip.", "vae.")) for n in d_changed | g_changed)
    if generator == "sd_lora":  # the paper's generator: only the UNet's LoRA adapters train
        assert all("lora_" in n for n in g_changed)
        frames = model.generate(["Fred is running in the yard."], seeds=[0], lora_alpha=10).frames
        assert frames.shape == (1, 3, 32, 32) and frames.abs().max() <= 1.0


def test_the_sd_generator_keeps_frozen_parts_in_half_precision_and_adapters_in_fp32(flintstones_root, tmp_path):
    model = _gan(generator="sd_lora")
    _trainer(tmp_path, precision="bf16-mixed").fit(model, FlintstonesSVDataModule(str(flintstones_root), resolution=32,
                                                                                batch_size=2))
    sd = model.generator.sd
    assert sd.vae.dtype == sd.text_encoder.dtype == torch.bfloat16
    assert all(p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16) for p in sd.unet.parameters())
    assert any(p.requires_grad for p in sd.unet.parameters())


def test_drawing_alpha_and_gradients_follow_the_generator():
    conv, sd_lora = _gan(), _gan(generator="sd_lora", lora_alpha=16.0)
    assert conv.default_lora_alpha is None and sd_lora.default_lora_alpha == 16.0
    frames = conv.generate(["Fred is running in the yard."], seeds=[0]).frames
    assert frames.shape == (1, 3, 32, 32) and not frames.requires_grad


def test_the_patch_embedding_matches_the_convolution_it_replaces():
    model = _gan()
    patches = model.clip.visual.conv1
    assert isinstance(patches, PatchEmbedding) and not patches.weight.requires_grad
    conv = torch.nn.Conv2d(3, patches.out_channels, patches.kernel_size, patches.stride, bias=patches.bias is not None)
    conv.load_state_dict(patches.state_dict())  # the same keys: checkpoints load either way
    x = torch.randn(2, 3, 37, 35, requires_grad=True)  # a partial patch at the border is dropped, as by the conv
    ours, theirs = patches(x), conv(x)
    assert ours.shape == theirs.shape and torch.allclose(ours, theirs, atol=1e-5)
    (grad_ours,), (grad_theirs,) = torch.autograd.grad(ours.square().sum(), x), torch.autograd.grad(theirs.square().sum(), x)
    assert torch.allclose(grad_ours, grad_theirs, atol=1e-4)
    padded = torch.nn.Conv2d(3, 8, 3, padding=1)
    assert PatchEmbedding.replacing(padded) is padded  # any other convolution stays as it is


def test_approaches_without_adversary_have_no_discriminator():
    assert _gan(lambda_adv=0.0).discriminator is None
    assert isinstance(_gan().configure_optimizers(), list)
    assert _gan(lambda_adv=0.0, lambda_coher=1.0).vae is not None


def test_divergence_guard_skips_and_stops(flintstones_root, tmp_path, monkeypatch):
    model = _gan(max_nonfinite_steps=3)
    before = {n: p.detach().clone() for n, p in model.generator.named_parameters()}
    monkeypatch.setattr(losses, "image_loss", lambda *a, **k: torch.tensor(float("nan")))
    trainer = _trainer(tmp_path, limit_train_batches=10)
    with pytest.warns(UserWarning, match="training stopped: 3 non-finite losses"):
        trainer.fit(model, FlintstonesSVDataModule(str(flintstones_root), resolution=32, batch_size=2))
    assert model.nonfinite_steps == 3
    assert trainer.fit_loop.epoch_loop.batch_progress.current.completed == 3  # not 10
    assert all(torch.equal(p, before[n]) for n, p in model.generator.named_parameters() if "running" not in n)


@pytest.mark.parametrize("approach", APPROACHES)
def test_each_approach_config_fits(approach, flintstones_root, tmp_path):
    args = tiny_overrides(f"{approach}.yaml", flintstones_root, tmp_path, fast_dev_run="true")
    assert main(["fit", *args, "--data.init_args.resolution", "32", "--model.init_args.resolution", "32"]) == 0


def test_the_four_configs_differ_only_in_loss_weights():
    import yaml

    def model_args(name, folder):
        config = yaml.safe_load((folder / f"{name}.yaml").read_text())
        return config["model"]["init_args"], {k: v for k, v in config.items() if k not in ("model", "trainer")}

    for folder in (EXPERIMENTS, EXPERIMENTS / "tiny"):
        base, rest = model_args("gan", folder)
        for approach in APPROACHES[1:]:
            args, other = model_args(approach, folder)
            assert other == rest
            assert {k for k in base if base[k] != args[k]} <= {"lambda_adv", "lambda_img", "image_loss",
                                                                "lambda_clip", "lambda_char", "lambda_coher"}


def test_the_pipeline_takes_a_gan_visualizer(flintstones_root, tmp_path):
    from visiontales.models.captioner import SAGANetsCaptioner

    paths = []
    for model in (SAGANetsCaptioner(gpt2="tiny", max_new_tokens=8), _gan()):
        trainer = _trainer(tmp_path)
        trainer.fit(model, FlintstonesSVDataModule(str(flintstones_root), resolution=32, batch_size=2))
        paths.append(tmp_path / f"{type(model).__name__}.ckpt")
        trainer.save_checkpoint(paths[-1])
    assert main(["story", "--captioner", str(paths[0]), "--visualizer", str(paths[1]), "--first-caption",
                 "Fred is running in the yard.", "--frames", "3", "--out", str(tmp_path / "s"),
                 "--continuity-strength", "0.5"]) == 0
    assert (tmp_path / "s" / "storyboard.png").is_file() and (tmp_path / "s" / "frame_02.png").is_file()


def test_a_reloaded_gan_draws_what_it_drew_when_saved(flintstones_root, tmp_path):
    """Checkpoints keep the learned buffers too (BatchNorm running statistics, spectral norm's
    vectors): without them an eval-mode conv generator draws flat grey frames after reloading."""
    from visiontales.models.base import load_model

    model = _gan(lambda_clip=0.0, lambda_char=0.0)
    trainer = _trainer(tmp_path)
    trainer.fit(model, FlintstonesSVDataModule(str(flintstones_root), resolution=32, batch_size=2))
    trainer.save_checkpoint(tmp_path / "gan.ckpt")
    model.eval()
    assert model.generator.body[0].running_var.mean().item() != pytest.approx(1.0)  # statistics were learned
    captions = ["Fred is walking in the yard.", "Wilma is talking in the kitchen."]
    reloaded = load_model(tmp_path / "gan.ckpt")
    assert torch.allclose(reloaded.generate(captions, seeds=[0, 1]).frames, model.generate(captions, seeds=[0, 1]).frames,
                          atol=1e-5)
    # spectral norm's power-iteration vectors (on a parametrization below D's weights) come back too
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    cond = model.caption_embeddings(captions * 2)
    assert torch.equal(reloaded.discriminator(real, cond), model.discriminator(real, cond))


def test_a_gan_resumed_at_an_epoch_boundary_equals_a_straight_run(flintstones_root, tmp_path):
    """With a loader worker too: it draws the prefix lengths and frames, seeded from the restored state."""
    from conftest import fit_twice_and_resumed

    straight, resumed = fit_twice_and_resumed(lambda: _gan(r1_gamma=1.0), flintstones_root, tmp_path, batches=2,
                                              num_workers=1)
    assert any(k.endswith("_u") for k in straight)  # spectral norm state is part of what is compared
    assert straight.keys() == resumed.keys()
    assert all(torch.allclose(straight[k].float(), resumed[k].float(), atol=1e-6) for k in straight)
