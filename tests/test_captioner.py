import pytest
import torch

from visiontales.errors import VisionTalesError
from visiontales.models.captioner import SCENE_TOKENS, SAGANetsCaptioner
from visiontales.vocabulary import named_characters

STORY = ["Fred is walking in the yard.", "Fred and Barney are talking in the yard.",
         "Barney is laughing in the yard.", "Wilma is sitting in the kitchen.", "Wilma is running in the kitchen."]


def _batch(ks, stories=None):
    stories = stories or [STORY] * len(ks)
    return {"texts": stories, "prefix_len": list(ks), "story_id": [f"s{i}" for i in range(len(ks))],
            "characters": torch.stack([named_characters(s) for s in stories])}


@pytest.fixture(scope="module")
def captioner():
    return SAGANetsCaptioner(gpt2="tiny")


def test_scene_tokens_are_added(captioner):
    tok = captioner.tokenizer
    assert [tok.convert_ids_to_tokens(i) for i in captioner.scene_ids] == SCENE_TOKENS
    assert captioner.gpt2.get_input_embeddings().num_embeddings == len(tok)


def test_serialized_prefix(captioner):
    s = captioner.scene_ids
    c = [captioner.caption_ids(t) for t in STORY]
    assert captioner.prefix_ids([]) == [s[0]]
    assert captioner.prefix_ids(STORY[:2]) == [s[0], *c[0], s[1], *c[1], s[2]]
    blind = SAGANetsCaptioner(gpt2="tiny", ignore_prefix=True)
    assert blind.prefix_ids(STORY[:2]) == [s[2]]


def test_loss_covers_only_the_target_caption_and_eos(captioner):
    ids, mask, labels = captioner.inputs(_batch([0, 2]))
    eos = captioner.tokenizer.eos_token_id
    for row, k in enumerate([0, 2]):
        target = captioner.caption_ids(STORY[k]) + [eos]
        start = len(captioner.prefix_ids(STORY[:k]))
        assert labels[row, start:start + len(target)].tolist() == target
        assert (labels[row, :start] == -100).all() and (labels[row, start + len(target):] == -100).all()
        assert mask[row].sum().item() == start + len(target)
        assert ids[row, start:start + len(target)].tolist() == target


def test_overfit_batch_then_continue_the_story():
    torch.manual_seed(0)
    model = SAGANetsCaptioner(gpt2="tiny", lr=3e-3)
    batch = _batch([0, 1, 2, 3, 4])
    optimizer = model.configure_optimizers()
    losses = []
    for _ in range(80):
        loss, _, _ = model.forward_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]
    model.eval()
    assert model.next_captions([STORY[:k] for k in range(5)]) == STORY  # left-padded batch of prefixes
    assert model.continue_story(STORY[:1], 3) == STORY[1:4]
    assert model.continue_story([], 2) == STORY[:2]
    assert len(model.continue_story(STORY, 3)) == 3  # past the trained prefix length the prefix slides


def test_continuations_have_words_and_name_each_character_once():
    """Trained to end a story with an empty caption and to repeat a name, greedy decoding would
    write both; the captioner writes a caption with words and the name once."""
    torch.manual_seed(0)
    model = SAGANetsCaptioner(gpt2="tiny", lr=3e-3)
    stories = [["Barney is in the quarry.", "", "", "", ""],
               ["Fred is in the yard.", "Wilma and Wilma are talking in the yard.", "", "", ""]]
    batch = {"texts": stories, "prefix_len": [1, 1]}
    optimizer = model.configure_optimizers()
    for _ in range(80):
        loss, _, _ = model.forward_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    prefixes = [story[:1] for story in stories]
    ids = torch.tensor([model.prefix_ids(p) for p in prefixes])  # the same length: no padding
    plain = model.gpt2.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False,
                                eos_token_id=model.tokenizer.eos_token_id, pad_token_id=model.tokenizer.pad_token_id)
    plain = [t.strip() for t in model.tokenizer.batch_decode(plain[:, ids.shape[1]:], skip_special_tokens=True)]
    assert plain == ["", "Wilma and Wilma are talking in the yard."]  # what it learned
    empty, repeated = model.next_captions(prefixes)
    assert empty.strip(" .")
    assert repeated.casefold().count("wilma") == 1 and repeated.startswith("Wilma and ")


def test_continue_story_reads_at_most_the_prefix_length_it_was_trained_with(captioner, monkeypatch):
    seen = []
    monkeypatch.setattr(captioner, "next_captions", lambda prefixes: seen.extend(prefixes) or ["Next."] * len(prefixes))
    assert captioner.continue_story(STORY[:2], 4) == ["Next."] * 4
    assert seen == [STORY[:2], STORY[:2] + ["Next."], [STORY[1], "Next.", "Next."], ["Next."] * 3]  # K = 3
    seen.clear()
    captioner.hparams.max_prefix_len = 0  # reads nothing: the prefix-blind ablation's view
    captioner.continue_story(STORY[:2], 1)
    captioner.hparams.max_prefix_len = 3
    assert seen == [[]]
    with pytest.raises(VisionTalesError, match="max_prefix_len must be within 0..4, got 5"):
        SAGANetsCaptioner(gpt2="tiny", max_prefix_len=5)


def test_lora_trains_adapters_and_scene_tokens_only():
    torch.manual_seed(0)
    model = SAGANetsCaptioner(gpt2="tiny", lora_rank=4, lora_alpha=8, lr=1e-2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "trainable_tokens" in n for n in trainable)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    batch = _batch([0, 1, 2])
    optimizer = model.configure_optimizers()
    first = None
    for _ in range(30):
        loss, _, _ = model.forward_loss(batch)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.9 * first
    assert all(torch.equal(p, frozen_before[n]) for n, p in model.named_parameters() if n in frozen_before)


def test_named_characters():
    found = named_characters(["Fred and Mr. Slate are talking.", "slate and BETTY", "Nobody here.", "Dinosaur"])
    assert found.tolist() == [[0, 1, 0, 0, 0, 0, 1], [0, 0, 1, 0, 0, 0, 1], [0] * 7, [0] * 7]


def test_prefix_lifts_character_f1_over_a_prefix_blind_captioner(tmp_path):
    """The acceptance comparison: same data, same steps, the prefix read or ignored (after 6
    epochs the prefix-reading run measured 0.41 with two threads but 0.25 with one, against 0.16:
    too close; hence 20)."""
    from conftest import tiny_overrides
    from lightning.pytorch.cli import LightningCLI

    from data_modules.synthetic import write_synthetic_flintstones

    root = tmp_path / "flintstones"
    write_synthetic_flintstones(root, seed=0, episodes=80)
    char_f1 = {}
    for ignore in (False, True):
        cli = LightningCLI(run=False, subclass_mode_model=True, subclass_mode_data=True, args=[
            *tiny_overrides("sagan_captioner.yaml", root, tmp_path, max_epochs=20, limit_val_batches=0,
                            enable_model_summary="false"), "--model.init_args.ignore_prefix", str(ignore).lower()])
        cli.trainer.fit(cli.model, cli.datamodule)
        (metrics,) = cli.trainer.test(cli.model, cli.datamodule, verbose=False)
        char_f1[ignore] = metrics["test/char_f1"]
    assert char_f1[False] > char_f1[True] + 0.1, char_f1
