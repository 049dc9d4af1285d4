import numpy as np
import pytest
import torch

from visiontales.backbones import fingerprint, load_clip, load_gpt2
from visiontales.errors import VisionTalesError


def test_tiny_gpt2_is_saved_and_loaded_like_hub_weights(visiontales_home, tiny_gpt2):
    model, tokenizer = tiny_gpt2
    saved = list((visiontales_home / "backbones").glob("tiny-gpt2-*"))
    assert len(saved) == 1
    assert {"config.json", "tokenizer.json"} <= {p.name for p in saved[0].iterdir()}
    # the trained byte-level BPE round-trips the synthetic stories
    text = " we went to the beach today . there was a dog at the beach ."
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) < 20  # whole words, not bytes
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    again, _ = load_gpt2(str(saved[0]))  # the same directory, given as a local path
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))


def test_tiny_clip_round_trip_through_local_dir(visiontales_home):
    model = load_clip("tiny")
    directory = next((visiontales_home / "backbones").glob("tiny-clip-*"))
    assert (directory / "open_clip_config.json").is_file()
    again = load_clip(str(directory))
    assert fingerprint(model) == fingerprint(again)
    images = torch.randn(2, 3, 224, 224)
    assert torch.allclose(model.encode_image(images), again.encode_image(images))
    assert model.visual.preprocess_cfg["size"] in ((224, 224), 224)


def test_fingerprint_follows_the_weights(visiontales_home):
    model = load_clip("tiny")
    before = fingerprint(model)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert fingerprint(model) != before


@pytest.mark.parametrize(("loader", "spec", "message"), [
    (load_gpt2, "no-such-org/no-such-gpt2", "GPT-2 weights 'no-such-org/no-such-gpt2' could not be loaded"),
    (load_gpt2, "./not/a/dir", "./not/a/dir: GPT-2 directory not found"),
    (load_clip, "ViT-B-32", "CLIP spec 'ViT-B-32' is neither"),
    (load_clip, "ViT-B-32-quickgelu@openai", "CLIP weights 'ViT-B-32-quickgelu@openai' could not be loaded"),
])
def test_missing_weights_say_which_in_one_line(loader, spec, message):
    with pytest.raises(VisionTalesError, match=message) as info:
        loader(spec)
    assert "\n" not in str(info.value)


def test_clip_text_encoder_is_the_clip_text_tower_weight_for_weight(visiontales_home):
    """The SD text encoder built from a CLIP gives the hidden states open_clip's own text tower
    computes (before pooling), for real captions padded as the SD tokenizer pads them."""
    import open_clip

    from visiontales.backbones import clip_text_encoder

    clip = load_clip("tiny")
    with torch.no_grad():
        torch.nn.init.normal_(clip.ln_final.weight)  # a trained-looking final norm, so a missed copy shows
    encoder = clip_text_encoder(clip)
    ids = open_clip.tokenize(["Fred and Barney are talking in the quarry.", "the yard is empty ."])
    with torch.no_grad():
        x = clip.token_embedding(ids) + clip.positional_embedding
        ours = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
        theirs = encoder(input_ids=ids).last_hidden_state
    assert theirs.shape == (2, 77, 64)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert encoder.config.hidden_act == "gelu" and encoder.config.num_hidden_layers == 2


def test_the_general_domain_describes_people_and_never_names_a_main_character():
    from data_modules.synthetic import CHARACTERS
    from visiontales import bootstrap
    from visiontales.backbones import GENERAL_DOMAIN

    pairs = bootstrap.general_domain(seed=7, scale=0.1)
    assert len(pairs) == sum(round(n * 0.1) for n in GENERAL_DOMAIN.values())
    captions = [caption for _, caption in pairs]
    people = [c for c in captions if c.split(" are ")[0].split(" is ")[0] in bootstrap.PEOPLE]
    assert len(people) == round(GENERAL_DOMAIN["people"] * 0.1)
    assert not any(name.lower() in c.lower() for c in captions for name in CHARACTERS)
    # a frame of passers-by differs from its empty setting where the people stand
    image, caption = bootstrap.passers_by(1, seed=3)[0]
    setting = caption.split(" in the ")[1].removesuffix(" .")
    empty = next(img for img, c in bootstrap.empty_settings(50, seed=0) if c == f"the {setting} is empty .")
    assert (np.asarray(image) != np.asarray(empty)).any(axis=2).mean() > 0.02


def test_the_vae_decoder_fine_tune_trains_the_decoder_alone_and_reconstructs_better():
    import torch.nn.functional as F
    from diffusers import AutoencoderKL

    from visiontales import bootstrap
    from visiontales.backbones import DOMAIN_VAE

    torch.manual_seed(0)
    vae = AutoencoderKL(**DOMAIN_VAE).requires_grad_(False)
    frames = bootstrap.sd_pixels(bootstrap.flintstones_samples(80, seed=98))
    held_out = bootstrap.sd_pixels(bootstrap.flintstones_samples(16, seed=99))

    def l1() -> float:
        with torch.no_grad():
            return F.l1_loss(vae.decode(vae.encode(held_out).latent_dist.mean).sample, held_out).item()

    before, weights = l1(), {name: t.clone() for name, t in vae.state_dict().items()}
    assert len(bootstrap.finetune_vae_decoder(vae, frames, steps=20)) == 20
    assert l1() < 0.8 * before  # measured: 0.538 -> 0.374
    changed = {name.split(".")[0] for name, t in vae.state_dict().items() if not torch.equal(t, weights[name])}
    assert changed == {"decoder", "post_quant_conv"}  # the encoder, and so the latents, stay as they were
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
