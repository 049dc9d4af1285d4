"""What every model inherits (visiontales.models.base): the registry of kinds, checkpoint files
that mean what their names say, frozen parts in eval mode, and the Stable Diffusion toolkit's
objectives."""

import json
import shutil

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from visiontales.errors import VisionTalesError
from visiontales.models.base import MODEL_KINDS, VisionTalesModule, frozen_parts, load_model


class RisingValLoss(VisionTalesModule, kind="test_rising_val_loss"):
    """A linear model whose val/loss rises every epoch: its best epoch is the first one."""

    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.frozen = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).requires_grad_(False)
        self.head = nn.Sequential(nn.Linear(2, 8), nn.Dropout(0.5), nn.Linear(8, 1))
        self.modes_in_training: set[tuple[bool, bool]] = set()  # (frozen dropout, head dropout)

    def training_step(self, batch, batch_idx):
        self.modes_in_training.add((self.frozen[1].training, self.head[1].training))
        return self.head(self.frozen(batch[0])).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", float(self.current_epoch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.head.parameters(), lr=0.1)


def _loader():
    return DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)


def test_last_is_the_last_state_and_best_is_named_best(tmp_path):
    model = RisingValLoss()
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, _loader(), _loader())
    folder = tmp_path / "checkpoints"
    assert {p.name for p in folder.iterdir()} == {"best.ckpt", "last.ckpt"}
    last, best = (torch.load(folder / name, weights_only=False) for name in ("last.ckpt", "best.ckpt"))
    assert (last["epoch"], last["global_step"]) == (2, 6) and best["epoch"] == 0
    assert all(torch.equal(last["state_dict"][k], v) for k, v in model.state_dict().items() if k.startswith("head."))
    assert not any(k.startswith("frozen.") for k in last["state_dict"])  # rebuilt, not stored


def test_frozen_parts_stay_in_eval_mode_and_the_rest_trains(tmp_path):
    """Backbones come from `from_pretrained` in eval mode: in training, the trainable part's dropout
    is on and the frozen part's off, whoever calls train()."""
    model = RisingValLoss().eval()
    assert [name for name, _ in frozen_parts(model)] == ["frozen"]
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, _loader(), _loader())
    assert model.modes_in_training == {(False, True)}  # every step of both epochs, validation between
    model.train()
    assert not model.frozen.training and not model.frozen[1].training and model.head[1].training


def test_a_kind_is_registered_once():
    assert MODEL_KINDS["test_rising_val_loss"] is RisingValLoss
    with pytest.raises(TypeError, match="model kind 'test_rising_val_loss' is already registered"):
        type("Impostor", (VisionTalesModule,), {}, kind="test_rising_val_loss")
    with pytest.raises(TypeError, match="already registered"):  # the same name in another module
        type("RisingValLoss", (VisionTalesModule,), {"__module__": "elsewhere"}, kind="test_rising_val_loss")


def test_damaged_foreign_and_wrong_kind_checkpoints_are_one_error_naming_the_file(tmp_path):
    from visiontales.visualizer import Visualizer

    model = RisingValLoss()
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, _loader(), _loader())
    good = tmp_path / "checkpoints" / "last.ckpt"
    assert isinstance(load_model(good), RisingValLoss)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[:5000])
    foreign = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, foreign)
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    checkpoint = torch.load(good, weights_only=True)
    unsigned, unknown = tmp_path / "unsigned.ckpt", tmp_path / "unknown.ckpt"
    torch.save({k: v for k, v in checkpoint.items() if k != "visiontales_class"}, unsigned)
    torch.save({**checkpoint, "visiontales_kind": "gone", "visiontales_class": "nowhere.Gone"}, unknown)
    cases = {cut: "not a readable checkpoint", foreign: "not a Lightning checkpoint", text: "not a readable checkpoint",
             tmp_path / "missing.ckpt": "checkpoint not found", unsigned: "not written by `visiontales fit`",
             unknown: "written by nowhere.Gone, which does not import here"}
    for path, message in cases.items():
        with pytest.raises(VisionTalesError, match=message) as error:
            load_model(path)
        assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)
    with pytest.raises(VisionTalesError, match=r"a RisingValLoss checkpoint .*, but --visualizer takes a Visualizer"):
        load_model(good, Visualizer, "--visualizer")


class _Payload:
    """Unpickling this runs code: it writes the file it names."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoint_carrying_pickled_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    hostile = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "visiontales_class": "x.Y", "payload": _Payload(marker)}, hostile)
    with pytest.raises(VisionTalesError, match="hostile.ckpt: not a readable checkpoint .*Weights only load failed"):
        load_model(hostile)
    assert not marker.exists()


# ------------------------------------------------------------------------------ SD toolkit


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_an_exact_prediction_implies_the_clean_latents(prediction):
    """What the UNet learns (`target`) and how a one-step generator reads its output back
    (`clean_latents`) agree for every prediction type."""
    from visiontales.backbones import load_stable_diffusion

    sd = load_stable_diffusion("tiny")
    sd.noise_scheduler.register_to_config(prediction_type=prediction)
    g = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([10, 500, 999])
    noisy = sd.noise_scheduler.add_noise(z0, noise, t)
    assert torch.allclose(sd.clean_latents(sd.target(z0, noise, t), noisy, t), z0, atol=1e-3)
    a = sd.noise_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = {"epsilon": noise, "sample": z0, "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * z0}[prediction]
    assert torch.allclose(sd.target(z0, noise, t), expected, atol=1e-6)


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_the_denoising_loop_matches_diffusers_pipeline(sampler):
    """Same model, sampler, steps, guidance and starting noise: the same latents as
    StableDiffusionPipeline (its LoRA adapters start at zero, so the base model draws)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline

    from visiontales.backbones import tiny_backbone_dir
    from visiontales.models.lora_diffusion import LoRADiffusionVisualizer

    model = LoRADiffusionVisualizer(sd="tiny", resolution=32, sampler=sampler, num_inference_steps=4,
                                    guidance_scale=4.0).eval()
    captions = ["Fred is walking in the yard.", "Wilma laughs in the kitchen."]
    drawing = model.generate(captions, seeds=[3, 4])
    pipe = StableDiffusionPipeline.from_pretrained(tiny_backbone_dir("tiny", "sd"), safety_checker=None)
    scheduler = DDIMScheduler if sampler == "ddim" else DPMSolverMultistepScheduler
    pipe.scheduler = scheduler.from_config(pipe.scheduler.config)
    noise = model.seeded_noise(model.sd.latent_shape(32), [3, 4])
    theirs = pipe(captions, height=32, width=32, num_inference_steps=4, guidance_scale=4.0, latents=noise,
                  output_type="latent").images
    assert torch.allclose(drawing.latents, theirs, atol=1e-4)


def test_zero_terminal_snr_trains_on_pure_noise_and_draws_as_the_pipeline_told_in_the_export(tmp_path):
    """The rescaled schedule ends at zero SNR (the target at t = T is -z0: the frame must come
    from the text), sampling starts at t = T, and StableDiffusionPipeline with the scheduler line
    of `export_usage` draws the same latents; the epsilon objective is refused."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from visiontales.backbones import tiny_backbone_dir
    from visiontales.models.lora_diffusion import LoRADiffusionVisualizer

    with pytest.raises(VisionTalesError, match="zero terminal SNR needs prediction_type 'v_prediction'.*'epsilon'"):
        LoRADiffusionVisualizer(sd="tiny", zero_terminal_snr=True)
    copy = tmp_path / "sd"
    shutil.copytree(tiny_backbone_dir("tiny", "sd"), copy)
    config = copy / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "prediction_type": "v_prediction"}))
    model = LoRADiffusionVisualizer(sd=str(copy), resolution=32, num_inference_steps=4, guidance_scale=4.0,
                                    zero_terminal_snr=True).eval()
    sd = model.sd
    assert sd.noise_scheduler.alphas_cumprod[-1].item() == 0.0
    z0, noise, t = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16), torch.tensor([999, 999])
    assert torch.allclose(sd.target(z0, noise, t), -z0, atol=1e-6)
    scheduler = sd.inference_scheduler("ddim")
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [999, 749, 499, 249]

    captions = ["Fred is walking in the yard.", "Wilma laughs in the kitchen."]
    drawing = model.generate(captions, seeds=[3, 4])
    assert 'rescale_betas_zero_snr=True, timestep_spacing="trailing"' in model.export_usage()
    pipe = StableDiffusionPipeline.from_pretrained(copy, safety_checker=None)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, rescale_betas_zero_snr=True,
                                               timestep_spacing="trailing")
    noise = model.seeded_noise(model.sd.latent_shape(32), [3, 4])
    theirs = pipe(captions, height=32, width=32, num_inference_steps=4, guidance_scale=4.0, latents=noise,
                  output_type="latent").images
    assert torch.allclose(drawing.latents, theirs, atol=1e-4)


def test_an_unknown_prediction_type_is_an_error(tmp_path):
    from visiontales.backbones import tiny_backbone_dir
    from visiontales.models.lora_diffusion import LoRADiffusionVisualizer

    copy = tmp_path / "sd"
    shutil.copytree(tiny_backbone_dir("tiny", "sd"), copy)
    config = copy / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "prediction_type": "flow"}))
    with pytest.raises(VisionTalesError, match="scheduler prediction_type 'flow' is not one of epsilon"):
        LoRADiffusionVisualizer(sd=str(copy))


def test_resuming_from_a_checkpoint_carrying_pickled_code_is_one_line_and_runs_nothing(
        flintstones_root, tmp_path, capsys):
    from conftest import tiny_overrides

    from visiontales.cli import main

    marker = tmp_path / "ran"
    hostile = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "visiontales_class": "x.Y", "payload": _Payload(marker)}, hostile)
    args = tiny_overrides("sagan_captioner.yaml", flintstones_root, tmp_path)
    assert main(["fit", *args, "--ckpt_path", str(hostile)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {hostile}: not a readable checkpoint")
    assert not marker.exists()
