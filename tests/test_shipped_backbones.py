"""The tiny-domain backbones that ship with the project (visiontales/weights): small, trained from
the recipe the code names, installed in seconds with the quality recorded when they were packed;
and (`make check-rebuild`, run by CI after `make test`) a rebuild from scratch reaches that quality."""

from __future__ import annotations

import pytest

from visiontales import bootstrap
from visiontales.bootstrap import (
    SHIPPED,
    SHIPPED_FILES,
    build_domain_backbones,
    quality,
    shipped_manifest,
)

HIGHER_IS_BETTER = {"retrieval_top1", "vae_psnr"}


def worse_by(measured: dict, recorded: dict) -> dict[str, float]:
    """How much worse each measure is than recorded: dB for PSNR, points for retrieval, relative
    for perplexity, posterior noise and loss (negative: better)."""
    out = {}
    for kind, values in recorded.items():
        for name, value in values.items():
            got = measured[kind][name]
            out[name] = value - got if name in HIGHER_IS_BETTER else got / value - 1
    return out


def test_shipped_weights_fit_in_20_mb_and_follow_the_code_recipe():
    files = list(SHIPPED.rglob("*.safetensors"))
    assert {f.relative_to(SHIPPED).as_posix() for f in SHIPPED.rglob("*") if f.is_file()} \
        == {"manifest.json"} | {f"{kind}/{name}" for kind, names in SHIPPED_FILES.items() for name in names}
    assert sum(f.stat().st_size for f in files) <= 20 * 2**20
    stale = [kind for kind in SHIPPED_FILES if not bootstrap.shipped_matches(kind)]
    assert not stale, f"the recipe of {stale} changed: repack with `visiontales bootstrap --rebuild --pack`"



def test_a_schedule_change_renames_only_the_backbones_it_trains(monkeypatch):
    from visiontales import backbones

    def names():
        return {kind: backbones.domain_dir(kind).name for kind in SHIPPED_FILES}

    before = names()
    monkeypatch.setitem(backbones.DOMAIN_SCHEDULE, "unet_caption_dropout", 0.2)
    after_unet = names()
    assert [k for k in before if before[k] != after_unet[k]] == ["sd"]
    # SD's text encoder is the CLIP's text tower: a CLIP change retrains both
    monkeypatch.setitem(backbones.DOMAIN_SCHEDULE, "clip_steps", 401)
    after_clip = names()
    assert [k for k in before if after_unet[k] != after_clip[k]] == ["clip", "sd"]
    read = {key for keys in backbones.DOMAIN_SCHEDULE_KEYS.values() for key in keys}
    assert set(backbones.DOMAIN_SCHEDULE) == read

def test_shipped_backbones_install_in_place_with_their_recorded_quality():
    from visiontales.backbones import domain_dir, load_clip, load_gpt2, load_stable_diffusion

    directories = build_domain_backbones()
    assert directories == {kind: domain_dir(kind) for kind in SHIPPED_FILES}
    worse = worse_by(quality(directories), shipped_manifest()["quality"])
    # fp16 storage costs next to nothing
    assert worse["vae_psnr"] < 0.1 and worse["retrieval_top1"] <= 0.02, worse
    assert worse["perplexity"] < 0.01 and worse["unet_loss"] < 0.02 and worse["vae_posterior_noise"] < 0.02, worse
    assert worse["unet_uncond_loss"] < 0.02, worse
    model, _ = load_gpt2("tiny-domain")
    assert next(model.parameters()).dtype.is_floating_point and next(model.parameters()).element_size() == 4
    assert load_clip("tiny-domain").visual is not None and load_stable_diffusion("tiny-domain").vae_factor == 4


# How much worse than recorded a rebuild from scratch may be. Rebuilds of the same recipe on
# 2-core machines measured VAE PSNR 25.18 to 26.01 dB (shipped: 25.66; 26.02 -> 27.46 with the decoder
# fine-tune that followed, shipped 27.27), and a posterior noise 10%
# and 17% above the shipped one (0.00547 and 0.00578 against 0.00496; it is far below 1 either way).
REBUILD_TOLERANCE = {"vae_psnr": 1.0, "retrieval_top1": 0.05, "perplexity": 0.05, "unet_loss": 0.1,
                     "unet_uncond_loss": 0.1, "vae_posterior_noise": 0.5}


@pytest.mark.rebuild
def test_a_rebuild_from_scratch_reaches_the_shipped_quality(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONTALES_HOME", str(tmp_path))
    worse = worse_by(quality(build_domain_backbones(rebuild=True)), shipped_manifest()["quality"])
    assert set(worse) == set(REBUILD_TOLERANCE)
    print("worse than shipped:", worse)
    failed = {name: (round(value, 4), REBUILD_TOLERANCE[name]) for name, value in worse.items()
              if value > REBUILD_TOLERANCE[name]}
    assert not failed, f"worse than shipped by more than the tolerance (worse, tolerance): {failed}"
