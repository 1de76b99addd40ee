"""Load test of ``counterfeit serve`` beside ``Detector.scan`` on the same photos (docs/service.md#load).

    python -m scripts.load_test --index IDX --photos DIR [--photos DIR2 ...] [--clients 1,4,16]
                                [--seconds 10] [--max-requests 400] [--out results.json]

1. Every photo (``*.jpg``/``*.png`` in each DIR, or a listings table's images) is checked once
   in this process (``Detector.check``, first stage on) and put in one of two classes: stopped at
   the first stage, or went on to the keypoints and verification.
2. ``counterfeit serve`` starts as a subprocess on 127.0.0.1 (a free port; its check log in a
   temporary folder): loopback only.
3. For each class and each client count, that many client threads send ``POST /v1/check`` (with
   a price, currency and seller) back to back for ``--seconds`` or until ``--max-requests``.
   Every request's bytes are unique (a counter after the image's end, which decoders ignore), so
   no photo is answered from the service's memory of recent photos. It reports p50, p95, p99
   latency and photos/s, and every status that was not 200.
4. After the largest client count of each class, ``Detector.scan`` runs in this process on the
   very photos (the same unique bytes, as files) that run sent, while the service idles: the
   scan's photos/s and the service's as a ratio of it.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import itertools
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

TOKEN = secrets.token_urlsafe(16)
FACTS = {"price": "10", "currency": "USD", "seller": "load-test"}


def photos_of(folder: Path) -> list[Path]:
    table = folder / "listings.csv"
    if table.is_file():
        with open(table, newline="") as fh:
            return [folder / row["image"] for row in csv.DictReader(fh)]
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def multipart(data: bytes, fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = secrets.token_hex(12)
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="photo"; filename="p.jpg"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


REQUESTS = itertools.count()
"""Numbers every request of this process (warm-up and runs): no two send the same bytes."""
NONCE = secrets.token_hex(8).encode()


class Unique:
    """Photo bytes made unique per request: the image, then a marker, this process's nonce and
    the request's number."""

    def __init__(self, photos: list[bytes]):
        self.photos, self.n, self.lock, self.sent = photos, 0, threading.Lock(), []

    def next(self) -> bytes:
        with self.lock:
            n, self.n = self.n, self.n + 1
        data = self.photos[n % len(self.photos)] + b"\0load-test-" + NONCE + b"-" + str(next(REQUESTS)).encode()
        with self.lock:
            self.sent.append(data)
        return data


def connect(port: int) -> http.client.HTTPConnection:
    """A kept-alive connection that sends at once (TCP_NODELAY, as curl does): http.client sends a
    body of 2,000 bytes or more apart from its headers, which Nagle's algorithm would hold for the
    server's delayed acknowledgement (40 ms on Linux)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def client(port: int, unique: Unique, until: float, budget: list[int], out: list, lock: threading.Lock) -> None:
    conn = connect(port)
    while time.monotonic() < until:
        with lock:
            if budget[0] <= 0:
                return
            budget[0] -= 1
        body, kind = multipart(unique.next(), FACTS)
        start = time.perf_counter()
        try:
            conn.request("POST", "/v1/check", body, {"Authorization": f"Bearer {TOKEN}", "Content-Type": kind})
            response = conn.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            status = f"{type(exc).__name__}"
            conn.close()
            conn = connect(port)
        out.append((time.perf_counter() - start, status))


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (this one by default), children not included."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(port: int, photos: list[bytes], clients: int, seconds: float, max_requests: int,
             server: int | None = None) -> tuple[dict, list[bytes]]:
    unique, out, lock = Unique(photos), [], threading.Lock()
    cpu = (cpu_seconds(server), cpu_seconds()) if server else None
    budget = [max_requests]
    start = time.perf_counter()
    until = time.monotonic() + seconds
    threads = [threading.Thread(target=client, args=(port, unique, until, budget, out, lock)) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ok = np.array([lat for lat, status in out if status == 200]) * 1000
    used = (cpu_seconds(server) - cpu[0], cpu_seconds() - cpu[1]) if server else None
    statuses: dict[str, int] = {}
    for _, status in out:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    result = {"clients": clients, "requests": len(out), "ok": int(len(ok)), "statuses": statuses,
              "seconds": round(wall, 2), "photos_per_s": round(len(ok) / wall, 2)}
    if used and len(out):
        result.update({"service_cpu_ms_per_photo": round(1000 * used[0] / len(out), 1),
                       "client_cpu_ms_per_photo": round(1000 * used[1] / len(out), 1)})
    if len(ok):
        result.update({f"p{q}_ms": round(float(np.percentile(ok, q)), 1) for q in (50, 95, 99)})
    return result, unique.sent


def scan_rate(detector, sent: list[bytes], work: Path) -> dict:
    folder = work / f"scan-{len(list(work.iterdir()))}"
    (folder / "photos").mkdir(parents=True)
    with open(folder / "listings.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["listing_id", "seller_id", "title", "price", "currency", "image"])
        for i, data in enumerate(sent):
            (folder / "photos" / f"{i}.jpg").write_bytes(data)
            writer.writerow([f"L{i}", FACTS["seller"], "", FACTS["price"], FACTS["currency"], f"photos/{i}.jpg"])
    start, cpu = time.perf_counter(), cpu_seconds()
    detector.scan(folder / "listings.csv", folder / "out")
    wall = time.perf_counter() - start
    return {"photos": len(sent), "seconds": round(wall, 2), "photos_per_s": round(len(sent) / wall, 2),
            "cpu_ms_per_photo": round(1000 * (cpu_seconds() - cpu) / len(sent), 1)}


def start_service(index: Path, work: Path, options: list[str] = ()) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(work / "service.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "detector", "serve", str(index), "--port", str(port),
                             "--history", str(work / "checks.sqlite"), *options], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "COUNTERFEIT_SERVICE_TOKEN": TOKEN})
    for _ in range(600):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the service did not start: see {work / 'service.log'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--photos", type=Path, action="append", required=True, help="a folder of photos, or one with listings.csv")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=10.0, help="per run (class × client count)")
    parser.add_argument("--max-requests", type=int, default=400, help="per run")
    parser.add_argument("--serve-option", action="append", default=[], metavar="OPTION",
                        help="an option for counterfeit serve, e.g. --serve-option=--workers=1 (repeatable)")
    parser.add_argument("--only", choices=("stopped", "went-on"), help="run one class of photos alone")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from detector.api import Detector, Upload

    files = [p for folder in args.photos for p in photos_of(folder)]
    detector = Detector.open(args.index, cache=False)
    classes: dict[str, list[bytes]] = {"stopped at the first stage": [], "went on": []}
    print(f"classifying {len(files)} photos ...", flush=True)
    for i in range(0, len(files), 32):
        chunk = [p.read_bytes() for p in files[i:i + 32]]
        for data, checked in zip(chunk, detector.check([Upload(data, price=10.0, currency="USD", seller="x") for data in chunk])):
            if checked.result is not None:
                stopped = any(f.code == "screened_out" for f in checked.result.findings)
                classes["stopped at the first stage" if stopped else "went on"].append(data)
    counts = [int(c) for c in args.clients.split(",")]
    results = {"photos": {name: len(v) for name, v in classes.items()}, "runs": [], "scans": []}
    with tempfile.TemporaryDirectory(prefix="load-test-") as tmp:
        work = Path(tmp)
        proc, port = start_service(args.index, work, args.serve_option)
        try:
            for name, photos in classes.items():
                if not photos or args.only and not name.startswith(args.only.replace("-", " ")):
                    continue
                run_load(port, photos[:4], 2, 2.0, 8)  # warm-up, not reported
                for clients in counts:
                    result, sent = run_load(port, photos, clients, args.seconds, args.max_requests, proc.pid)
                    result["class"] = name
                    results["runs"].append(result)
                    print(json.dumps(result), flush=True)
                    if clients == max(counts):
                        scan = scan_rate(detector, sent, work)
                        scan.update({"class": name, "service_photos_per_s": result["photos_per_s"],
                                     "ratio": round(result["photos_per_s"] / scan["photos_per_s"], 3)})
                        results["scans"].append(scan)
                        print(json.dumps(scan), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"\n{'class':<28} {'clients':>7} {'ok':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'photos/s':>9}  other statuses")
    for r in results["runs"]:
        other = {k: v for k, v in r["statuses"].items() if k != "200"}
        print(f"{r['class']:<28} {r['clients']:>7} {r['ok']:>5} {r.get('p50_ms', '-'):>8} {r.get('p95_ms', '-'):>8}"
              f" {r.get('p99_ms', '-'):>8} {r['photos_per_s']:>9}  {other or ''}")
    for s in results["scans"]:
        print(f"{s['class']}: Detector.scan {s['photos_per_s']} photos/s on the same {s['photos']} photos;"
              f" service at {max(counts)} clients {s['service_photos_per_s']} photos/s = {s['ratio']}x")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
