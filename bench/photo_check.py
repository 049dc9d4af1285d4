"""How long `data check` takes over photo folders of the real VIST's kind and size:

- the first check's rate, in worker processes against one process, on photos of a real size
  (1024 x 768 JPEGs, where decoding is the work);
- the second check (verdicts read back) against the first, on a folder of the real set's
  ~200k photos (small JPEGs, so the folder is quick to write; the second check reads no pixels,
  so its time does not depend on their size).

    python bench/photo_check.py [--photos 200000] [--real 1500]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from PIL import Image
from results import record


def write(folder: Path, n: int, size: tuple[int, int]) -> dict[str, Path]:
    folder.mkdir()
    img = Image.effect_mandelbrot(size, (-2, -1.5, 1, 1.5), 50).convert("RGB")  # detail, like a photo
    paths = {}
    for i in range(n):
        paths[str(i)] = folder / f"{i}.jpg"
        img.save(paths[str(i)], quality=85)
    return paths


def timed(check, paths, **options) -> float:
    start = time.perf_counter()
    problems = check(paths, **options)
    assert len(problems) == len(paths) and not any(problems.values())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=200_000, help="photos in the folder checked twice")
    parser.add_argument("--real", type=int, default=1500, help="real-size photos for the first check's rate")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        homes = iter(range(10))
        os.environ["VISIONTALES_HOME"] = str(Path(tmp) / "home")
        from data_modules.images import check_images

        def fresh_home() -> None:  # no verdicts kept: the next check decodes everything
            os.environ["VISIONTALES_HOME"] = str(Path(tmp) / f"home{next(homes)}")

        real = write(Path(tmp) / "real", opts.real, (1024, 768))
        check_images(dict(list(real.items())[:1]), workers=0)  # Pillow's plugins load on first use
        fresh_home()
        one = timed(check_images, real, workers=0)
        fresh_home()
        workers = min(16, os.cpu_count() or 1)
        many = timed(check_images, real, workers=workers)
        print(f"first check of {opts.real} 1024x768 photos: {opts.real / many:.0f} photos/s in {workers} processes, "
              f"{opts.real / one:.0f} in one (ratio {one / many:.2f})", flush=True)

        start = time.perf_counter()
        paths = write(Path(tmp) / "many", opts.photos, (64, 48))
        print(f"wrote {opts.photos} photos in {time.perf_counter() - start:.0f} s", flush=True)
        fresh_home()
        first = timed(check_images, paths)
        second = timed(check_images, paths)
        print(f"{opts.photos} photos: first check {first:.1f} s, second check {second:.2f} s")
        record("photo_check_again", second / first, 0.1, "lower", "second data check / first (verdicts kept)",
               photos=opts.photos, second_check_s=round(second, 2), workers_over_one_process=round(one / many, 3))


if __name__ == "__main__":
    main()
