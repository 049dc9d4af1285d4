"""The one exception type that reaches the user as a single line instead of a traceback, and the
JSON reader every input file goes through."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class VisionTalesError(Exception):
    """A user-facing problem (bad input file, missing weights, wrong option).

    The message must name the file, key or value at fault; the CLI prints it as one line
    (`error: <message>`) and exits with status 2.
    """


class UnreadableItem(VisionTalesError):
    """An item's file could not be read although the data check passed it (it changed since); the
    data modules skip such an item and report it (`data_modules.common.SkippingDataset`)."""


def read_json(path: str | Path, hint: str = "") -> Any:
    """The JSON in `path`, or one VisionTalesError naming the file: not found (with `hint`, e.g.
    which option takes it) or not valid JSON (where)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise VisionTalesError(f"{path}: file not found{f' ({hint})' if hint else ''}") from e
    except json.JSONDecodeError as e:
        raise VisionTalesError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from e
