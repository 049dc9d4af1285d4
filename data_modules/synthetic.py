"""Synthetic stand-ins for the papers' datasets, written in the real on-disk layouts.

The loaders never know they are reading synthetic data: every file here follows the datasets'
published layouts (the reference loaders named below). The pictures carry what the captions say (a scene drawn as the
background, one object per photo), so a model that looks at the images can beat one that does not.
A few defects are written on purpose so that the loaders' filters are exercised.

VIST (Huang et al. 2016), layout of lichengunc/vist_api:

    <root>/annotations/sis/{train,val,test}.story-in-sequence.json
    <root>/images/{train,val,test}/<photo_flickr_id>.jpg   (a few .png)

FlintstonesSV (Gupta et al. 2018; the story split of StoryGAN / StoryDALL-E / AR-LDM):

    <root>/flintstones_annotations_v1-0.json      [{globalID, description, setting, characters}]
    <root>/train-val-test_split.json              {"train": [globalID, ...], "val": [...], "test": [...]}
    <root>/following_cache4.pkl                   {globalID: [next 4 globalIDs]}   (optional)
    <root>/labels.pkl                             {globalID: 7-dim multi-hot}      (optional)
    <root>/video_frames_sampled/<globalID>.npy    uint8 (5, 128, 128, 3)
"""

from __future__ import annotations

import json
import pickle
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from data_modules.flintstones_format import FRAMES, main_character_labels, rebuild_following_cache
from visiontales.errors import VisionTalesError
from visiontales.vocabulary import MAIN_CHARACTERS

IMAGE_SIZE = (256, 192)  # (W, H): 4:3 like most Flickr photos; CLIP centre-crops the middle

# scene -> (sky colour, ground colour, horizon as a fraction of the height)
SCENES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], float]] = {
    "beach": ((120, 190, 250), (238, 214, 150), 0.55),
    "snowy street": ((170, 175, 185), (250, 250, 252), 0.60),
    "party": ((120, 60, 140), (140, 90, 50), 0.70),
    "park": ((150, 210, 250), (70, 170, 70), 0.50),
    "city at night": ((15, 20, 60), (40, 40, 45), 0.75),
    "mountain lake": ((190, 220, 245), (40, 90, 170), 0.60),
}
OBJECTS = ("dog", "car", "cake", "boat", "snowman", "kite")

OPENING_TEMPLATES = (
    "we went to the {scene} today .",
    "our family spent the day at the {scene} .",
    "this is the {scene} we visited .",
)
MIDDLE_TEMPLATES = (
    "there was a {obj} at the {scene} .",
    "we saw a {obj} near the {scene} .",
    "the {obj} was the best part of the day .",
    "everyone loved the {obj} .",
)
CLOSING_TEMPLATES = (
    "at the end we said goodbye to the {obj} .",
    "it was a great day with the {obj} .",
)

PHOTOS_PER_ALBUM = 10  # two disjoint five-photo stories fit in one album
SPLIT_FRACTIONS = (("train", 0.8), ("val", 0.1), ("test", 0.1))


def _sky_and_ground(draw: ImageDraw.ImageDraw, scene: str, rng: random.Random) -> None:
    w, h = IMAGE_SIZE
    sky, ground, horizon = SCENES[scene]
    y = int(h * horizon)
    draw.rectangle([0, 0, w, y], fill=sky)
    draw.rectangle([0, y, w, h], fill=ground)
    if scene == "beach":
        draw.rectangle([0, y - 18, w, y], fill=(30, 110, 200))  # the sea
        draw.ellipse([w - 60, 10, w - 25, 45], fill=(255, 220, 60))  # the sun
    elif scene == "snowy street":
        for x in range(0, w, 64):
            draw.rectangle([x + 4, y - 50, x + 54, y], fill=(120, 80, 70))
        for _ in range(40):
            fx, fy = rng.randrange(w), rng.randrange(h)
            draw.ellipse([fx, fy, fx + 3, fy + 3], fill=(255, 255, 255))
    elif scene == "party":
        for x in range(0, w, 32):
            draw.polygon([(x, 0), (x + 32, 0), (x + 16, 24)], fill=(250, 200, 40))
    elif scene == "park":
        for x in (20, w - 50):
            draw.rectangle([x + 10, y - 40, x + 20, y], fill=(100, 60, 30))
            draw.ellipse([x - 10, y - 80, x + 40, y - 30], fill=(30, 120, 40))
    elif scene == "city at night":
        for x in range(0, w, 40):
            top = y - 40 - (x * 37) % 60
            draw.rectangle([x, top, x + 34, y], fill=(50, 50, 70))
            for wy in range(top + 6, y - 6, 12):
                draw.rectangle([x + 6, wy, x + 12, wy + 5], fill=(250, 230, 120))
        draw.ellipse([20, 10, 45, 35], fill=(240, 240, 210))
    elif scene == "mountain lake":
        for x0 in (-40, 80, 180):
            draw.polygon([(x0, y), (x0 + 70, y - 80), (x0 + 140, y)], fill=(110, 110, 120))
            draw.polygon([(x0 + 55, y - 62), (x0 + 70, y - 80), (x0 + 85, y - 62)], fill=(255, 255, 255))


def _object(draw: ImageDraw.ImageDraw, obj: str, cx: int, cy: int, s: float) -> None:
    """Draw `obj` centred at (cx, cy) with scale s (about 1.0 -> 90 px wide)."""

    def box(x0, y0, x1, y1):
        return [cx + x0 * s, cy + y0 * s, cx + x1 * s, cy + y1 * s]

    def pts(*xy):
        return [(cx + x * s, cy + y * s) for x, y in xy]

    if obj == "dog":
        draw.ellipse(box(-40, -15, 30, 20), fill=(140, 90, 40))
        draw.ellipse(box(20, -40, 50, -5), fill=(140, 90, 40))
        for lx in (-32, -15, 5, 20):
            draw.rectangle(box(lx, 10, lx + 8, 40), fill=(110, 70, 30))
        draw.ellipse(box(36, -30, 42, -24), fill=(0, 0, 0))
    elif obj == "car":
        draw.rectangle(box(-45, -10, 45, 20), fill=(210, 30, 30))
        draw.rectangle(box(-25, -32, 25, -10), fill=(210, 30, 30))
        draw.rectangle(box(-20, -28, 20, -12), fill=(180, 220, 250))
        for wx in (-30, 30):
            draw.ellipse(box(wx - 12, 10, wx + 12, 34), fill=(20, 20, 20))
    elif obj == "cake":
        draw.rectangle(box(-40, 0, 40, 35), fill=(240, 150, 190))
        draw.rectangle(box(-28, -25, 28, 0), fill=(255, 240, 245))
        for kx in (-15, 0, 15):
            draw.rectangle(box(kx - 2, -42, kx + 2, -25), fill=(60, 120, 250))
            draw.ellipse(box(kx - 3, -50, kx + 3, -42), fill=(255, 160, 0))
    elif obj == "boat":
        draw.polygon(pts((-45, 10), (45, 10), (30, 35), (-30, 35)), fill=(250, 250, 250))
        draw.rectangle(box(-2, -45, 2, 10), fill=(90, 60, 30))
        draw.polygon(pts((2, -45), (38, 5), (2, 5)), fill=(250, 120, 30))
    elif obj == "snowman":
        draw.ellipse(box(-30, 0, 30, 45), fill=(255, 255, 255), outline=(80, 80, 80))
        draw.ellipse(box(-20, -35, 20, 5), fill=(255, 255, 255), outline=(80, 80, 80))
        draw.rectangle(box(-18, -50, 18, -32), fill=(20, 20, 20))
        draw.polygon(pts((0, -18), (18, -14), (0, -10)), fill=(250, 130, 0))
    elif obj == "kite":
        draw.polygon(pts((0, -45), (30, 0), (0, 40), (-30, 0)), fill=(40, 200, 220))
        draw.line(pts((0, 40), (-20, 80)), fill=(30, 30, 30), width=2)
    else:
        raise ValueError(f"unknown object {obj!r}")


def draw_photo(scene: str, obj: str, rng: random.Random) -> Image.Image:
    """A picture of `obj` at `scene`, with small random jitter of position and size."""
    img = Image.new("RGB", IMAGE_SIZE)
    draw = ImageDraw.Draw(img)
    _sky_and_ground(draw, scene, rng)
    w, h = IMAGE_SIZE
    _object(draw, obj, w // 2 + rng.randint(-15, 15), int(h * 0.62) + rng.randint(-10, 10),
            rng.uniform(0.9, 1.2))
    return img


def story_sentences(scene: str, objects: list[str], rng: random.Random) -> list[str]:
    """One tokenised, lower-cased sentence per photo (VIST's `text` field style)."""
    sentences = [rng.choice(OPENING_TEMPLATES).format(scene=scene)]
    for obj in objects[1:-1]:
        sentences.append(rng.choice(MIDDLE_TEMPLATES).format(obj=obj, scene=scene))
    sentences.append(rng.choice(CLOSING_TEMPLATES).format(obj=objects[-1]))
    return sentences


def original_text(text: str) -> str:
    """Undo VIST's tokenisation for the `original_text` field: 'we went .' -> 'We went.'"""
    return text.replace(" .", ".").replace(" ,", ",").capitalize()


def tokenizer_corpus() -> list[str]:
    """Every sentence shape the synthetic datasets can produce, to train tiny tokenizers on."""
    sentences = []
    for scene in SCENES:
        for obj in OBJECTS:
            for template in OPENING_TEMPLATES + MIDDLE_TEMPLATES + CLOSING_TEMPLATES:
                text = template.format(scene=scene, obj=obj)
                sentences += [text, original_text(text)]
    for setting in SETTINGS:
        for action in ACTIONS:
            for a in CHARACTERS:
                sentences.append(flintstones_caption([a], action, setting))
                for b in CHARACTERS:
                    if a != b:
                        sentences.append(flintstones_caption([a, b], action, setting))
            sentences.append(flintstones_caption([NPC], action, setting))
    return sentences


# the real VIST's photos, as Flickr served them: sizes (W, H) and kinds (most JPEG)
REAL_PHOTO_SIZES = ((500, 375), (640, 480), (1024, 768), (1600, 1200), (2048, 1536), (375, 500))
REAL_PHOTO_KINDS = (("jpeg", 12), ("png", 2), ("gif", 1), ("bmp", 1), ("grayscale", 1), ("cmyk", 1), ("exif_rotated", 2))
EXIF_ORIENTATION = 0x0112


def save_real_photo(img: Image.Image, stem: Path, rng: random.Random) -> Path:
    """Save a photo as one of the real VIST's kinds and sizes (drawn with `rng`): JPEG, PNG, GIF,
    BMP, grayscale or CMYK JPEG, or a JPEG stored on its side with EXIF orientation 6 (what a phone
    held upright writes), which `ImageOps.exif_transpose` turns back upright. Returns its path."""
    img = img.resize(rng.choice(REAL_PHOTO_SIZES), Image.BICUBIC)
    kind = rng.choices([k for k, _ in REAL_PHOTO_KINDS], weights=[w for _, w in REAL_PHOTO_KINDS])[0]
    ext = {"png": "png", "gif": "gif", "bmp": "bmp"}.get(kind, "jpg")
    path = stem.with_suffix(f".{ext}")
    if kind == "gif":
        img.convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    elif kind == "grayscale":
        img.convert("L").save(path, quality=90)
    elif kind == "cmyk":
        img.convert("CMYK").save(path, quality=90)
    elif kind == "exif_rotated":
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = 6  # "rotate 90 degrees clockwise to display"
        img.transpose(Image.Transpose.ROTATE_90).save(path, quality=90, exif=exif)
    else:
        img.save(path, **({"quality": 90} if ext == "jpg" else {}))
    return path


def write_synthetic_vist(out: str | Path, seed: int = 0, albums: int = 200,
                         photo_kinds: str = "plain") -> dict[str, int]:
    """Write a synthetic VIST in the real layout under `out`; return story counts per split.

    photo_kinds: "plain" (256x192 JPEGs, every seventh a PNG) or "real" (`save_real_photo`: the
    real set's sizes up to 2048x1536 and its kinds).

    Each album has one scene and PHOTOS_PER_ALBUM photos of objects at that scene. Each album
    gets two stories of five photos by two "workers"; in about half the albums both workers pick
    the same photo sequence (so evaluation sees several references for one sequence). Records are
    written in shuffled order, as the real files are not ordered by `worker_arranged_photo_order`.
    """
    if albums < 10:
        raise VisionTalesError(f"--albums must be at least 10 (one album per split at least), got {albums}")
    if photo_kinds not in ("plain", "real"):
        raise VisionTalesError(f"photo_kinds must be 'plain' or 'real', got {photo_kinds!r}")
    out = Path(out)
    rng = random.Random(seed)
    kinds = random.Random(seed + 1)  # sizes and kinds: the content stays that of the plain photos
    counts: dict[str, int] = {}
    album_ids = [str(10_000 + i) for i in range(albums)]
    start = 0
    for split, fraction in SPLIT_FRACTIONS:
        n = round(albums * fraction) if split != "test" else albums - start
        split_albums = album_ids[start:start + n]
        start += n
        image_dir = out / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        images, album_records, annotations = [], [], []
        for a_index, album_id in enumerate(split_albums):
            scene = rng.choice(list(SCENES))
            photo_ids = [f"{album_id}{p:03d}" for p in range(PHOTOS_PER_ALBUM)]
            objects = [rng.choice(OBJECTS) for _ in photo_ids]
            # the deliberate defects: train albums 0, 1, 2, each in the first three photos of its
            # first story (so every sequence mode drops it): photo 0 missing, photo 1 unreadable,
            # sentence 2 empty
            defect = split == "train" and a_index < 3
            for p, (photo_id, obj) in enumerate(zip(photo_ids, objects, strict=True)):
                path = image_dir / f"{photo_id}.{'png' if p % 7 == 6 else 'jpg'}"
                if defect and a_index == 0 and p == 0:
                    pass  # the annotation refers to it; the file is missing
                elif defect and a_index == 1 and p == 1:
                    path.write_bytes(b"this is not an image")
                elif photo_kinds == "real":
                    save_real_photo(draw_photo(scene, obj, rng), path.with_suffix(""), kinds)
                else:
                    draw_photo(scene, obj, rng).save(path)
                images.append({"id": photo_id, "album_id": album_id, "datetaken": "2016-01-01 12:00:00",
                               "title": f"{obj} {p}", "tags": f"{scene} {obj}", "url_o": "",
                               "secret": "0", "license": "5", "media": "photo"})
            album_records.append({"id": album_id, "title": scene, "description": f"a day at the {scene}",
                                  "vist_label": scene.replace(" ", "_"), "photos": len(photo_ids),
                                  "owner": "synthetic"})
            first = list(range(5))
            same_sequence = not defect and rng.random() < 0.5
            second = first if same_sequence else sorted(rng.sample(range(PHOTOS_PER_ALBUM), 5))
            if defect:  # a disjoint second story, so each defect drops exactly one story's sequences
                second = list(range(5, PHOTOS_PER_ALBUM))
            for worker, picks in enumerate((first, second)):
                story_id = f"{album_id}{worker}"
                sentences = story_sentences(scene, [objects[p] for p in picks], rng)
                if defect and a_index == 2 and worker == 0:
                    sentences[2] = ""
                for order, (p, text) in enumerate(zip(picks, sentences, strict=True)):
                    annotations.append([{
                        "original_text": original_text(text), "album_id": album_id,
                        "photo_flickr_id": photo_ids[p], "setting": "first-2-pick-and-tell",
                        "worker_id": f"SYNTHWORKER{worker}", "story_id": story_id,
                        "tier": "story-in-sequence", "worker_arranged_photo_order": order,
                        "text": text, "storylet_id": f"{story_id}{order}",
                    }])
        rng.shuffle(annotations)
        sis_dir = out / "annotations" / "sis"
        sis_dir.mkdir(parents=True, exist_ok=True)
        sis = {"info": {"description": "synthetic VIST written by visiontales", "seed": seed},
               "type": "story-in-sequence", "images": images, "albums": album_records,
               "annotations": annotations}
        (sis_dir / f"{split}.story-in-sequence.json").write_text(json.dumps(sis))
        counts[split] = 2 * len(split_albums)
    return counts


# ------------------------------------------------------------------------------ FlintstonesSV

# how the 7 main characters are drawn (in the order of the literature's labels):
# (body colour, hair colour, height, width); Dino is drawn as a dinosaur
CHARACTERS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int] | None, float, float]] = {
    "Wilma": ((245, 245, 245), (225, 70, 20), 0.95, 0.65),
    "Fred": ((235, 120, 30), (20, 20, 20), 1.0, 1.0),
    "Betty": ((60, 120, 225), (20, 20, 20), 0.9, 0.6),
    "Barney": ((140, 90, 45), (245, 200, 70), 0.72, 0.9),
    "Dino": ((150, 80, 205), None, 0.8, 1.1),
    "Pebbles": ((80, 185, 80), (230, 60, 30), 0.45, 0.5),
    "Mr Slate": ((105, 105, 120), None, 0.85, 0.55),
}
NPC = "policeman"  # a non-main character: annotated and drawn, never a label
SKIN = (250, 210, 170)
# setting -> (wall or sky colour, floor or ground colour, horizon fraction)
SETTINGS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], float]] = {
    "living room": ((225, 200, 160), (120, 80, 50), 0.68),
    "yard": ((140, 200, 245), (80, 170, 70), 0.6),
    "quarry": ((190, 120, 70), (215, 185, 130), 0.55),
    "car": ((150, 210, 250), (90, 90, 95), 0.72),
    "kitchen": ((245, 235, 160), (200, 200, 200), 0.7),
    "bowling alley": ((70, 40, 90), (200, 150, 90), 0.6),
}
ACTIONS = ("talking", "walking", "laughing", "sitting", "running")
FRAME_SIZE = 128
assert tuple(CHARACTERS) == MAIN_CHARACTERS
FLINTSTONES_SPLIT_FRACTIONS = (("train", 0.8), ("val", 0.1), ("test", 0.1))


def flintstones_caption(names: list[str], action: str, setting: str) -> str:
    """A FlintstonesSV-style description: 'Fred and Barney are talking in the quarry.'"""
    who = [n if n != NPC else f"a {NPC}" for n in names]
    subject = who[0] if len(who) == 1 else ", ".join(who[:-1]) + " and " + who[-1]
    verb = "is" if len(who) == 1 else "are"
    sentence = f"{subject} {verb} {action} in the {setting}."
    return sentence[0].upper() + sentence[1:]


def _draw_background(draw: ImageDraw.ImageDraw, setting: str) -> None:
    size = FRAME_SIZE
    top, bottom, horizon = SETTINGS[setting]
    y = int(size * horizon)
    draw.rectangle([0, 0, size, y], fill=top)
    draw.rectangle([0, y, size, size], fill=bottom)
    if setting == "living room":
        draw.rectangle([12, 14, 44, 40], fill=(170, 220, 250), outline=(90, 60, 30), width=2)
        draw.rounded_rectangle([70, y - 22, 122, y + 4], radius=6, fill=(150, 150, 140))
    elif setting == "yard":
        for x in range(0, size, 12):
            draw.rectangle([x, y - 20, x + 7, y], fill=(160, 110, 60))
    elif setting == "quarry":
        for x0, y0 in ((5, 20), (50, 8), (92, 26)):
            draw.ellipse([x0, y0, x0 + 34, y0 + 22], fill=(130, 130, 130))
    elif setting == "car":
        draw.rectangle([6, y - 34, 122, y - 6], fill=(150, 100, 50))
        for wx in (14, 96):
            draw.ellipse([wx, y - 14, wx + 20, y + 6], fill=(110, 110, 110))
    elif setting == "kitchen":
        for x in range(0, size, 16):
            draw.line([(x, 0), (x, y)], fill=(220, 205, 120))
        draw.rectangle([0, y - 18, size, y], fill=(140, 90, 50))
    elif setting == "bowling alley":
        for x in range(14, size, 26):
            draw.rectangle([x, y - 18, x + 6, y - 2], fill=(250, 250, 250))
            draw.ellipse([x, y - 24, x + 6, y - 17], fill=(250, 250, 250))


def draw_person(draw: ImageDraw.ImageDraw, look: tuple, cx: float, ground: float, phase: int, action: str) -> float:
    """A figure of `look` (body colour, hair colour or None, height, width) standing on `ground` at
    x = cx; `phase` (0..4) animates `action`. Returns the y of the top of its head."""
    body, hair, height, width = look
    h, w = 62 * height, 26 * width
    if action == "sitting":
        h *= 0.75
    if action == "laughing":
        ground -= 3 * (phase % 2)
    top = ground - h
    head = 10 * max(height, 0.7)
    draw.rectangle([cx - w / 2, top + 2 * head, cx + w / 2, ground - 6], fill=body)
    for leg in (-w / 4, w / 4):
        step = (phase % 2 * 2 - 1) * 3 if action in ("walking", "running") else 0
        draw.rectangle([cx + leg - 3 + step * (1 if leg < 0 else -1), ground - 8, cx + leg + 3, ground], fill=body)
    draw.ellipse([cx - head, top, cx + head, top + 2 * head], fill=SKIN)
    if hair is not None:
        draw.pieslice([cx - head, top - 3, cx + head, top + head], 180, 360, fill=hair)
    if action == "talking" and phase % 2:
        draw.ellipse([cx - 2, top + 1.4 * head, cx + 2, top + 1.7 * head], fill=(120, 20, 20))
    return top


def _draw_character(draw: ImageDraw.ImageDraw, name: str, cx: float, ground: float, phase: int, action: str) -> None:
    """One character standing on `ground` at x = cx: a person of the character's look with what
    tells it apart (Fred's tie and spots, Wilma's bun, ...); Dino is a dinosaur."""
    look = ((40, 50, 110), (30, 30, 60), 0.9, 0.6) if name == NPC else CHARACTERS[name]
    if name == "Dino":  # a long body, a long neck, a small head
        body, _, height, width = look
        h, w = 62 * height * (0.75 if action == "sitting" else 1), 26 * width
        ground -= 3 * (phase % 2) if action == "laughing" else 0
        top = ground - h
        draw.ellipse([cx - w, ground - h * 0.45, cx + w * 0.6, ground], fill=body)
        draw.rectangle([cx + w * 0.3, top + 8, cx + w * 0.55, ground - h * 0.3], fill=body)
        draw.ellipse([cx + w * 0.2, top, cx + w * 0.9, top + 12], fill=body)
        return
    top = draw_person(draw, look, cx, ground, phase, action)
    head = 10 * max(look[2], 0.7)
    if name == "Fred":
        draw.polygon([(cx - 3, top + 2 * head), (cx + 3, top + 2 * head), (cx, top + 2 * head + 8)], fill=(40, 90, 220))
        for dx, dy in ((-6, 14), (5, 22), (-3, 32)):
            draw.ellipse([cx + dx - 2, top + 2 * head + dy - 2, cx + dx + 2, top + 2 * head + dy + 2], fill=(0, 0, 0))
    if name == "Mr Slate":
        draw.rectangle([cx - head + 2, top + head - 2, cx + head - 2, top + head + 2], outline=(0, 0, 0))
    if name == "Wilma":
        draw.ellipse([cx - 4, top - 8, cx + 4, top], fill=look[1])  # her bun
    if name == "Pebbles":
        draw.rectangle([cx - 5, top - 4, cx + 5, top - 2], fill=(250, 250, 250))  # the bone in her hair


def draw_clip(setting: str, names: list[str], action: str, rng: random.Random) -> np.ndarray:
    """Five 128x128 frames of `names` doing `action` in `setting`: uint8 (5, 128, 128, 3)."""
    ground = FRAME_SIZE * SETTINGS[setting][2] + 22
    slots = np.linspace(FRAME_SIZE / (len(names) + 1), FRAME_SIZE * len(names) / (len(names) + 1), len(names))
    speed = {"walking": 3.0, "running": 6.0}.get(action, 0.0) * rng.choice((-1, 1))
    frames = []
    for phase in range(FRAMES):
        img = Image.new("RGB", (FRAME_SIZE, FRAME_SIZE))
        draw = ImageDraw.Draw(img)
        _draw_background(draw, setting)
        for name, x in zip(names, slots, strict=True):
            _draw_character(draw, name, x + speed * (phase - 2), ground, phase, action)
        frames.append(np.asarray(img))
    return np.stack(frames)


def global_id(season: int, episode: int, start: int, end: int) -> str:
    return f"s_{season:02d}_e_{episode:02d}_shot_{start:06d}_{end:06d}"


# The synthetic FlintstonesSV's deliberate defects: episode -> defect of its middle clip (each in
# its own train episode, so each breaks exactly the five stories that contain that clip); plus one
# clip the split file names and the annotations lack, alone in an episode of its own.
FLINTSTONES_DEFECTS = {1: "missing_frames", 2: "bad_frames", 3: "empty_caption"}


def write_synthetic_flintstones(out: str | Path, seed: int = 0, episodes: int = 80, shots: int = 14,
                                pickles: bool = True) -> dict[str, int]:
    """Write a synthetic FlintstonesSV in the real layout under `out`; return clips per split.

    An episode is a run of `shots` consecutive clips made of scenes of 3-6 shots; a scene has
    one setting and a cast of 1-3 characters, so consecutive captions share who and where.
    """
    if episodes < 10:
        raise VisionTalesError(f"--episodes must be at least 10 (one episode per split at least), got {episodes}")
    if shots < 9:
        raise VisionTalesError(f"shots must be at least 9 per episode, got {shots}")
    out = Path(out)
    rng = random.Random(seed)
    frames_dir = out / "video_frames_sampled"
    frames_dir.mkdir(parents=True, exist_ok=True)
    names = list(CHARACTERS)
    annotations, split_ids = [], {split: [] for split, _ in FLINTSTONES_SPLIT_FRACTIONS}
    n_train, n_val = round(episodes * 0.8), round(episodes * 0.1)
    for e in range(episodes):
        season, episode = 1 + e // 10, 1 + e % 10
        split = "train" if e < n_train else "val" if e < n_train + n_val else "test"
        start, shot, scene_left = 100, 0, 0
        setting, cast = "", []
        while shot < shots:
            if scene_left == 0:
                setting = rng.choice(list(SETTINGS))
                # every character equally likely: who is on screen must come from the story so far
                cast = rng.sample(names, rng.choice((1, 2, 2, 3)))
                scene_left = rng.randint(3, 6)
            present = cast if rng.random() < 0.7 or len(cast) == 1 else rng.sample(cast, len(cast) - 1)
            if rng.random() < 0.08:
                present = [*present, NPC]
            action = rng.choice(ACTIONS)
            end = start + rng.randint(40, 90)
            gid = global_id(season, episode, start, end)
            description = flintstones_caption(present, action, setting)
            entities = [{"entityLabel": rng.choice((n, n.lower(), f" {n.upper()} ")) if n != NPC else NPC,
                         "labelNPC": n if n != NPC else "police officer"} for n in present]
            defect = FLINTSTONES_DEFECTS.get(e) if shot == shots // 2 else None
            if defect == "empty_caption":
                description = ""
            frames = draw_clip(setting, present, action, rng)
            if defect == "bad_frames":
                frames = frames[:4]  # four frames instead of five
            if defect != "missing_frames":
                np.save(frames_dir / f"{gid}.npy", frames)
            annotations.append({"globalID": gid, "description": description, "setting": setting,
                                "characters": entities, "objects": []})
            split_ids[split].append(gid)
            start, shot, scene_left = end + 1, shot + 1, scene_left - 1
    # a clip the split file names that the annotations do not have (alone in its episode)
    split_ids["train"].append(global_id(9, 99, 0, 50))
    rng.shuffle(annotations)
    (out / "flintstones_annotations_v1-0.json").write_text(json.dumps(annotations))
    (out / "train-val-test_split.json").write_text(json.dumps(split_ids))
    if pickles:
        followings = rebuild_following_cache([c for ids in split_ids.values() for c in ids])
        with open(out / "following_cache4.pkl", "wb") as f:
            pickle.dump(followings, f)
        with open(out / "labels.pkl", "wb") as f:
            pickle.dump({a["globalID"]: main_character_labels(a["characters"]) for a in annotations}, f)
    return {split: len(ids) for split, ids in split_ids.items()}


SYNTHETIC_WRITERS: dict[str, Callable[..., dict[str, int]]] = {
    "vist": write_synthetic_vist, "flintstones": write_synthetic_flintstones}
