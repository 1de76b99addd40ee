"""Exact top-k search as a chunked matrix product in torch: the similarity search of the GPU path.

FAISS on CPU is the default. When the embedder runs on CUDA, each brand's reference vectors are
kept on the GPU and searched exactly: queries x references in chunks of ``CHUNK`` references,
keeping a running top-k, so memory is bounded by the chunk and not by the catalogue. The object
answers ``ntotal`` and ``search(queries, k)`` like a FAISS index, so the brand merge is shared.
Results equal ``IndexFlatIP``'s up to float32 rounding (tests/index/test_torch_search.py).
"""

from __future__ import annotations

import numpy as np

CHUNK = 262_144  # references per matrix product (1 GiB of float32 at 1280 dimensions)


class TorchFlatIndex:
    """Unit vectors on a torch device, searched exactly by inner product."""

    def __init__(self, vectors: np.ndarray, device: str, chunk: int = CHUNK):
        import torch

        self.torch = torch
        self.device = device
        self.chunk = chunk
        self.vectors = torch.from_numpy(np.require(vectors, np.float32, ["C", "W"])).to(device)  # a read-only map is copied
        self.ntotal = len(vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(similarities, rows)``, each [n, k], best first; rows are -1 where fewer than k exist."""
        torch = self.torch
        n = len(queries)
        best_sims = torch.full((n, k), -torch.inf, device=self.device)
        best_rows = torch.full((n, k), -1, dtype=torch.long, device=self.device)
        if self.ntotal and n:
            with torch.inference_mode():
                q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device)
                for start in range(0, self.ntotal, self.chunk):
                    sims = q @ self.vectors[start : start + self.chunk].T
                    top = torch.topk(sims, min(k, sims.shape[1]), dim=1)
                    sims = torch.cat([best_sims, top.values], dim=1)
                    rows = torch.cat([best_rows, top.indices + start], dim=1)
                    keep = torch.topk(sims, k, dim=1)
                    best_sims, best_rows = keep.values, torch.gather(rows, 1, keep.indices)
        sims = best_sims.cpu().numpy()
        rows = best_rows.cpu().numpy()
        rows[~np.isfinite(sims)] = -1
        return sims, rows
