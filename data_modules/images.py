"""Photos as they come from Flickr: opened the way training opens them, checked once, verdicts kept.

`upright_rgb` is the one way a photo is read (EXIF orientation applied, 8-bit RGB from any mode,
the content sniffed whatever the extension says). `check_images` decodes every photo fully, once,
the way training will (a truncated JPEG, a decompression bomb, an empty or non-image file is found
here, not in a DataLoader worker hours into an epoch), in worker processes with a progress bar, and
keeps each verdict under `$VISIONTALES_HOME/image-checks/`, keyed by the file's name, size and
modification time, so a second check or setup of the same folder takes seconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from collections import defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import PIL
from PIL import Image, ImageOps, UnidentifiedImageError

from visiontales.errors import UnreadableItem

LOG = logging.getLogger("data_modules")

# a verdict depends on Pillow (what it decodes) and on how we open a photo
VERDICTS_VERSION = f"upright-rgb-1/pillow-{PIL.__version__}"
PARALLEL_FROM = 64  # unchecked photos from which the check uses worker processes
SAVE_EVERY = 2000  # verdicts between saves, so an interrupted first check keeps its work


def upright_rgb(img: Image.Image) -> Image.Image:
    """The picture as shown, in 8-bit RGB from any mode; `img` is decoded and turned in place.

    The EXIF orientation is applied (`ImageOps.exif_transpose`); an EXIF block Pillow cannot
    handle leaves the pixels as stored. Palette transparency goes through RGBA (same colours, no
    warning); 16-bit grey is scaled to 8 bits rather than clipped. An animated GIF gives its first
    frame.
    """
    img.load()  # decode errors are the caller's to report, not swallowed as EXIF errors below
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except Exception:  # malformed EXIF (many kinds); rewriting it can fail after the pixels turned
        pass
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    elif img.mode.startswith("I"):
        img = img.convert("I").point(lambda v: v / 256, "L")
    return img.convert("RGB")


def image_problem(path: Path) -> str:
    """Why the photo cannot be used ("" when it can): opened and decoded as `load_image` will."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with Image.open(path) as img:
            upright_rgb(img)
        return ""
    except Image.DecompressionBombError as e:
        return f"decompression bomb ({str(e).split(',')[0]})"
    except UnidentifiedImageError:
        return "not an image Pillow can identify"
    except Exception as e:  # Pillow raises many kinds on damaged data (OSError, SyntaxError, struct.error, ...)
        return f"cannot decode ({type(e).__name__}: {e})"


def load_image(path: Path, transform: Callable[[Image.Image], Any]) -> Any:
    """One photo through `transform` after `upright_rgb`; a file that fails to decode (changed
    since it was checked) raises `UnreadableItem` naming itself."""
    try:
        with Image.open(path) as img:
            return transform(upright_rgb(img))
    except Exception as e:
        raise UnreadableItem(f"{path}: cannot decode image ({e})") from e


class Verdicts:
    """The verdicts of one folder's photos: file name -> (size, mtime_ns, problem)."""

    def __init__(self, folder: Path) -> None:
        from visiontales.backbones import home

        folder = folder.resolve()
        self.path = home() / "image-checks" / f"{hashlib.sha1(str(folder).encode()).hexdigest()[:20]}.json"
        self.folder = str(folder)
        self.files: dict[str, list] = {}
        try:
            stored = json.loads(self.path.read_text())
            if stored.get("version") == VERDICTS_VERSION and stored.get("folder") == self.folder:
                self.files = stored["files"]
        except (OSError, ValueError, KeyError, AttributeError):
            pass  # none yet, or unreadable: checked again

    def get(self, path: Path, stat: os.stat_result) -> str | None:
        known = self.files.get(path.name)
        if known and known[0] == stat.st_size and known[1] == stat.st_mtime_ns:
            return known[2]
        return None

    def put(self, path: Path, stat: os.stat_result, problem: str) -> None:
        self.files[path.name] = [stat.st_size, stat.st_mtime_ns, problem]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"version": VERDICTS_VERSION, "folder": self.folder, "files": self.files}))
        os.replace(tmp, self.path)  # atomic: a concurrent reader sees the old or the new verdicts


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="photo", disable=None, dynamic_ncols=True)  # None: off unless a TTY


def check_images(paths: Mapping[str, Path], workers: int | None = None,
                 desc: str = "checking photos") -> dict[str, str]:
    """id -> problem ("" when readable) for every photo in `paths`, decoding only those without a
    verdict for their current size and mtime. `workers`: processes for the unchecked ones (None:
    up to 16, when there are at least PARALLEL_FROM of them; 0: in this process)."""
    by_folder: dict[Path, dict[str, Path]] = defaultdict(dict)
    for key, path in paths.items():
        by_folder[path.parent][key] = path
    problems: dict[str, str] = {}
    for folder, files in by_folder.items():
        verdicts = Verdicts(folder)
        todo: list[tuple[str, Path, os.stat_result]] = []
        for key, path in files.items():
            stat = path.stat()
            known = verdicts.get(path, stat)
            if known is None:
                todo.append((key, path, stat))
            else:
                problems[key] = known
        if not todo:
            continue
        n = workers if workers is not None else (min(16, os.cpu_count() or 1) if len(todo) >= PARALLEL_FROM else 0)
        LOG.info("%s: checking %d of %d photos%s", folder, len(todo), len(files), f" in {n} processes" if n else "")
        with _progress(len(todo), desc) as bar:
            if n:
                # spawned, not forked: the parent may hold threads (torch) that a fork would copy mid-lock
                with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
                    results = pool.map(image_problem, [p for _, p, _ in todo], chunksize=16)
                    _record(todo, results, problems, verdicts, bar)
            else:
                _record(todo, map(image_problem, [p for _, p, _ in todo]), problems, verdicts, bar)
        verdicts.save()
    return problems


def _record(todo, results, problems: dict[str, str], verdicts: Verdicts, bar) -> None:
    for i, ((key, path, stat), problem) in enumerate(zip(todo, results, strict=True), 1):
        problems[key] = problem
        verdicts.put(path, stat, problem)
        bar.update()
        if i % SAVE_EVERY == 0:
            verdicts.save()
