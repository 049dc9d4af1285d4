"""Peak memory of the sharded feature cache against the dataset's size, and its build and read
throughput, beside the reference it replaced (every feature in one in-memory dict, saved with
torch.save at the end and loaded whole).

Items are LoRA latents at the paper's 512 px: VAE posterior mean and log-variance, 8 x 64 x 64,
kept in fp16 (64 KiB an item; the reference keeps fp32). The encoder is the identity, so what is
timed is the cache. Each build and each read runs in its own process, whose peak RSS is reported.

    python bench/cache_scaling.py [--items 1500]    # N and 4N items
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from results import record

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (8, 64, 64)

WORKER = r"""
import json, resource, sys, time
from pathlib import Path
import torch
sys.path.insert(0, {root!r})
from visiontales.feature_cache import FeatureCache

mode, kind, n, folder = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
ids = {{f"clip{{i:06d}}#0": None for i in range(n)}}
def load(key, _):
    return torch.randn({shape!r}, generator=torch.Generator().manual_seed(int(key[4:10])))
start = time.perf_counter()
if kind == "sharded":
    cache = FeatureCache(folder, "bench", dtype=torch.float16, shard_size=512)
    features = cache.get(ids, load, lambda batch: batch, batch_size=64)
    if mode == "read":
        total = sum(float(features[k][0, 0, 0]) for k in ids)
else:  # the reference: one dict in memory, one file written at the end and read whole
    path = folder / "features.pt"
    if mode == "build":
        torch.save({{k: load(k, None) for k in ids}}, path)
    else:
        features = torch.load(path, weights_only=True)
        total = sum(float(features[k][0, 0, 0]) for k in ids)
seconds = time.perf_counter() - start
print(json.dumps({{"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "seconds": seconds}}))
"""


def measure(mode: str, kind: str, n: int, folder: Path) -> dict:
    code = WORKER.format(root=str(ROOT), shape=SHAPE)
    out = subprocess.run([sys.executable, "-c", code, mode, kind, str(n), str(folder)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1500, help="N (the second size is 4N)")
    opts = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("sharded", "in_memory"):
            for n in (opts.items, 4 * opts.items):
                folder = Path(tmp) / f"{kind}-{n}"
                folder.mkdir()
                build, read = measure("build", kind, n, folder), measure("read", kind, n, folder)
                disk = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
                results[(kind, n)] = {"build": build, "read": read, "disk_mb": disk / 2**20}
                print(f"{kind:<9} N={n:>6}: build peak RSS {build['peak_rss_mb']:7.0f} MB, {n / build['seconds']:7.0f} "
                      f"items/s; read peak RSS {read['peak_rss_mb']:7.0f} MB, {n / read['seconds']:7.0f} items/s; "
                      f"disk {disk / 2**20:6.0f} MB", flush=True)
    n, n4 = opts.items, 4 * opts.items
    for kind in ("sharded", "in_memory"):
        for mode in ("build", "read"):
            ratio = results[(kind, n4)][mode]["peak_rss_mb"] / results[(kind, n)][mode]["peak_rss_mb"]
            print(f"{kind:<9} {mode}: peak RSS at 4N / at N = {ratio:.2f}")
    worst = max(results[("sharded", n4)][m]["peak_rss_mb"] / results[("sharded", n)][m]["peak_rss_mb"]
                for m in ("build", "read"))
    record("cache_scaling", worst, 1.1, "lower", "feature cache peak RSS at 4N / at N (worse of build, read)",
           in_memory_reference=round(results[("in_memory", n4)]["read"]["peak_rss_mb"]
                                     / results[("in_memory", n)]["read"]["peak_rss_mb"], 3))
    per_item = results[("sharded", n4)]["disk_mb"] * 2**20 / n4
    print(f"disk per 512 px frame: {per_item / 1024:.0f} KiB; the real FlintstonesSV's train+val frames "
          f"(22,203 clips x 5): {22_203 * 5 * per_item / 1e9:.1f} GB")


if __name__ == "__main__":
    main()
