"""`counterfeit serve`: checks at posting answer what lookup decides, refuse hostile uploads with
their 4xx, log every answer before sending it, and switch to a rebuilt index without a failure."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from typer.testing import CliRunner

from detector import build_index
from detector.api import Detector, Upload
from detector.check_queue import Busy, CheckQueue
from detector.cli import app as cli
from detector.history import ScanHistory
from detector.service import Service, create_app
from detector.web import running
from tests.conftest import png_with_declared_size

TOKEN = "service-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
runner = CliRunner()


def opener(index):
    return lambda: Detector.open(index, cache=False, device="cpu")


@pytest.fixture
def service(demo_index, tmp_path):
    """A service on the demo index, on a free local port: (base URL, check queue, log path)."""
    log = tmp_path / "checks.sqlite"
    with CheckQueue(opener(demo_index), demo_index, log, batch_size=8, max_waiting=64, screen=True, top_k=5) as queue:
        with running(create_app(Service(queue, TOKEN), idle_s=1.0)) as url:
            yield url, queue, log


def listings(demo_data) -> list[dict]:
    with open(demo_data.listings, newline="") as fh:
        return list(csv.DictReader(fh))


def facts(row: dict) -> dict:
    return {"listing_id": row["listing_id"], "seller": row["seller_id"], "price": row["price"],
            "currency": row["currency"], "title": row["title"]}


def check(url, photo: bytes, headers=AUTH, **fields):
    return httpx.post(f"{url}/v1/check", files={"photo": ("p.jpg", photo)}, data=fields, headers=headers, timeout=60)


def without_ids(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k not in ("listing_id", "digest", "check_id")}


def test_a_check_answers_what_lookup_decides_alone_and_in_a_batch(service, demo_data, demo_index):
    url, _, _ = service
    rows = listings(demo_data)[:10]
    with Detector.open(demo_index, cache=False, device="cpu") as detector:
        expected = []
        for row in rows:
            looked = detector.lookup(demo_data.folder / row["image"], price=float(row["price"]), currency=row["currency"],
                                     seller=row["seller_id"], title=row["title"], screen=True).as_json()
            del looked["photo"]
            expected.append(looked)
    answers = [check(url, (demo_data.folder / row["image"]).read_bytes(), **facts(row)) for row in rows]
    assert all(a.status_code == 200 for a in answers)
    assert [without_ids(a.json()) for a in answers] == expected
    assert [a.json()["listing_id"] for a in answers] == [row["listing_id"] for row in rows]
    assert {e["verdict"] for e in expected} >= {"flagged", "clear"}  # both verdicts were compared
    files = {f"p{i}": (f"p{i}.jpg", (demo_data.folder / row["image"]).read_bytes()) for i, row in enumerate(rows)}
    batch = httpx.post(f"{url}/v1/check-batch", files=files, headers=AUTH, timeout=60,
                       data={"listings": json.dumps([{"photo": f"p{i}", **facts(row)} for i, row in enumerate(rows)])})
    assert batch.status_code == 200
    assert [without_ids(r) for r in batch.json()["results"]] == expected


def test_a_photo_without_facts_gets_the_visual_finding_alone(service, demo_data):
    url, _, _ = service
    answer = check(url, (demo_data.folder / listings(demo_data)[0]["image"]).read_bytes())
    assert answer.status_code == 200
    body = answer.json()
    assert body["verdict"] is None and body["findings"] == [] and body["visual_state"]


def test_every_answered_check_is_logged_and_counts_as_a_prior_flag_that_night(service, demo_data, demo_index, tmp_path):
    url, _, log = service
    flagged_row = next(row for row in listings(demo_data) if row["listing_id"] in _kind(demo_data, "copy_cheap_rogue"))
    photo = (demo_data.folder / flagged_row["image"]).read_bytes()
    answer = check(url, photo, **{**facts(flagged_row), "listing_id": "POSTED-1", "seller": "fresh-shop"}).json()
    assert answer["verdict"] == "flagged"
    unnamed = check(url, photo, seller="fresh-shop", price="1", currency="USD").json()
    history = ScanHistory(log)
    logged = history.checks()
    history.close()
    assert [(c["check_id"], c["listing_id"], c["verdict"]) for c in logged] == [
        (answer["check_id"], "POSTED-1", "flagged"), (unnamed["check_id"], f"check-{unnamed['check_id']}", "flagged")]
    assert logged[0]["answer"] == {k: v for k, v in answer.items() if k != "check_id"}
    # Tonight's scan, with the same history: the seller's other listing counts the posting-time flag.
    other = next(row for row in listings(demo_data) if row["listing_id"] in _kind(demo_data, "copy_fullprice_rogue"))
    folder = tmp_path / "night"
    folder.mkdir()
    shutil.copy(demo_data.folder / other["image"], folder / "other.jpg")
    with open(folder / "listings.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["listing_id", "seller_id", "title", "price", "currency", "image"],
                                  ["NIGHT-1", "fresh-shop", other["title"], other["price"], other["currency"], "other.jpg"]])
    with Detector.open(demo_index, cache=False, device="cpu") as detector:
        night = detector.scan(folder / "listings.csv", tmp_path / "out", history=log)
    decision = next(iter(night.decisions()))
    assert "repeat_offender" in {f.code for f in decision.findings}


def _kind(demo_data, kind: str) -> set[str]:
    with open(demo_data.truth, newline="") as fh:
        return {row["listing_id"] for row in csv.DictReader(fh) if row["kind"] == kind}


def _raw(url: str, request: bytes, wait: float = 10.0) -> tuple[bytes, float]:
    """Send raw bytes; the whole answer (head and the body its Content-Length announces, which
    may arrive in separate packets) and how long its head took."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        start = time.monotonic()
        sock.sendall(request)
        answer = sock.recv(4096)
        took = time.monotonic() - start
        while b"\r\n\r\n" in answer:
            head, _, body = answer.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            if len(body) >= length:
                break
            more = sock.recv(4096)
            if not more:
                break
            answer += more
        return answer, took


def test_hostile_uploads_get_their_4xx_code_and_the_service_still_serves(service, demo_data, tmp_path):
    url, _, _ = service
    good = (demo_data.folder / listings(demo_data)[0]["image"]).read_bytes()
    cases = {
        "no token": (check(url, good, headers={}), 401, "unauthorised"),
        "wrong token": (check(url, good, headers={"Authorization": "Bearer nope"}), 401, "unauthorised"),
        "not multipart": (httpx.post(f"{url}/v1/check", json={"photo": "x"}, headers=AUTH), 415, "wrong_type"),
        "no photo": (httpx.post(f"{url}/v1/check", files={"other": ("a", b"x")}, headers=AUTH), 400, "missing_photo"),
        "not an image": (check(url, b"<html>hello</html>"), 415, "not_an_image"),
        "truncated": (check(url, good[: len(good) // 2]), 422, "corrupt"),
        "empty": (check(url, b""), 422, "empty_file"),
        "bomb": (check(url, png_with_declared_size(100_000, 100_000)), 413, "too_many_pixels"),
        "price not a number": (check(url, good, price="cheap", currency="USD"), 422, "bad_facts"),
        "price without currency": (check(url, good, price="10"), 422, "bad_facts"),
        "control characters": (check(url, good, title="a\x00b"), 422, "bad_facts"),
        "batch not JSON": (httpx.post(f"{url}/v1/check-batch", files={"p": ("p", good)}, data={"listings": "[{"},
                                      headers=AUTH), 400, "bad_request"),
        "batch nested": (httpx.post(f"{url}/v1/check-batch", files={"p": ("p", good)}, data={"listings": "[" * 5000},
                                    headers=AUTH), 400, "bad_request"),
        "batch names a missing part": (httpx.post(f"{url}/v1/check-batch", files={"p": ("p", good)}, headers=AUTH,
                                                  data={"listings": '[{"photo": "q"}]'}), 400, "missing_photo"),
    }
    for name, (response, status, code) in cases.items():
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), name
        assert "Traceback" not in response.text
    head, took = _raw(url, b"POST /v1/check HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() +
                      b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 52428800\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and b"request_too_large" in head  # refused before a byte was sent
    head, took = _raw(url, b"POST /v1/check HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() +
                      b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 5000\r\n\r\n--b\r\n")
    assert head.startswith(b"HTTP/1.1 408") and took < 5  # a body left silent is not waited for
    head, _ = _raw(url, b"POST /v1/check HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() +
                   b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 12\r\n\r\nnot-a-body!!")
    assert head.startswith(b"HTTP/1.1 400")
    assert check(url, good).status_code == 200  # and it still serves
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"


def test_index_schema_and_health_describe_the_service(service, demo_index):
    url, _, _ = service
    assert httpx.get(f"{url}/v1/index").status_code == 401
    index = httpx.get(f"{url}/v1/index", headers=AUTH).json()
    manifest = json.loads((demo_index / "manifest.json").read_text())
    assert index["manifest_id"] == manifest["manifest_sha256"] and index["embedder"] == "lite0"
    assert sum(b["products"] for b in index["brands"]) == index["products"] == manifest["counts"]["products"]
    schema = httpx.get(f"{url}/openapi.json", headers=AUTH).json()
    assert {"/v1/check", "/v1/check-batch", "/v1/index", "/healthz"} <= set(schema["paths"])
    assert httpx.get(f"{url}/healthz").status_code == 200  # no token needed to know it is up


def test_a_full_queue_answers_503_with_retry_after(demo_index, demo_data, tmp_path):
    queue = CheckQueue(opener(demo_index), demo_index, tmp_path / "log.sqlite", batch_size=4, max_waiting=2, screen=True,
                       top_k=5)  # not started: nothing takes from it
    photo = (demo_data.folder / listings(demo_data)[0]["image"]).read_bytes()
    queue.submit([Upload(photo), Upload(photo)], timeout_s=30)
    with pytest.raises(Busy):
        queue.submit([Upload(photo)], timeout_s=30)
    with running(create_app(Service(queue, TOKEN))) as url:
        refused = check(url, photo)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "busy"
    queue.detector.close()


def test_a_rebuilt_index_is_switched_to_under_load_without_a_failed_request(demo_data, demo_index, tmp_path):
    index = tmp_path / "idx"
    shutil.copytree(demo_index, index)
    rows = listings(demo_data)[:6]
    photos = [(demo_data.folder / row["image"]).read_bytes() for row in rows]
    statuses, stop = [], threading.Event()

    def client(i):
        while not stop.is_set():
            statuses.append(check(url, photos[i % len(photos)], **facts(rows[i % len(rows)])).status_code)

    with CheckQueue(opener(index), index, tmp_path / "log.sqlite", batch_size=8, max_waiting=64, screen=True, top_k=5,
                    poll_s=0.2) as queue:
        with running(create_app(Service(queue, TOKEN))) as url:
            before = httpx.get(f"{url}/v1/index", headers=AUTH).json()
            threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
            for t in threads:
                t.start()
            catalog = tmp_path / "catalog.csv"
            with open(demo_data.catalog, newline="") as fh:
                table = list(csv.reader(fh))
            added = list(table[1])
            added[table[0].index("product_id")] = "NEW-999"
            added[table[0].index("image")] = str(demo_data.catalog.parent / added[table[0].index("image")])
            with open(catalog, "w", newline="") as fh:
                csv.writer(fh).writerows([table[0], *[_absolute(r, table[0], demo_data) for r in table[1:]], added])
            build_index(catalog, index, authorized=demo_data.authorized, device="cpu", allow_outside_paths=True)
            deadline = time.monotonic() + 120
            while queue.swaps == 0 and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.0)  # requests keep coming on the new index
            stop.set()
            for t in threads:
                t.join()
            after = httpx.get(f"{url}/v1/index", headers=AUTH).json()
    assert queue.swaps == 1 and after["products"] == before["products"] + 1
    assert after["manifest_id"] != before["manifest_id"]
    assert len(statuses) > 3 and set(statuses) == {200}


def _absolute(row, header, demo_data):
    row = list(row)
    row[header.index("image")] = str(demo_data.catalog.parent / row[header.index("image")])
    return row


def test_kill_9_loses_no_answered_check(demo_data, demo_index, tmp_path):
    log = tmp_path / "checks.sqlite"
    server = subprocess.Popen([sys.executable, "-m", "detector", "serve", str(demo_index), "--port", "0", "--history",
                               str(log), "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "COLUMNS": "200", "COUNTERFEIT_SERVICE_TOKEN": TOKEN})
    answered, lock = [], threading.Lock()
    try:
        url = next(line for line in server.stdout if line.startswith("Listening on ")).split()[2]
        rows = listings(demo_data)

        def client(i):
            n = 0
            while True:
                row = rows[(i * 7 + n) % len(rows)]
                try:
                    answer = check(url, (demo_data.folder / row["image"]).read_bytes(),
                                   **{**facts(row), "listing_id": f"c{i}-{n}"})
                except httpx.HTTPError:
                    return  # the server is gone
                if answer.status_code == 200:
                    with lock:
                        answered.append(answer.json()["listing_id"])
                n += 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while len(answered) < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.send_signal(signal.SIGKILL)  # under load: requests are in flight
        for t in threads:
            t.join(timeout=60)
    finally:
        server.kill()
        server.wait(timeout=30)
    history = ScanHistory(log)
    logged = {c["listing_id"] for c in history.checks()}
    history.close()
    assert len(answered) >= 12 and set(answered) <= logged


def test_serve_refuses_a_bad_log_place_and_a_busy_port(demo_index, tmp_path):
    result = runner.invoke(cli, ["serve", str(demo_index), "--history", str(tmp_path / "no" / "such" / "log.sqlite")])
    assert result.exit_code == 2 and "cannot keep the check log" in result.output
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    result = runner.invoke(cli, ["serve", str(demo_index), "--port", str(busy.getsockname()[1]), "--history",
                                 str(tmp_path / "log.sqlite")])
    busy.close()
    assert result.exit_code == 2 and "choose another --port" in result.output


def test_a_batch_answers_each_listing_and_refuses_only_the_bad_ones(service, demo_data):
    url, _, _ = service
    good = (demo_data.folder / listings(demo_data)[0]["image"]).read_bytes()
    items = [{"photo": "a", "listing_id": "A", "price": "10", "currency": "USD"},
             {"photo": "b", "listing_id": "B"},
             {"photo": "c", "listing_id": "C", "price": "10"}]
    answer = httpx.post(f"{url}/v1/check-batch", headers=AUTH, timeout=60, data={"listings": json.dumps(items)},
                        files={"a": ("a.jpg", good), "b": ("b.jpg", good[:100]), "c": ("c.jpg", good)})
    assert answer.status_code == 200
    results = answer.json()["results"]
    assert [r["listing_id"] for r in results] == ["A", "B", "C"]
    assert results[0]["verdict"] is not None and "error" not in results[0]
    assert [r.get("error", {}).get("code") for r in results[1:]] == ["corrupt", "bad_facts"]
