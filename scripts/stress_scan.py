#!/usr/bin/env python3
"""Show that a scan's memory is set by its batch, not by its dump: scan a small and a large
generated listing table in one run and report the peak resident memory of each.

    python scripts/stress_scan.py [--rows 100000] [--small-rows 1000] [--out stress-work]

The tables repeat the demo's 38 listing photos under fresh listing ids, sellers and prices, so
the scan's own machinery (table streaming, hashing, the cache, the progress database, decision
writing) is what grows with the row count, not the model's work. Both scans run as real
`counterfeit scan` processes with a shared embedding cache, warmed first by a scan of the
demo's own listings, so neither embeds anything and the two differ only in row count. Writes stress-work/stress.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path


from detector.demo import make_demo_dataset
from bench import run_measured


def write_table(data_listings: Path, rows: int, path: Path) -> None:
    """``rows`` listings cycling through the demo photos, each with its own id, seller and price."""
    with open(data_listings, newline="") as fh:
        demo = list(csv.DictReader(fh))
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["listing_id", "seller_id", "title", "price", "currency", "image"])
        for i in range(rows):
            row = demo[i % len(demo)]
            writer.writerow([f"S{i:07d}", f"seller-{i % 997}", row["title"], f"{5 + i % 200}.00", "USD", row["image"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the large table")
    parser.add_argument("--small-rows", type=int, default=1_000, help="rows of the small table")
    parser.add_argument("--out", type=Path, default=Path("stress-work"), help="work folder (recreated)")
    args = parser.parse_args()

    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    data = make_demo_dataset(args.out / "data")
    cli = [sys.executable, "-m", "detector"]
    index_dir, cache = args.out / "index", args.out / "cache.sqlite"
    subprocess.run(cli + ["index", "build", str(data.catalog), "--out", str(index_dir), "--authorized",
                          str(data.authorized)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "scans": {}}
    wall, rss = run_measured(cli + ["scan", str(data.listings), "--index", str(index_dir), "--out",
                                    str(args.out / "scan-warm-up"), "--cache", str(cache)])
    results["warm_up"] = {"rows": 38, "seconds": round(wall, 2), "peak_rss_bytes": rss}
    print(f"warm-up scan of the 38 demo listings (embeds their photos): {wall:.1f} s, peak RSS {rss / 2**20:.0f} MB")
    print(f"{'rows':>9} {'seconds':>8} {'rows/s':>8} {'peak RSS':>10} {'state DB':>10} {'decisions':>10}")
    for rows in (args.small_rows, args.rows):
        table = data.folder / f"stress-{rows}.csv"
        write_table(data.listings, rows, table)
        out = args.out / f"scan-{rows}"
        wall, rss = run_measured(cli + ["scan", str(table), "--index", str(index_dir), "--out", str(out),
                                        "--cache", str(cache)])
        summary = json.loads((out / "summary.json").read_text())
        with open(out / "decisions.jsonl") as fh:
            written = sum(1 for _ in fh)
        assert written == summary["listings"] == rows, (written, summary["listings"], rows)
        state_bytes = sum(p.stat().st_size for p in (out / ".scan").glob("state.sqlite*"))
        results["scans"][rows] = {
            "rows": rows, "seconds": round(wall, 2), "rows_per_second": round(rows / wall, 1),
            "peak_rss_bytes": rss, "state_db_bytes": state_bytes, "decisions_written": written,
            "verdicts": summary["verdicts"], "embedded": summary["this_run"]["embedded"],
        }
        print(f"{rows:>9,} {wall:>8.1f} {rows / wall:>8.1f} {rss / 2**20:>8.0f} MB {state_bytes / 2**20:>7.1f} MB"
              f" {written:>10,}")
    small, large = results["scans"][args.small_rows], results["scans"][args.rows]
    results["rss_ratio_large_over_small"] = round(large["peak_rss_bytes"] / small["peak_rss_bytes"], 3)
    print(f"peak RSS, {args.rows:,} rows over {args.small_rows:,} rows: {results['rss_ratio_large_over_small']:.2f}x")
    (args.out / "stress.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {args.out / 'stress.json'}")


if __name__ == "__main__":
    main()
