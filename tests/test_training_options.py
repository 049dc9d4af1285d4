"""Training options as callbacks: TrainableEMA (validation and checkpoints see the average of the trainable
weights; resume is exact) and Compile (torch.compile in place, checkpoints unchanged)."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from visiontales.callbacks import Compile, TrainableEMA

DECAY = 0.8


class Regression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(4, 1)
        self.tied = self.net  # a second state-dict name for the same weights, as GPT-2's tied embeddings
        self.frozen = torch.nn.Linear(4, 4).requires_grad_(False)
        self.validated: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.net(self.frozen(x)), y)

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.validated.append(self.net.weight.detach().clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=0.1)


class Steps(L.Callback):
    def __init__(self) -> None:
        self.weights = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.weights.append(pl_module.net.weight.detach().clone())


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


def _fit(model, epochs, callbacks, ckpt_path=None, folder=None):
    trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, callbacks=callbacks, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, default_root_dir=folder)
    trainer.fit(model, _data(), _data(), ckpt_path=ckpt_path)
    return trainer


def test_validation_and_checkpoints_hold_the_average_of_the_trainable_weights(tmp_path):
    model, steps, ema = Regression(), Steps(), TrainableEMA(DECAY)
    start = model.net.weight.detach().clone()
    frozen = model.frozen.weight.detach().clone()
    trainer = _fit(model, 2, [ema, steps])
    expected, averages = start, []
    for w in steps.weights:  # 4 steps an epoch
        expected = DECAY * expected + (1 - DECAY) * w
        averages.append(expected)
    assert torch.allclose(model.validated[0], averages[3], atol=1e-6)
    assert torch.allclose(model.validated[1], averages[7], atol=1e-6)
    assert not torch.allclose(averages[7], steps.weights[-1], atol=1e-3)  # the average is not the last weight
    assert torch.equal(model.net.weight, steps.weights[-1])  # training goes on with the raw weights

    trainer.save_checkpoint(tmp_path / "last.ckpt")
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    for name in ("net.weight", "tied.weight"):
        assert torch.allclose(checkpoint["state_dict"][name], averages[7], atol=1e-6)
    assert torch.equal(checkpoint[TrainableEMA.RAW_KEY]["net.weight"], steps.weights[-1])
    assert torch.equal(checkpoint["state_dict"]["frozen.weight"], frozen)  # never averaged


def test_resumed_run_equals_a_straight_one(tmp_path):
    straight, straight_ema = Regression(), TrainableEMA(DECAY)
    _fit(straight, 2, [straight_ema])
    first = _fit(Regression(), 1, [TrainableEMA(DECAY)])
    first.save_checkpoint(tmp_path / "one.ckpt")
    resumed, resumed_ema = Regression(), TrainableEMA(DECAY)
    _fit(resumed, 2, [resumed_ema], ckpt_path=tmp_path / "one.ckpt", folder=tmp_path)
    assert torch.allclose(resumed.net.weight, straight.net.weight, atol=1e-6)
    for a, b in zip(resumed_ema.average, straight_ema.average, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(resumed.validated[-1], straight.validated[-1], atol=1e-6)


def test_compile_compiles_the_declared_parts_in_place():
    from visiontales.models.lora_diffusion import LoRADiffusionVisualizer

    model = LoRADiffusionVisualizer(sd="tiny", resolution=32)
    keys = set(model.state_dict())
    Compile().setup(None, model, "fit")
    assert model.sd.unet._compiled_call_impl is not None  # compiled on its first call
    assert model.sd.vae._compiled_call_impl is None
    assert set(model.state_dict()) == keys  # checkpoints read and write as before
    with pytest.raises(ValueError, match="no submodule 'sd.nope'"):
        Compile(modules=["sd.nope"]).setup(None, model, "fit")
    with pytest.raises(ValueError, match="names no compile_targets"):
        Compile().setup(None, Regression(), "fit")
