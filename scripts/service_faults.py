"""``counterfeit serve`` under load through an index rebuild and a ``kill -9`` (docs/service.md#load).

    python -m scripts.service_faults --folder FOLDER [--clients 16] [--seconds 20]

FOLDER holds catalog.csv, authorized.csv and listings.csv (eval-public's layout). In a temporary
folder, on 127.0.0.1 only:

1. **Index swap.** Builds the catalogue's index, serves it, and while ``--clients`` clients post
   the folder's listings back to back, rebuilds it with one more product (a catalogue row copied
   under a new product id). Reports the requests answered, every status that was not 200, the
   switches ``/v1/index`` counted and its product count before and after.
2. **kill -9.** Serves the index again with a fresh check log, posts under the same load, sends
   SIGKILL once ``--kill-after`` answers came back, then reads the log: every listing id answered
   200 must be in it.
"""

from __future__ import annotations

import argparse
import csv
import json
import signal
import tempfile
import threading
import time
from pathlib import Path

import httpx

from scripts.load_test import TOKEN, start_service


class Load:
    """Clients posting the folder's listings, each request with a unique listing id."""

    def __init__(self, port: int, folder: Path, rows: list[dict], clients: int):
        self.url, self.folder, self.rows = f"http://127.0.0.1:{port}/v1/check", folder, rows
        self.statuses: dict[str, int] = {}
        self.answered: list[str] = []
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def _client(self, i: int) -> None:
        n = 0
        with httpx.Client(timeout=120) as client:
            while not self.stop.is_set():
                row = self.rows[(i * 31 + n) % len(self.rows)]
                listing_id = f"c{i}-{n}"
                n += 1
                try:
                    answer = client.post(self.url, headers={"Authorization": f"Bearer {TOKEN}"},
                                         files={"photo": ("p.jpg", (self.folder / row["image"]).read_bytes())},
                                         data={"listing_id": listing_id, "seller": row["seller_id"], "price": row["price"],
                                               "currency": row["currency"], "title": row["title"]})
                    status = str(answer.status_code)
                except httpx.HTTPError as exc:  # the server is gone (killed): this client stops
                    status = type(exc).__name__
                with self.lock:
                    self.statuses[status] = self.statuses.get(status, 0) + 1
                    if status == "200":
                        self.answered.append(listing_id)
                if not status.isdigit():
                    return

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)


def index_info(port: int) -> dict:
    return httpx.get(f"http://127.0.0.1:{port}/v1/index", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0, help="of load after the switch, and before the kill at most")
    parser.add_argument("--kill-after", type=int, default=100, help="answers before the SIGKILL")
    args = parser.parse_args()
    from detector import build_index
    from detector.history import ScanHistory

    folder = args.folder.resolve()
    with open(folder / "listings.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(folder / "catalog.csv", newline="") as fh:
        table = list(csv.reader(fh))
    header = table[0]
    result = {}
    with tempfile.TemporaryDirectory(prefix="service-faults-") as tmp:
        work = Path(tmp)
        index = work / "index"
        build_index(folder / "catalog.csv", index, authorized=folder / "authorized.csv")
        image = header.index("image")
        grown_rows = [[*row[:image], str(folder / row[image]), *row[image + 1:]] for row in table[1:]]
        added = list(grown_rows[0])
        added[header.index("product_id")] = "ADDED-DURING-LOAD"
        grown = work / "catalog-grown.csv"  # the folder's photos by absolute path, and one more product
        with open(grown, "w", newline="") as fh:
            csv.writer(fh).writerows([header, *grown_rows, added])

        proc, port = start_service(index, work)
        try:
            before = index_info(port)
            with Load(port, folder, rows, args.clients) as load:
                time.sleep(3)
                start = time.perf_counter()
                build_index(grown, index, authorized=folder / "authorized.csv", allow_outside_paths=True)
                built = time.perf_counter() - start
                deadline = time.monotonic() + 120
                while index_info(port)["swaps"] == 0 and time.monotonic() < deadline:
                    time.sleep(0.2)
                switched = time.perf_counter() - start
                time.sleep(args.seconds)
            after = index_info(port)
            result["swap"] = {"requests": sum(load.statuses.values()), "statuses": load.statuses, "swaps": after["swaps"],
                              "products_before": before["products"], "products_after": after["products"],
                              "rebuild_s": round(built, 1), "switched_after_s": round(switched, 1)}
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        print(json.dumps(result["swap"]), flush=True)

        killed = work / "killed"
        killed.mkdir()
        proc, port = start_service(index, killed)
        with Load(port, folder, rows, args.clients) as load:
            deadline = time.monotonic() + args.seconds * 5
            while len(load.answered) < args.kill_after and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        history = ScanHistory(killed / "checks.sqlite")
        logged = {c["listing_id"] for c in history.checks()}
        history.close()
        missing = sorted(set(load.answered) - logged)
        result["kill"] = {"answered": len(load.answered), "logged": len(logged), "answered_not_logged": len(missing),
                          "statuses": load.statuses}
        print(json.dumps(result["kill"]), flush=True)


if __name__ == "__main__":
    main()
