#!/usr/bin/env python3
"""Would int8 make the network cheaper without changing its vectors? Measure before adopting it.

Quantises the verified ONNX export of Lite0 statically (QDQ, per-channel int8 weights, uint8
activations) with ONNX Runtime's quantiser, calibrated on the pictures in --calibration (not
benchmark photos), then embeds the six listing views of the photos in --photos with both
models, side by side in one run: views/s of each, and the cosine of each int8 vector to its fp32
vector. Issue 18 adopts int8 only if every vector stays within 1e-3 cosine.

    python -m scripts.studies.quantize_study --calibration DIR --photos DIR [--limit 96] [--out W]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


from detector.embedders import CPU_CHUNK, create_embedder
from detector.images import decode_image, read_image_bytes
from detector.paths import cache_dir
from detector.tables import image_files
from detector.views import listing_views


def pictures(folder: Path, limit: int) -> list[Path]:
    found = image_files(folder)
    return [found[i] for i in np.linspace(0, len(found) - 1, min(limit, len(found))).astype(int)] if found else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibration", type=Path, required=True, help="pictures to calibrate activations on")
    parser.add_argument("--photos", type=Path, required=True, help="listing photos to compare the vectors on")
    parser.add_argument("--limit", type=int, default=96, help="photos (and calibration pictures) to use")
    parser.add_argument("--out", type=Path, default=Path("quantize-work"))
    args = parser.parse_args(argv)

    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    embedder = create_embedder("lite0", device="cpu", backend="onnx")
    if embedder.backend != "onnx":
        raise SystemExit("this machine runs Lite0 on torch, not ONNX Runtime: nothing to quantise")
    record = json.loads(next((cache_dir() / "onnx").glob("lite0-*.verified.json")).read_text())
    source = cache_dir() / "onnx" / record["onnx"]

    def views(path: Path) -> np.ndarray:
        image = decode_image(read_image_bytes(path), draft=embedder.decode_size)
        return embedder.preprocess_views(listing_views(image)).astype(np.float32)

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": views(p)} for p in pictures(args.calibration, args.limit)])

        def get_next(self):
            return next(self.batches, None)

    args.out.mkdir(parents=True, exist_ok=True)
    quantised = args.out / "lite0-int8.onnx"
    quantize_static(str(source), str(quantised), Calibration(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    batch = np.concatenate([views(p) for p in pictures(args.photos, args.limit)])
    results = {}
    vectors = {}
    for name, path in (("fp32", source), ("int8", quantised)):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run(session=session):
            return np.concatenate([session.run(None, {"images": batch[i: i + CPU_CHUNK]})[0]
                                   for i in range(0, len(batch), CPU_CHUNK)])

        run()  # warm-up
        started = time.perf_counter()
        out = run()
        results[f"{name}_views_per_s"] = round(len(batch) / (time.perf_counter() - started), 1)
        vectors[name] = out / np.linalg.norm(out, axis=1, keepdims=True)
    cosine = np.sum(vectors["fp32"] * vectors["int8"], axis=1)
    results.update(views=len(batch), speedup=round(results["int8_views_per_s"] / results["fp32_views_per_s"], 2),
                   cosine_min=round(float(cosine.min()), 4), cosine_median=round(float(np.median(cosine)), 4),
                   within_1e3=round(float(np.mean(cosine >= 1 - 1e-3)), 4))
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
