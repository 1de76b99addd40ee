#!/usr/bin/env python3
"""Measure what a brand index costs in memory, per vector, for each index kind.

    python scripts/index_memory.py [--vectors 1000000] [--dim 1280] [--kinds flat,ivf,ivfpq,ivfdisk] [--out index-memory-work]

Draws one brand of synthetic vectors (scripts/bench.py's spectral model) into a .npy file, then,
for each kind, in fresh processes: builds INDEX_DIR with index.store.write_index from the
memory-mapped file, and opens it with load_index and searches 200 queries twice. It reports,
per vector: the build's peak anonymous memory (polled), and after the searches the process's anonymous
memory (what must stay in RAM) and its file-backed pages (page cache the kernel can evict),
beside open time (which includes the SHA-256 of every file), queries/s on the second pass and
disk bytes. One index is on disk at a time. Results go to OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


from bench import VectorModel

QUERIES = 200


def memory_status() -> dict:
    """This process's peak and current resident memory, split into anonymous and file-backed, in bytes."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


class AnonymousPeak:
    """The highest anonymous resident memory seen, polled every 20 ms (the kernel keeps a peak
    only for all resident memory, which counts the memory-mapped files too)."""

    def __init__(self):
        self.peak = memory_status()["RssAnon"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, memory_status()["RssAnon"])

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, memory_status()["RssAnon"])


def draw(out: Path, n: int, dim: int) -> None:
    """Write ``n`` spectral-model vectors to ``out/vectors.npy`` and 200 queries to ``out/queries.npy``."""
    model = VectorModel("spectral", n, dim, np.random.default_rng(0))
    target = np.lib.format.open_memmap(out / "vectors.npy", mode="w+", dtype=np.float32, shape=(n, dim))
    for start in range(0, n, 100_000):
        target[start : start + 100_000] = model.photos(min(100_000, n - start))
    target.flush()
    np.save(out / "queries.npy", model.queries(np.asarray(target[: min(n, 100_000)]), QUERIES))
    del target


def child_build(out: Path, kind: str) -> dict:
    from index.store import BrandEntry, write_index

    vectors = np.load(out / "vectors.npy", mmap_mode="r")
    products = [{"product_id": f"P{i}"} for i in range(len(vectors))]
    before = memory_status()
    peak = AnonymousPeak()
    start = time.perf_counter()
    write_index(out / kind, [BrandEntry("brand", vectors, products)], {"dim": vectors.shape[1]}, "synthetic", index_kind=kind)
    return {"build_s": round(time.perf_counter() - start, 1), "baseline": before, "anonymous_peak": peak.stop()}


def child_search(out: Path, kind: str) -> dict:
    from index.store import load_index

    queries = np.load(out / "queries.npy")
    before = memory_status()
    start = time.perf_counter()
    index = load_index(out / kind)
    opened = time.perf_counter() - start
    index.search(queries, k=10)
    start = time.perf_counter()
    index.search(queries, k=10)
    rate = QUERIES / (time.perf_counter() - start)
    return {"open_s": round(opened, 1), "queries_per_s": round(rate, 1), "baseline": before, "after": memory_status()}


def run_child(mode: str, out: Path, kind: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", mode, "--kinds", kind, "--out", str(out)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(out: Path, kind: str, n: int) -> dict:
    built = run_child("build", out, kind)
    disk = sum(p.stat().st_size for p in (out / kind / "data").iterdir())
    searched = run_child("search", out, kind)
    shutil.rmtree(out / kind)
    per = lambda value: round(value / n, 1)  # noqa: E731 - bytes per vector
    return {
        "kind": kind,
        "vectors": n,
        "build_s": built["build_s"],
        "build_anonymous_peak_bytes_per_vector": per(built["anonymous_peak"] - built["baseline"]["RssAnon"]),
        "open_s": searched["open_s"],
        "queries_per_s": searched["queries_per_s"],
        "anonymous_bytes_per_vector": per(searched["after"]["RssAnon"] - searched["baseline"]["RssAnon"]),
        "file_backed_bytes_per_vector": per(searched["after"]["RssFile"] - searched["baseline"]["RssFile"]),
        "disk_bytes_per_vector": per(disk),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=1_000_000, help="vectors in the one brand")
    parser.add_argument("--dim", type=int, default=1280, help="vector size (Lite0's is 1280)")
    parser.add_argument("--kinds", default="flat,ivf,ivfpq,ivfdisk", help="comma-separated index kinds")
    parser.add_argument("--out", type=Path, default=Path("index-memory-work"), help="work folder")
    parser.add_argument("--child", choices=("build", "search"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = (child_build if args.child == "build" else child_search)(args.out, args.kinds)
        print(json.dumps(result))
        return 0
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    print(f"drawing {args.vectors:,} x {args.dim} vectors …", flush=True)
    draw(args.out, args.vectors, args.dim)
    rows = []
    for kind in args.kinds.split(","):
        print(f"{kind}: build, open, search …", flush=True)
        rows.append(measure(args.out, kind, args.vectors))
        print("  " + json.dumps(rows[-1]), flush=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n{args.vectors:,} vectors of {args.dim} dimensions, one brand; bytes per vector\n")
    print("| index | build s | build, anonymous peak | open s | queries/s | anonymous (must stay in RAM) | file-backed (page cache) | on disk |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['build_s']} | {r['build_anonymous_peak_bytes_per_vector']:,} | {r['open_s']} | {r['queries_per_s']} |"
              f" {r['anonymous_bytes_per_vector']:,} | {r['file_backed_bytes_per_vector']:,} | {r['disk_bytes_per_vector']:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
