import pytest
import torch

from visiontales.errors import VisionTalesError
from visiontales.evaluation.character_classifier import (
    CharacterClassifier,
    character_metrics,
    score_frames,
)


def test_true_labels_score_one_and_wrong_ones_less():
    labels = torch.tensor([[1, 0, 0, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0, 1], [0, 0, 0, 0, 1, 0, 0]])
    metrics = character_metrics("")
    for metric in metrics.values():
        metric.update(labels.float(), labels)
    assert {k: m.compute().item() for k, m in metrics.items()} == {"char_acc": 1.0, "char_f1": 1.0}
    wrong = labels.clone()
    wrong[0, 3] = 0  # one character missed in one frame: that frame fails exact match
    metrics = character_metrics("")
    for metric in metrics.values():
        metric.update(wrong.float(), labels)
    scores = {k: m.compute().item() for k, m in metrics.items()}
    assert scores["char_acc"] == pytest.approx(2 / 3)
    assert scores["char_f1"] == pytest.approx(2 * 4 / (2 * 4 + 1))  # tp 4, fn 1, fp 0


def test_learns_the_characters_and_settings_of_a_batch(flintstones_root):
    from data_modules.flintstones import FlintstonesSVDataModule
    from data_modules.synthetic import SETTINGS

    torch.manual_seed(0)
    dm = FlintstonesSVDataModule(str(flintstones_root), resolution=32, batch_size=8)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    model = CharacterClassifier(backbone="resnet18", resolution=32, lr=3e-3, settings=list(SETTINGS))
    frames, labels, settings = model.frames_and_labels(batch)
    assert model.setting_net[-1].out_features == len(SETTINGS) and bool((settings >= 0).all())
    optimizer = model.configure_optimizers()
    first = None
    for _ in range(50):  # enough for BatchNorm's running statistics too (scoring runs in eval mode): 1.0 / 1.0 at 50
        loss = model.losses(batch)[0]
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2 * first
    scores = score_frames(model, frames, labels)
    assert scores["char_f1"] > 0.9 and scores["char_acc"] > 0.7
    model.eval()
    assert (model.predict_settings(frames) == settings).float().mean() > 0.9


def test_the_setting_classes_are_the_common_annotated_settings(flintstones_root):
    import lightning as L

    from data_modules.flintstones import FlintstonesSVDataModule
    from data_modules.synthetic import SETTINGS

    model = CharacterClassifier(resolution=32)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(model, FlintstonesSVDataModule(str(flintstones_root), resolution=32, batch_size=2))
    assert sorted(model.hparams.settings) == sorted(SETTINGS)
    assert model.setting_net[-1].out_features == len(SETTINGS) and model.net.fc.out_features == 7


def test_local_backbone_weights_and_bad_names(tmp_path):
    from torchvision.models import resnet18

    donor = resnet18(weights=None)
    torch.save(donor.state_dict(), tmp_path / "r18.pth")
    model = CharacterClassifier(backbone="resnet18", weights=str(tmp_path / "r18.pth"))
    assert torch.equal(model.net.conv1.weight, donor.conv1.weight)
    assert model.net.fc.out_features == 7  # the head is ours, not the donor's 1000-way one
    with pytest.raises(VisionTalesError, match="'resnet999' is not a torchvision model"):
        CharacterClassifier(backbone="resnet999")
    with pytest.raises(VisionTalesError, match="missing.pth: backbone weights not found"):
        CharacterClassifier(backbone="resnet18", weights=str(tmp_path / "missing.pth"))
