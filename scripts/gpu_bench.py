"""Measure the GPU path side by side, in one run, and write the results as JSON.

    python scripts/gpu_bench.py --nightly ../shared/eval-public --unprotected DIR [--mix 1000] --out W
    python scripts/gpu_bench.py --table W/nightly.csv --catalog L/catalog.csv --authorized L/authorized.csv [--marks L/marks.csv] --out W

The second form scans a nightly mix made earlier (``scripts/bench.py``'s ``nightly_mix``, the
same one ``bench.py --nightly`` makes), for a GPU machine that cannot see the labelled folder;
``--marks`` indexes the brands' marks with the catalogue (the first form does when the folder has
a ``marks.csv``, as ``bench.py`` does).

(a) decoding the mix's JPEGs: Pillow on CPU threads (draft mode, as the scanner decodes)
    against nvJPEG through ``torchvision.io.decode_jpeg(device="cuda")`` in batches;
(b) the bare Lite0 forward pass on the GPU: fp32, fp32 channels_last, and fp16 autocast
    channels_last (what the scanner runs), photos/s for one 224x224 view;
(c) exact top-10 search: FAISS Flat on the CPU cores against ``index.torch_search`` on the GPU;
(d) a one-view first stage end to end, files to top-10 references: CPU decoding and
    preprocessing feeding the GPU, against decoding and resizing on the GPU; with how far the
    two paths' vectors and nearest references differ;
(e) ``Detector.scan`` on the mix with ``device="cuda"``, screened and with every stage on every
    photo, beside the naive one-view pipeline (Lite0 eager, centre crop 224, batch 32) on the
    same GPU, with each scan's stage profile.

It runs on CPU too (``--device cpu``), to check the script before spending GPU time; the
numbers are only meaningful on the device the issue names.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


from detector.images import decode_image, read_image_bytes

VIEW = 224


def sync(torch, device: str) -> None:
    """Wait for the device's queued work, so that a timer reads finished work."""
    if device == "cuda":
        torch.cuda.synchronize()


def jpeg_paths(table: Path) -> list[Path]:
    """The table's photos whose bytes are JPEG (nvJPEG decodes nothing else)."""
    with open(table, newline="", encoding="utf-8") as fh:
        paths = [table.parent / row["image"] for row in csv.DictReader(fh)]
    def is_jpeg(path: Path) -> bool:
        with open(path, "rb") as fh:
            return fh.read(2) == b"\xff\xd8"

    return [p for p in paths if is_jpeg(p)]


def gpu_decode(torch, datas: list, device: str) -> list:
    """nvJPEG decode of a batch of encoded JPEGs into [3, h, w] uint8 tensors on ``device``."""
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)


def squash(torch, pictures: list, device: str) -> object:
    """The scanner's whole view on the GPU: each picture resized to 224x224, normalised, batched."""
    batch = torch.stack([
        torch.nn.functional.interpolate(p.to(device).unsqueeze(0).float(), size=(VIEW, VIEW), mode="bilinear",
                                        antialias=True, align_corners=False)[0]
        for p in pictures])
    return (batch / 127.5 - 1.0).contiguous(memory_format=torch.channels_last)


def decoding(torch, paths: list[Path], device: str, workers: int, batch: int) -> dict:
    """(a) photos/s decoding the same JPEGs on CPU threads and on the GPU."""
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda p: decode_image(read_image_bytes(p), draft=2 * VIEW), paths))
    cpu = len(paths) / (time.perf_counter() - start)
    datas = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
    gpu_decode(torch, datas[:batch], device)
    sync(torch, device)
    start = time.perf_counter()
    for i in range(0, len(datas), batch):
        gpu_decode(torch, datas[i : i + batch], device)
    sync(torch, device)
    gpu = len(paths) / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(0, len(datas), batch):
        squash(torch, gpu_decode(torch, datas[i : i + batch], device), device)
    sync(torch, device)
    resized = len(paths) / (time.perf_counter() - start)
    return {"photos": len(paths), "cpu_threads": workers, "pillow_cpu_photos_per_s": round(cpu, 1),
            "nvjpeg_photos_per_s": round(gpu, 1), "nvjpeg_and_resize_photos_per_s": round(resized, 1),
            "nvjpeg_over_pillow": round(gpu / cpu, 2)}


def forward(torch, model, device: str, batch: int, repeats: int) -> dict:
    """(b) photos/s of the bare network for one view, three ways."""
    x = torch.randn(batch, 3, VIEW, VIEW, device=device)
    result = {"batch": batch}
    for name, channels_last, half in (("fp32", False, False), ("fp32_channels_last", True, False),
                                      ("fp16_autocast_channels_last", True, True)):
        inputs = x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
        model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

        def run(inputs=inputs, half=half):
            with torch.inference_mode(), torch.autocast(device, dtype=torch.float16, enabled=half and device == "cuda"):
                return model(inputs)

        for _ in range(3):
            run()
        sync(torch, device)
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        sync(torch, device)
        result[f"{name}_views_per_s"] = round(batch * repeats / (time.perf_counter() - start), 1)
    return result


def searching(torch, device: str, sizes: list[int], queries: int, dim: int = 1280, k: int = 10) -> list[dict]:
    """(c) queries/s of exact top-k: FAISS Flat on CPU and the GPU path's torch search."""
    import faiss

    from index.torch_search import TorchFlatIndex

    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        base = rng.standard_normal((n, dim), dtype=np.float32)
        base /= np.linalg.norm(base, axis=1, keepdims=True)
        q = base[rng.choice(n, queries)] + 0.05 * rng.standard_normal((queries, dim), dtype=np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        flat = faiss.IndexFlatIP(dim)
        flat.add(base)
        start = time.perf_counter()
        want = flat.search(q, k)[1]
        cpu = queries / (time.perf_counter() - start)
        on_device = TorchFlatIndex(base, device)
        on_device.search(q[:8], k)
        start = time.perf_counter()
        got = on_device.search(q, k)[1]
        gpu = queries / (time.perf_counter() - start)
        rows.append({"references": n, "queries": queries, "faiss_flat_cpu_queries_per_s": round(cpu, 1),
                     "torch_gpu_queries_per_s": round(gpu, 1), "gpu_over_cpu": round(gpu / cpu, 2),
                     "same_top1": float(np.mean(want[:, 0] == got[:, 0]))})
        del on_device
    return rows


def one_view(torch, embedder, refs: np.ndarray, paths: list[Path], device: str, workers: int, batch: int,
             repeats: int) -> dict:
    """(d) files to top-10 references with one view per photo, CPU-fed and GPU-decoded."""
    from index.torch_search import TorchFlatIndex

    preprocess, embed = embedder.preprocess, embedder.embed_tensor
    index = TorchFlatIndex(refs, device)
    work = paths * repeats

    def through(items, to_input):
        """Batches of ``items`` (read ahead by the pool) into the network and the search."""
        out, pending = [], []
        for item in items:
            pending.append(item)
            if len(pending) == batch:
                out.append(embed(to_input(pending)).cpu().numpy())
                index.search(out[-1], 10)
                pending = []
        if pending:
            out.append(embed(to_input(pending)).cpu().numpy())
            index.search(out[-1], 10)
        return np.concatenate(out)

    def cpu_fed(chunk_paths):
        with ThreadPoolExecutor(workers) as pool:
            arrays = pool.map(lambda p: preprocess(decode_image(read_image_bytes(p), draft=2 * VIEW)), chunk_paths)
            return through(arrays, lambda pending: torch.from_numpy(np.stack(pending)).to(device))

    def gpu_decoded(chunk_paths):
        with ThreadPoolExecutor(workers) as pool:
            datas = pool.map(lambda p: torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8), chunk_paths)
            return through(datas, lambda pending: squash(torch, gpu_decode(torch, pending, device), device))

    result = {"photos": len(work), "batch": batch, "cpu_threads": workers}
    vectors = {}
    for name, run in (("cpu_decode", cpu_fed), ("gpu_decode", gpu_decoded)):
        run(paths[:batch])
        sync(torch, device)
        start = time.perf_counter()
        run(work)
        sync(torch, device)
        result[f"{name}_photos_per_s"] = round(len(work) / (time.perf_counter() - start), 1)
        vectors[name] = run(paths)
    cosine = np.sum(vectors["cpu_decode"] * vectors["gpu_decode"], axis=1)
    tops = {name: index.search(v, 1)[1][:, 0] for name, v in vectors.items()}
    result.update({"gpu_over_cpu_decode": round(result["gpu_decode_photos_per_s"] / result["cpu_decode_photos_per_s"], 2),
                   "min_cosine_between_paths": round(float(cosine.min()), 4),
                   "median_cosine_between_paths": round(float(np.median(cosine)), 4),
                   "same_nearest_reference": round(float(np.mean(tops["cpu_decode"] == tops["gpu_decode"])), 4)})
    return result


def naive(torch, paths: list[Path], refs: np.ndarray, device: str) -> float:
    """Photos/s of the naive one-view pipeline of ``bench.py --nightly``, on ``device``: serial
    decoding, centre crop 224, Lite0 eager in fp32, batches of 32, average pooling, exact search."""
    from detector.embedders import Preprocess, create_embedder
    from index.torch_search import TorchFlatIndex

    model = create_embedder("lite0", device=device, backend="torch").model.to(memory_format=torch.contiguous_format)
    crop = Preprocess(size=VIEW, resize="center_crop")
    index = TorchFlatIndex(refs, device)
    start = time.perf_counter()
    for i in range(0, len(paths), 32):
        batch = np.stack([crop(decode_image(read_image_bytes(p), draft=2 * VIEW)) for p in paths[i : i + 32]])
        with torch.no_grad():
            pooled = torch.nn.functional.normalize(model(torch.from_numpy(batch).to(device)).mean(dim=(2, 3)), dim=1)
        index.search(pooled.cpu().numpy(), 5)
    return len(paths) / (time.perf_counter() - start)


def scans(torch, table: Path, index_dir: Path, refs: np.ndarray, work: Path, device: str, workers: int | None,
          batch: int | None) -> dict:
    """(e) the real scan, screened and full, beside the naive pipeline on the same device; with
    ``workers`` or ``batch`` ``None``, the scan's own defaults."""
    from bench import scan_both_ways

    with open(table, newline="", encoding="utf-8") as fh:
        paths = [table.parent / r["image"] for r in csv.DictReader(fh)]
    naive(torch, paths[:64], refs, device)
    reference = naive(torch, paths, refs, device)
    result = {"photos": len(paths), "workers": workers, "batch_size": batch, "naive_photos_per_s": round(reference, 2)}
    chosen = {name: value for name, value in (("workers", workers), ("batch_size", batch)) if value is not None}
    result.update(scan_both_ways(index_dir, table, work, reference, device, **chosen))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nightly", type=Path, help="labelled folder: make a nightly mix of it (with --unprotected)")
    parser.add_argument("--unprotected", type=Path, help="for --nightly: a folder of images no brand protects")
    parser.add_argument("--mix", type=int, default=1000, help="for --nightly: photos in the mix")
    parser.add_argument("--table", type=Path, help="a nightly mix made earlier (its listings table)")
    parser.add_argument("--catalog", type=Path, help="with --table: the catalogue to index")
    parser.add_argument("--authorized", type=Path, help="with --table: the authorised sellers")
    parser.add_argument("--marks", type=Path, help="with --table: the brands' marks (marks.csv) to index")
    parser.add_argument("--out", type=Path, default=Path("gpu-bench-work"), help="work folder; gpu.json goes here")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--workers", type=int, help="CPU threads (default: all cores; in (e), the scan's default)")
    parser.add_argument("--batch", type=int, help="photos per GPU batch (default: 256; in (e), the scan's default)")
    parser.add_argument("--repeats", type=int, default=5, help="passes over the mix in (d)")
    parser.add_argument("--search-sizes", default="100000,1000000", help="reference counts for (c)")
    parser.add_argument("--search-queries", type=int, default=2048)
    parser.add_argument("--forward-repeats", type=int, default=20)
    parser.add_argument("--sections", default="a,b,c,d,e", help="comma-separated sections to run")
    args = parser.parse_args(argv)

    import torch

    from detector import build_index
    from detector.embedders import create_embedder
    from index.store import load_index

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("torch sees no CUDA device; use --device cpu to check the script")
    torch.backends.cudnn.benchmark = True
    work = args.out
    work.mkdir(parents=True, exist_ok=True)
    if args.table:
        table, catalog, authorized = args.table, args.catalog, args.authorized
        if not (catalog and authorized):
            raise SystemExit("--table needs --catalog and --authorized")
    else:
        from bench import nightly_mix

        if not (args.nightly and args.unprotected):
            raise SystemExit("give --nightly and --unprotected, or --table with --catalog and --authorized")
        table = nightly_mix(args.nightly, args.unprotected, work, args.mix)
        catalog, authorized = args.nightly / "catalog.csv", args.nightly / "authorized.csv"
        args.marks = args.nightly / "marks.csv" if (args.nightly / "marks.csv").is_file() else None
    results = {"machine": {"device": args.device, "cpu_cores": os.cpu_count(), "torch": torch.__version__,
                           "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None}}

    def section(name, run):
        if name[0] not in args.sections.split(","):
            return
        start = time.perf_counter()
        results[name] = run()
        print(f"({name}) {time.perf_counter() - start:.1f} s: {json.dumps(results[name])}", flush=True)
        (work / "gpu.json").write_text(json.dumps(results, indent=2) + "\n")

    start = time.perf_counter()
    build_index(catalog, work / "index", authorized=authorized, marks=args.marks, device=args.device)
    results["index_build_s"] = round(time.perf_counter() - start, 2)
    refs = np.concatenate([e.vectors for e in load_index(work / "index", load_indexes=False).brands.values()])
    paths = jpeg_paths(table)
    embedder = create_embedder("lite0", device=args.device, backend="torch")
    threads, batch = args.workers or os.cpu_count(), args.batch or 256
    section("a_decode", lambda: decoding(torch, paths, args.device, threads, batch))
    section("b_forward", lambda: forward(torch, embedder.model, args.device, batch, args.forward_repeats))
    section("c_search", lambda: searching(torch, args.device, [int(s) for s in args.search_sizes.split(",")],
                                          args.search_queries))
    embedder.model.to(memory_format=torch.channels_last)
    section("d_one_view", lambda: one_view(torch, embedder, refs, paths, args.device, threads, batch,
                                           args.repeats))
    # The scan's batches change shape (the screen sends on a different number of photos each time)
    # and cuDNN's autotuning of every new shape takes seconds; `counterfeit scan` never turns it on.
    torch.backends.cudnn.benchmark = False
    section("e_scan", lambda: scans(torch, table, work / "index", refs, work, args.device, args.workers,
                                    args.batch))
    print(f"results written to {work / 'gpu.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
