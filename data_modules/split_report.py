"""What one split of a dataset yielded (`SplitReport`): shared by the on-disk format readers
(`vist_format`, `flintstones_format`: `visiontales data check`) and the data modules. Imports no
Lightning, so that `data check`, `data synth` and `bootstrap` start quickly."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class SplitReport:
    """What one split of a dataset yielded: counts in the order they are found and kept (e.g.
    {"stories": 96, "sequences": 93}), dropped items (sequences, stories) by their first problem,
    every defective part (photo, clip, sentence) by reason with its id and what is wrong with it,
    and, when nothing was usable, why."""

    reasons: tuple[str, ...]  # every drop reason this dataset knows, reported even when zero
    counts: dict[str, int] = field(default_factory=dict)
    dropped: Counter = field(default_factory=Counter)
    problem: str = ""
    defects: defaultdict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    defect_reasons: tuple[str, ...] = ()  # the reasons a part can have, reported even when zero

    def as_dict(self, list_bad: bool = False) -> dict[str, Any]:
        report = {**self.counts, "dropped": {reason: self.dropped.get(reason, 0) for reason in self.reasons},
                  "defects": {reason: len(self.defects.get(reason, {})) for reason in self.defect_reasons}}
        if list_bad:
            report["bad"] = {reason: dict(self.defects.get(reason, {})) for reason in self.defect_reasons}
        return report

    def summary(self) -> str:
        counts = ", ".join(f"{n} {name}" for name, n in self.counts.items())
        defects = ", ".join(f"{r}={len(self.defects.get(r, {}))}" for r in self.defect_reasons)
        return (f"{counts} kept; dropped: " + ", ".join(f"{r}={self.dropped.get(r, 0)}" for r in self.reasons)
                + (f"; defective parts: {defects}" if defects else ""))

    def log_defects(self, where: str, reasons: tuple[str, ...], shown: int = 10) -> None:
        """One warning per defective part of these reasons (the first `shown`), naming its file."""
        bad = [(r, detail) for r in reasons for detail in self.defects.get(r, {}).values()]
        for reason, detail in bad[:shown]:
            log.warning("%s: %s: %s (dropped)", where, reason, detail)
        if len(bad) > shown:
            log.warning("%s: and %d more (`visiontales data check --list-bad` lists them all)", where, len(bad) - shown)
