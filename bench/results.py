"""One line per bench, and `bench/results.json`: each ratio bench calls `record` once with its ratio
against the reference it ran in the same process, and whether that meets its target.

    {"<bench name>": {"ratio": float, "target": float, "meets": bool, "better": "lower"|"higher", ...}}
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

RESULTS = Path(os.environ.get("VISIONTALES_BENCH_RESULTS", Path(__file__).resolve().parent / "results.json"))


def record(name: str, ratio: float, target: float, better: str, what: str, **details) -> bool:
    """Print `name: ratio (target) meets` and merge the entry into RESULTS; `better` is "lower"
    (ratio <= target meets) or "higher" (ratio >= target meets)."""
    meets = ratio <= target if better == "lower" else ratio >= target
    sign = "<=" if better == "lower" else ">="
    print(f"{name}: {what} = {ratio:.3f} (target {sign} {target}) {'meets' if meets else 'MISSES'}", flush=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results[name] = {"ratio": round(ratio, 4), "target": target, "meets": meets, "better": better, "what": what,
                     "machine": f"{platform.machine()}, {os.cpu_count()} CPU threads", **details}
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    return meets


if __name__ == "__main__":  # the table of the latest results
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    print(f"{'bench':<22}{'ratio':>8}  {'target':<8}{'':<7}what")
    for name, r in results.items():
        sign = "<=" if r["better"] == "lower" else ">="
        print(f"{name:<22}{r['ratio']:>8.3f}  {sign} {r['target']:<5}{'meets' if r['meets'] else 'MISSES':<7}{r['what']}")
