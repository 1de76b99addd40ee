#!/usr/bin/env python3
"""Measure the detector's speed side by side, in one run, and write the results as JSON.

    python scripts/bench.py [--photos 240] [--faiss-sizes 10000,100000,1000000] [--out bench-work]
    python scripts/bench.py --faiss-only [--faiss-sizes 1000000]      # section (f) alone
    python scripts/bench.py --nightly ../shared/eval-public [MORE_LABELLED ...] --unprotected DIR [--mix 1000]  # (i) alone
    python scripts/bench.py --brands 10,100,1000                     # section (j) alone

(a) bare network forward, photos/s, for the scanner's per-photo work (six 224x224 views):
    eager torch (the reference), torch channels_last + inference_mode, ONNX Runtime;
(b) end-to-end `counterfeit scan` photos/s on generated JPEGs, files on disk to decisions.jsonl;
(c) the ratio b/a for each path; (d) a warm-cache rescan against the cold scan;
(e) `counterfeit lookup` latency, in a fresh process and warm in one; (f) FAISS search on
synthetic unit vectors with real embeddings' spectrum: Flat against the approximate indexes, with queries/s,
recall@10 against exact (and over the exact neighbours with cosine >= 0.6, the ones
that could matter to a verdict), bytes per vector and build time; (g) peak resident memory of the scan;
(h) where a scan's time goes, stage by stage, measured inside the real scan pipeline;
(i) a nightly mix: --mix photos, 90% of them pictures from --unprotected DIR (any folder of
images from another source than the catalogue; each re-cropped and re-encoded, so every photo is
distinct) and 10% listings of the labelled folder --nightly, scanned against that folder's
catalogue (and its marks.csv, when it has one) twice, screened (the default) and with every stage on every photo (``screen=False``),
beside a naive one-view pipeline on the same files (Lite0 eager in torch, centre crop 224,
batch 32, 2 threads, exact search), with the ratios, the share of photos the first stage let
through (``pass_rate``), each scan's stage profile (ms per photo), and the flags one scan raised
and the other did not; then every labelled folder given (the first included) scanned both ways on
its own catalogue: the flags the first stage lost against every stage on every photo, and its pass rate;
(j) with --brands: a batch's search against many brands of 8 references each (one index per
brand, hits merged) beside one index of the same vectors.
Nothing is downloaded; the photos of (a)-(h) are drawn by detector.demo.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


from detector.demo import EDITS, draw_product, make_demo_dataset
from detector.embedders import CPU_CHUNK
from index.search import INDEX_KINDS, IVF_NPROBE, build_faiss_index, choose_index_kind, hnsw_ef_search

FORWARD_CHUNK = CPU_CHUNK  # the views per run the embedder uses on CPU


def make_photos(folder: Path, count: int) -> Path:
    """The demo catalogue plus ``count`` distinct listing photos (640-1024 px JPEGs) in a table."""
    data = make_demo_dataset(folder)
    rng = np.random.default_rng(3)
    edits = list(EDITS.values())
    rows = [["listing_id", "seller_id", "title", "price", "currency", "image"]]
    (folder / "bench").mkdir(exist_ok=True)
    for i in range(count):
        size = int(rng.integers(640, 1025))
        image = edits[i % len(edits)](draw_product(20_000 + i, size=size)).convert("RGB")
        rel = f"bench/B{i:05d}.jpg"
        image.save(folder / rel, "JPEG", quality=85)
        rows.append([f"B{i:05d}", f"seller-{i % 50}", "bench listing", "10.00", "USD", rel])
    table = folder / "bench.csv"
    with open(table, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return data.catalog, data.authorized, table


def forward(photo_paths: list[Path], repeats: int) -> dict:
    """(a): photos/s of each execution path over the same preprocessed views."""
    import torch

    from detector.embedders import create_embedder
    from detector.images import decode_image, read_image_bytes
    from detector.views import listing_views

    onnx = create_embedder("lite0", device="cpu", backend="onnx")
    views = np.concatenate([onnx.preprocess_views(listing_views(decode_image(read_image_bytes(p), draft=onnx.decode_size)))
                            for p in photo_paths])
    per_photo = len(views) // len(photo_paths)
    eager = create_embedder("lite0", device="cpu", backend="torch").model.to(memory_format=torch.contiguous_format)
    channels_last = create_embedder("lite0", device="cpu", backend="torch")

    def run_eager(chunk):
        with torch.no_grad():
            return eager(torch.from_numpy(chunk))

    def run_channels_last(chunk):
        return channels_last._embed_torch(chunk)

    def run_onnx(chunk):
        return onnx._session.run(None, {"images": chunk})[0]

    whole = 32 * per_photo  # the scanner's default batch of 32 photos, in one run
    paths = [("eager torch, 32 photos per run (reference)", run_eager, whole),
             ("eager torch", run_eager, FORWARD_CHUNK),
             ("torch channels_last + inference_mode", run_channels_last, FORWARD_CHUNK)]
    if onnx.backend == "onnx":
        paths += [("ONNX Runtime, 32 photos per run", run_onnx, whole), ("ONNX Runtime (shipped)", run_onnx, FORWARD_CHUNK)]
    results = {}
    for name, fn, chunk in paths:
        fn(views[:chunk])
        best = 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            for i in range(0, len(views), chunk):
                fn(np.ascontiguousarray(views[i : i + chunk]))
            best = max(best, len(views) / (time.perf_counter() - start))
        results[name] = {"views_per_run": chunk, "views_per_s": round(best, 1), "photos_per_s": round(best / per_photo, 2)}
    return {"views_per_photo": per_photo, "paths": results}


def stages(table: Path, index_dir: Path, work: Path) -> dict:
    """(h) where a scan's time goes: milliseconds per photo of each stage of the real scan
    pipeline (no cache), summed over the threads that ran it (decoding and verification run
    on worker threads while the network runs, so the sum exceeds the wall time)."""
    from detector import Detector
    from detector.profile import StageClock

    clock = StageClock()
    with Detector.open(index_dir, device="cpu", cache=False) as detector:
        summary = detector.scan(table, work / "scan-stages", clock=clock)
        backend = detector.embedder.backend
    return {"backend": backend, "photos": summary.photos_this_run,
            "ms_per_photo": clock.per_photo_ms(summary.photos_this_run)}


def run_measured(command: list[str]) -> tuple[float, int]:
    """Run a command; return its wall seconds and peak resident memory in bytes.

    The peak is the child's own VmHWM, polled from /proc. The rusage of ``wait4`` would not do:
    Linux carries the parent's peak into a child at fork and exec, so a child of this large
    process would report this process's memory, not its own.
    """
    import tempfile

    with tempfile.TemporaryFile("w+") as errors:  # a file, not a pipe: a chatty child cannot block on it
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, text=True)
        peak = 0
        while process.poll() is None:
            peak = max(peak, _peak_rss(process.pid))
            time.sleep(0.05)
        wall = time.perf_counter() - start
        if process.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"failed: {' '.join(command)}\n{errors.read()}")
    return wall, peak


def _peak_rss(pid: int) -> int:
    """The process's peak resident memory in bytes (VmHWM), or 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def scans(catalog: Path, authorized: Path, table: Path, work: Path) -> dict:
    """(b), (d), (g): a cold scan, then a warm rescan reading the cache."""
    cli = [sys.executable, "-m", "detector"]
    index_dir, cache = work / "index", work / "cache.sqlite"
    subprocess.run(cli + ["index", "build", str(catalog), "--out", str(index_dir), "--authorized", str(authorized)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = {}
    for name in ("cold", "warm"):
        out = work / f"scan-{name}"
        wall, rss = run_measured(cli + ["scan", str(table), "--index", str(index_dir), "--out", str(out),
                                        "--cache", str(cache)])
        summary = json.loads((out / "summary.json").read_text())
        results[name] = {
            "photos_per_s": summary["images_per_second"],
            "scan_seconds": summary["elapsed_seconds"],
            "wall_seconds_with_startup": round(wall, 2),
            "peak_rss_mb": round(rss / 2**20, 1),
        }
    results["warm_speedup"] = round(results["cold"]["scan_seconds"] / max(results["warm"]["scan_seconds"], 1e-9), 1)
    return results


def lookups(index_dir: Path, photo: Path, repeats: int = 5) -> dict:
    """(e): one photo looked up in a fresh process, and again in a warm one."""
    cold, _ = run_measured([sys.executable, "-m", "detector", "lookup", str(photo), "--index", str(index_dir)])
    from detector import Detector

    detector = Detector.open(index_dir, cache=False)
    detector.lookup(photo)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        detector.lookup(photo)
        times.append(time.perf_counter() - start)
    return {"cold_process_seconds": round(cold, 2), "warm_ms": round(1000 * statistics.median(times), 1)}


SPECTRUM_SLOPE = 1.2
"""Real Lite0 view embeddings' residual variance falls off as rank^-1.2 (power-law fit over ranks
10-400; scripts/studies/embedding_stats.py on eval-public's 3,492 views gave 1.17, and 0.93-1.43 over
other rank ranges). Top 50 of 1,280 directions hold 57% of the variance."""
SHARED, PRODUCT, PHOTO = 0.41, 0.39, 0.20
"""Shares of a vector's squared norm: the component every photo shares (real: unrelated photos
at cosine 0.41, mean vector norm 0.64), the product's own, and the photo's own (same product ~0.8)."""


class VectorModel:
    """Synthetic unit vectors shaped like photo embeddings: a shared component, a product
    direction and per-photo variation; ``spectral`` draws the last two with real embeddings'
    power-law spectrum in a random basis, ``isotropic`` spreads them evenly over all dimensions
    (a worst case for approximate search: no structure beyond the product)."""

    def __init__(self, kind: str, n: int, dim: int, rng: np.random.Generator):
        self.rng, self.dim = rng, dim
        if kind == "spectral":
            variance = np.arange(1, dim + 1, dtype=np.float64) ** -SPECTRUM_SLOPE
            self.shape = np.sqrt(variance / variance.sum()).astype(np.float32)
            self.basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
        elif kind == "isotropic":
            self.shape, self.basis = np.full(dim, 1 / np.sqrt(dim), np.float32), None
        else:
            raise ValueError(f"unknown vector model {kind!r}")
        common = rng.standard_normal(dim).astype(np.float32)
        self.common = common * np.float32(np.sqrt(SHARED) / np.linalg.norm(common))
        self.centres = self.spread(max(16, n // 10), PRODUCT)

    def spread(self, rows: int, share: float) -> np.ndarray:
        """``rows`` random vectors of expected squared norm ``share``, drawn with the model's spectrum."""
        noise = self.rng.standard_normal((rows, self.dim), dtype=np.float32) * (self.shape * np.float32(np.sqrt(share)))
        return noise if self.basis is None else noise @ self.basis

    def photos(self, n: int) -> np.ndarray:
        """``n`` database vectors: each a photo of a random product."""
        out = np.empty((n, self.dim), np.float32)
        for start in range(0, n, 100_000):
            stop = min(n, start + 100_000)
            block = self.centres[self.rng.integers(0, len(self.centres), stop - start)] + self.common
            block += self.spread(stop - start, PHOTO)
            out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
        return out

    def queries(self, base: np.ndarray, count: int) -> np.ndarray:
        """``count`` queries: database vectors slightly perturbed (a re-compressed copy, ~0.98 cosine)."""
        picked = base[self.rng.integers(0, len(base), count)]
        noisy = picked + self.spread(count, 0.04)
        return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


def stored_bytes(index, folder: Path) -> int:
    """The index's size as written to disk (streamed, so a 5 GB index is not copied in memory)."""
    import faiss

    path = folder / "probe.faiss"
    faiss.write_index(index, str(path))
    size = path.stat().st_size
    path.unlink()
    return size


NEAR = 0.6
"""Cosine above which a neighbour could matter to a verdict (brand thresholds sit near 0.8)."""


SETTINGS = {"hnsw": ("efSearch", (64, 128, 256, 512, 1024)), "ivf": ("nprobe", (32, 128)), "ivfpq": ("nprobe", (32,))}
"""Search-time settings each approximate index is measured at (one build each)."""


def in_use(kind: str, n: int) -> int | None:
    """The search setting index build gives a brand of ``n`` vectors of ``kind``."""
    if kind == "hnsw":
        return hnsw_ef_search(n)
    return IVF_NPROBE if kind in ("ivf", "ivfpq") else None


def faiss_search(sizes: list[int], dim: int, folder: Path, model: str = "spectral", queries: int = 200, k: int = 10,
                 only: set[str] | None = None) -> list[dict]:
    """(f): each index kind against exact search on the same vectors and queries: recall@10 of
    the exact top 10, and recall of just the exact neighbours with cosine >= NEAR."""
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        vectors = VectorModel(model, n, dim, rng)
        base = vectors.photos(n)
        query = vectors.queries(base, queries)
        exact = exact_scores = None
        kinds = ["flat", choose_index_kind(n, dim), *[kind for kind in INDEX_KINDS if kind not in ("flat", "ivfdisk")]]
        for kind in dict.fromkeys(k for k in kinds if only is None or k == "flat" or k in only):
            start = time.perf_counter()
            index = build_faiss_index(base, kind)
            built = time.perf_counter() - start
            size = stored_bytes(index, folder)
            name, values = SETTINGS.get(kind, (None, (None,)))
            for value in values:
                if name == "efSearch":
                    index.hnsw.efSearch = value
                elif name == "nprobe":
                    index.nprobe = min(value, index.nlist)
                start = time.perf_counter()
                scores, found = index.search(query, k)
                rate = queries / (time.perf_counter() - start)
                if exact is None:
                    exact, exact_scores = found, scores
                recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, exact)]))
                near = [(set(e[s >= NEAR]), set(f)) for e, s, f in zip(exact, exact_scores, found)]
                recall_near = sum(len(e & f) for e, f in near) / max(1, sum(len(e) for e, _ in near))
                setting = f"{name} {value}" if name else ""
                rows.append({"n": n, "dim": dim, "model": model, "kind": kind, "setting": setting,
                             "chosen": kind == choose_index_kind(n, dim) and value in (None, in_use(kind, n)),
                             "build_s": round(built, 2), "queries_per_s": round(rate, 1), "recall_at_10": round(recall, 4),
                             "recall_near": round(recall_near, 4), "bytes_per_vector": round(size / n, 1)})
                print(f"  faiss n={n:>9,} {kind:<5} {setting:<13} build {built:7.2f} s  {rate:9.1f} q/s  recall@10 {recall:.4f}"
                      f"  recall(cos>={NEAR}) {recall_near:.4f}  {size / n:8.1f} B/vector", flush=True)
            del index
        del base
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=240, help="generated listing photos to scan")
    parser.add_argument("--forward-photos", type=int, default=32, help="photos whose views the forward pass runs on")
    parser.add_argument("--faiss-sizes", default="10000,100000,1000000", help="comma-separated reference counts")
    parser.add_argument("--faiss-dim", type=int, default=1280, help="vector size (Lite0's is 1280)")
    parser.add_argument("--out", type=Path, default=Path("bench-work"), help="work folder; results.json goes here")
    parser.add_argument("--faiss-only", action="store_true", help="run section (f) alone")
    parser.add_argument("--faiss-kinds", help="comma-separated index kinds for (f) besides Flat (default: all)")
    parser.add_argument("--nightly", type=Path, nargs="+",
                        help="run section (i) alone: the mix on the first labelled folder's catalogue and listings, "
                             "then each folder's own listings scanned both ways, for the flags the first stage loses")
    parser.add_argument("--unprotected", type=Path, help="for --nightly: a folder of images no brand protects")
    parser.add_argument("--mix", type=int, default=1000, help="for --nightly: photos in the nightly mix")
    parser.add_argument("--brands", help="run section (j) alone for these comma-separated brand counts (e.g. 10,100,1000):"
                        " with --folder, that folder's catalogue among so many drawn brands (scripts/many_brands.py);"
                        " without, a batch's search alone on synthetic vectors")
    parser.add_argument("--folder", type=Path, action="append",
                        help="for --brands: a labelled folder (catalog, authorized, listings, truth); repeat for more")
    parser.add_argument("--faiss-data", choices=("spectral", "isotropic"), default="spectral",
                        help="synthetic vectors for (f): spectral = real embeddings' variance spectrum (default); "
                             "isotropic = no structure beyond the product, a worst case")
    args = parser.parse_args(argv)

    work = args.out
    if args.brands and args.folder:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # as a script, scripts/ is not a package
        from scripts.many_brands import many_brands as among_brands

        unprotected = args.unprotected if args.unprotected else None
        result = among_brands([int(n) for n in args.brands.split(",") if n], args.folder, work, unprotected,
                              args.mix if args.unprotected else 300)
        (work / "results.json").write_text(json.dumps({"many_brands": result}, indent=2) + "\n")
        print(f"results written to {work / 'results.json'} (drawn photos kept in {work / 'drawn'} for the next run)")
        return 0
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sizes = [int(s) for s in args.faiss_sizes.split(",") if s]
    if args.faiss_only:
        only = set(args.faiss_kinds.split(",")) if args.faiss_kinds else None
        rows = faiss_search(sizes, args.faiss_dim, work, args.faiss_data, only=only)
        (work / "results.json").write_text(json.dumps({"faiss": rows}, indent=2) + "\n")
        report_faiss(rows)
        return 0
    if args.brands:
        rows = many_brands([int(n) for n in args.brands.split(",") if n], args.faiss_dim)
        (work / "results.json").write_text(json.dumps({"brands": rows}, indent=2) + "\n")
        return 0
    os.environ.setdefault("COUNTERFEIT_CACHE_DIR", str(work / "home-cache"))
    if args.nightly:
        if not args.unprotected:
            parser.error("--nightly needs --unprotected DIR")
        mix = nightly(args.nightly, args.unprotected, work, args.mix)
        (work / "results.json").write_text(json.dumps({"nightly": mix}, indent=2) + "\n")
        print(json.dumps(mix, indent=2))
        return 0
    import torch

    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}}
    print("generating photos …", flush=True)
    catalog, authorized, table = make_photos(work / "data", args.photos)
    photos = sorted((work / "data" / "bench").glob("*.jpg"))

    print("(a) network forward …", flush=True)
    results["forward"] = forward(photos[: args.forward_photos], repeats=2)
    print("(b, d, g) scans …", flush=True)
    results["scan"] = scans(catalog, authorized, table, work)
    fastest = max(p["photos_per_s"] for p in results["forward"]["paths"].values())
    eager = results["forward"]["paths"]["eager torch, 32 photos per run (reference)"]["photos_per_s"]
    scan_rate = results["scan"]["cold"]["photos_per_s"]
    results["ratios"] = {"scan_over_eager_forward": round(scan_rate / eager, 2),
                         "scan_over_fastest_forward": round(scan_rate / fastest, 2)}
    print("(h) stages …", flush=True)
    results["stages"] = stages(table, work / "index", work)
    print("(e) lookup …", flush=True)
    results["lookup"] = lookups(work / "index", photos[0])
    print("(f) FAISS …", flush=True)
    results["faiss"] = faiss_search(sizes, args.faiss_dim, work, args.faiss_data)
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report(results)
    print(f"results written to {work / 'results.json'}")
    return 0


def nightly_mix(labelled: Path, unprotected: Path, work: Path, total: int, seed: int = 0) -> Path:
    """The mix's listings table: ``total`` rows, a tenth of them the labelled folder's listings
    (as they are), the rest re-cropped, re-encoded pictures of ``unprotected``."""
    from PIL import Image

    from detector.tables import image_files

    rng = np.random.default_rng(seed)
    sources = image_files(unprotected)
    if not sources:
        raise SystemExit(f"no images under {unprotected}")
    with open(labelled / "listings.csv", newline="", encoding="utf-8") as fh:
        listed = list(csv.DictReader(fh))
    protected = total // 10
    folder = work / "mix"
    folder.mkdir(parents=True)
    rows = []
    for i, row in enumerate(rng.choice(len(listed), protected, replace=protected > len(listed))):
        source = listed[int(row)]
        image = Path(source["image"])
        shutil.copyfile(labelled / image, folder / f"p{i:05d}{image.suffix}")
        rows.append([f"P{i:05d}", source["seller_id"], source["title"], source["price"], source["currency"],
                     f"mix/p{i:05d}{image.suffix}"])
    for i in range(total - protected):
        with Image.open(sources[int(rng.integers(len(sources)))]) as picture:
            picture = picture.convert("RGB")
            w, h = picture.size
            keep = rng.uniform(0.6, 0.95)
            x, y = rng.uniform(0, 1 - keep) * w, rng.uniform(0, 1 - keep) * h
            crop = picture.crop((round(x), round(y), round(x + keep * w), round(y + keep * h)))
            crop.thumbnail((1024, 1024))
            crop.save(folder / f"u{i:05d}.jpg", "JPEG", quality=int(rng.integers(75, 93)))
        rows.append([f"U{i:05d}", f"seller-{i % 97}", "item", "10", "USD", f"mix/u{i:05d}.jpg"])
    order = rng.permutation(len(rows))
    table = work / "nightly.csv"
    with open(table, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["listing_id", "seller_id", "title", "price", "currency", "image"],
                                  *(rows[i] for i in order)])
    return table


def naive_one_view(paths: list[Path], vectors: np.ndarray) -> float:
    """Photos/s of the naive pipeline: decode, centre crop 224, Lite0 eager in torch on 2
    threads in batches of 32, average pooling, exact search of ``vectors``."""
    import faiss
    import torch

    from detector.embedders import Preprocess, create_embedder
    from detector.images import decode_image, read_image_bytes

    torch.set_num_threads(2)
    model = create_embedder("lite0", device="cpu", backend="torch").model.to(memory_format=torch.contiguous_format)
    crop = Preprocess(size=224, resize="center_crop")
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    start = time.perf_counter()
    for i in range(0, len(paths), 32):
        batch = np.stack([crop(decode_image(read_image_bytes(p), draft=448)) for p in paths[i : i + 32]])
        with torch.no_grad():
            pooled = torch.nn.functional.normalize(model(torch.from_numpy(batch)).mean(dim=(2, 3)), dim=1)
        index.search(pooled.numpy(), 5)
    return len(paths) / (time.perf_counter() - start)


def _build(labelled: Path, index_dir: Path) -> None:
    from detector import build_index

    marks = labelled / "marks.csv" if (labelled / "marks.csv").is_file() else None  # as evaluate.py does
    build_index(labelled / "catalog.csv", index_dir, authorized=labelled / "authorized.csv", marks=marks, device="cpu")


def nightly(labelled: list[Path], unprotected: Path, work: Path, total: int) -> dict:
    """Section (i): the scan (screened, and with every stage on every photo) and the naive
    pipeline on one nightly mix, side by side; then each labelled folder both ways."""
    from index.store import load_index

    table = nightly_mix(labelled[0], unprotected, work, total)
    _build(labelled[0], work / "index")
    with open(table, newline="", encoding="utf-8") as fh:
        paths = [work / r["image"] for r in csv.DictReader(fh)]
    vectors = np.concatenate([e.vectors for e in load_index(work / "index", load_indexes=False).brands.values()])
    naive = naive_one_view(paths, vectors)
    result = {"photos": len(paths), "protected_share": 0.1, "naive_photos_per_s": round(naive, 2)}
    result.update(scan_both_ways(work / "index", table, work, naive))
    result["folders"] = {}
    for folder in labelled:
        mine = work / "folders" / folder.name
        _build(folder, mine / "index")
        both = scan_both_ways(mine / "index", folder / "listings.csv", mine)
        result["folders"][folder.name] = {"listings": both["photos"], "pass_rate": both["pass_rate"],
                                          "flags_every_stage": both["full_scan_flagged"],
                                          "flags_lost": len(both["flags_only_in_full_scan"]),
                                          "lost": both["flags_only_in_full_scan"],
                                          "flags_gained": both["flags_only_in_screened_scan"]}
    return result


def scan_both_ways(index_dir: Path, table: Path, work: Path, naive: float | None = None, device: str = "cpu",
                   **options) -> dict:
    """``Detector.scan`` of ``table`` screened and with every stage on every photo (``screen=False``):
    photos/s, the ratio to the ``naive`` pipeline's photos/s, flags, errors, each scan's stage
    profile, how many cores it kept busy on average (process CPU time over wall time: well under the
    worker count means the threads wait on each other, not on the cores), and the flags only one of
    them raised. ``options`` go to the scan (workers, batch_size)."""
    from detector import Detector
    from detector.profile import StageClock

    result, flagged = {}, {}
    for name, screen in (("scan", True), ("full_scan", False)):
        clock = StageClock()
        with Detector.open(index_dir, device=device, cache=False) as detector:
            start, cpu = time.perf_counter(), time.process_time()
            summary = detector.scan(table, work / name, screen=screen, clock=clock, **options)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        decisions = [json.loads(line) for line in summary.decisions_path.read_text(encoding="utf-8").splitlines()]
        flagged[name] = {d["listing_id"] for d in decisions if d["verdict"] == "flagged"}
        photos = len(decisions)
        result.update({f"{name}_photos_per_s": round(photos / seconds, 2),
                       f"{name}_over_naive": round(photos / seconds / naive, 2) if naive else None,
                       f"{name}_cores_busy": round(cpu / seconds, 2),
                       f"{name}_flagged": summary.flagged, f"{name}_errors": summary.errors,
                       f"{name}_stage_ms_per_photo": clock.per_photo_ms(summary.photos_this_run)})
        if screen:
            result.update(photos=photos, screened_out=summary.screened_out,
                          pass_rate=round(1 - summary.screened_out / max(1, photos), 4))
    result["flags_only_in_full_scan"] = sorted(flagged["full_scan"] - flagged["scan"])
    result["flags_only_in_screened_scan"] = sorted(flagged["scan"] - flagged["full_scan"])
    return result


def report(results: dict) -> None:
    """Print the results as Markdown tables."""
    forward, scan = results["forward"], results["scan"]
    print(f"\n(a) network forward, {forward['views_per_photo']} views of 224x224 per photo\n")
    print("| path | views per run | views/s | photos/s | (c) scan (b) / this |")
    print("|---|---|---|---|---|")
    for name, row in forward["paths"].items():
        print(f"| {name} | {row['views_per_run']} | {row['views_per_s']} | {row['photos_per_s']} |"
              f" {scan['cold']['photos_per_s'] / row['photos_per_s']:.2f} |")
    print("\n(b, d, g) scan of the generated photos, files to decisions.jsonl\n")
    print("| run | photos/s | scan s | wall s with start-up | peak RSS MB |")
    print("|---|---|---|---|---|")
    for name in ("cold", "warm"):
        row = scan[name]
        print(f"| {name} | {row['photos_per_s']} | {row['scan_seconds']} | {row['wall_seconds_with_startup']} | {row['peak_rss_mb']} |")
    print(f"\nwarm rescan {scan['warm_speedup']}x faster than cold (scan seconds)")
    print(f"scan / eager reference forward: {results['ratios']['scan_over_eager_forward']}x;"
          f" scan / fastest forward: {results['ratios']['scan_over_fastest_forward']}")
    print(f"\n(h) where the time goes, ms per photo summed over threads, {results['stages']['photos']} photos"
          f" ({results['stages']['backend']} network)\n")
    print("| stage | ms/photo |")
    print("|---|---|")
    for name, ms in results["stages"]["ms_per_photo"].items():
        print(f"| {name} | {ms} |")
    lookup = results["lookup"]
    print(f"(e) lookup: {lookup['cold_process_seconds']} s in a fresh process, {lookup['warm_ms']} ms warm")
    report_faiss(results["faiss"])


def many_brands(counts: list[int], dim: int, per_brand: int = 8, batch: int = 32, k: int = 10) -> list[dict]:
    """(j) without a folder: a scan's search of one batch (``batch`` photos, ``k`` neighbours)
    against ``n`` brands of ``per_brand`` references each, three ways: one exact index per brand
    with the hits merged (how it was searched before), the brands pooled in one exact index with
    each hit mapped back to its brand (how ``ReferenceIndex.search`` runs it), and one bare exact
    index holding the same vectors (the floor). One FAISS thread, as a scan's worker threads use."""
    import faiss

    from index.search import PooledFlat, build_faiss_index, search_brands

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    rows = []
    for n in counts:
        vectors = VectorModel("spectral", n * per_brand, dim, rng)
        base = vectors.photos(n * per_brand)
        queries = vectors.queries(base, batch)
        parts = {f"brand-{b:05d}": base[b * per_brand:(b + 1) * per_brand] for b in range(n)}
        split = {name: build_faiss_index(part, "flat") for name, part in parts.items()}
        pooled = PooledFlat(parts, dim)
        whole = build_faiss_index(base, "flat")
        timings = {}
        for name, run in (("per_brand", functools.partial(search_brands, split, queries, k)),
                          ("pooled", functools.partial(search_brands, {}, queries, k, pooled)),
                          ("one_index", functools.partial(whole.search, queries, k))):
            run()
            repeats = max(3, int(2000 / n))
            start = time.perf_counter()
            for _ in range(repeats):
                run()
            timings[name] = (time.perf_counter() - start) / repeats / batch * 1000
        rows.append({"brands": n, "references": n * per_brand, "per_brand_ms_per_photo": round(timings["per_brand"], 3),
                     "pooled_ms_per_photo": round(timings["pooled"], 3),
                     "one_index_ms_per_photo": round(timings["one_index"], 3),
                     "per_brand_over_one_index": round(timings["per_brand"] / timings["one_index"], 2),
                     "pooled_over_one_index": round(timings["pooled"] / timings["one_index"], 2)})
        print(f"  {n:6d} brands: per brand {timings['per_brand']:.3f} ms/photo, pooled {timings['pooled']:.3f},"
              f" one index {timings['one_index']:.3f} ({rows[-1]['per_brand_over_one_index']}x,"
              f" {rows[-1]['pooled_over_one_index']}x)", flush=True)
    return rows


def report_faiss(rows: list[dict]) -> None:
    print(f"\n(f) FAISS, synthetic {rows[0]['model'] if rows else ''} unit vectors, 200 queries, k = 10\n")
    print(f"| vectors | index | setting | chosen | build s | queries/s | recall@10 | recall, cos >= {NEAR} | bytes/vector |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['n']:,} | {row['kind']} | {row['setting']} | {'yes' if row['chosen'] else ''} | {row['build_s']} | {row['queries_per_s']} |"
              f" {row['recall_at_10']} | {row['recall_near']} | {row['bytes_per_vector']} |")


if __name__ == "__main__":
    sys.exit(main())
