"""Render an HTML page in headless Chromium and save a PNG screenshot (proof that the report
renders). Usage: python -m visiontales.screenshot PAGE.html OUT.png [--width 1280 --height 6000]

Chromium comes from the system (Debian/Ubuntu: `apt-get install chromium`).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-extensions",
         "--disable-sync", "--no-first-run", "--hide-scrollbars", "--mute-audio")


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def screenshot(page: Path, out: Path, width: int = 1280, height: int = 6000, timeout: int = 120) -> Path:
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium found (install it: apt-get install chromium)")
    if not page.is_file():
        raise FileNotFoundError(f"{page}: page not found")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    subprocess.run([browser, *FLAGS, f"--window-size={width},{height}", f"--screenshot={out.resolve()}",
                    page.resolve().as_uri()], capture_output=True, timeout=timeout)
    if not out.is_file() or out.stat().st_size == 0:
        raise RuntimeError(f"{browser} wrote no screenshot of {page}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m visiontales.screenshot", description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=6000)
    opts = parser.parse_args(argv)
    try:
        print(f"wrote {screenshot(opts.page, opts.out, opts.width, opts.height)}")
    except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"error: screenshot: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
