"""Does ``counterfeit serve`` answer what ``Detector.lookup`` decides? Every listing of a folder,
both ways (docs/service.md#agreement).

    python -m scripts.service_agreement --index IDX --folder FOLDER [--batch 8]

Starts the service on 127.0.0.1 (a free port, its check log in a temporary folder), posts every
row of FOLDER/listings.csv with its facts (to ``/v1/check-batch``, ``--batch`` listings a
request), looks each photo up in this process with the same facts and ``screen=True`` (the
service's default), and compares the two JSON answers field by field (``photo``, ``listing_id``,
``digest`` and ``check_id`` aside). Prints how many differ and the first difference.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import httpx

from scripts.load_test import TOKEN, start_service


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--folder", type=Path, required=True, help="a folder with listings.csv")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    from detector.api import Detector

    with open(args.folder / "listings.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    served = []
    with tempfile.TemporaryDirectory(prefix="agreement-") as tmp:
        proc, port = start_service(args.index, Path(tmp))
        try:
            start = time.perf_counter()
            for i in range(0, len(rows), args.batch):
                chunk = rows[i: i + args.batch]
                listings = [{"photo": f"p{j}", "listing_id": r["listing_id"], "seller": r["seller_id"], "price": r["price"],
                             "currency": r["currency"], "title": r["title"]} for j, r in enumerate(chunk)]
                files = {f"p{j}": (f"p{j}.jpg", (args.folder / r["image"]).read_bytes()) for j, r in enumerate(chunk)}
                answer = httpx.post(f"http://127.0.0.1:{port}/v1/check-batch", files=files, data={"listings": json.dumps(listings)},
                                    headers={"Authorization": f"Bearer {TOKEN}"}, timeout=600)
                answer.raise_for_status()
                served += answer.json()["results"]
            served_s = time.perf_counter() - start
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    differ, first = 0, None
    start = time.perf_counter()
    with Detector.open(args.index, cache=False) as detector:
        for row, got in zip(rows, served):
            looked = detector.lookup(args.folder / row["image"], price=float(row["price"]) if row["price"] else None,
                                     currency=row["currency"] or None, seller=row["seller_id"] or None, title=row["title"] or None,
                                     screen=True).as_json()
            del looked["photo"]
            mine = {k: v for k, v in got.items() if k not in ("listing_id", "digest", "check_id")}
            if mine != looked:
                differ += 1
                if first is None:
                    first = (row["listing_id"], next(k for k in looked if looked[k] != mine.get(k)))
    lookup_s = time.perf_counter() - start
    verdicts = {}
    for got in served:
        verdicts[got.get("verdict")] = verdicts.get(got.get("verdict"), 0) + 1
    print(json.dumps({"listings": len(rows), "differ": differ, "first_difference": first, "verdicts": verdicts,
                      "service_s": round(served_s, 1), "lookup_s": round(lookup_s, 1)}))


if __name__ == "__main__":
    main()
