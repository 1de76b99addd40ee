"""On-disk IVF indexes for brands whose reference vectors do not fit in memory.

The index is two files: a small ``.faiss`` file (the coarse quantizer and list headers) and an
``.ivfdata`` file holding every inverted list, which FAISS memory-maps at search time, so the
operating system pages in only the lists a query probes. The build never holds more than one
shard of vectors in memory: the IVF is trained once on a sample, each shard's vectors are added
to a copy of the trained index and written out, and the shards' lists are merged into the one
``.ivfdata`` file (faiss ``contrib.ondisk.merge_ondisk``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile
from pathlib import Path

import faiss
import numpy as np
from faiss.contrib.ondisk import merge_ondisk

from index.search import IVF_NPROBE, ivf_lists, train_sample

SHARD_VECTORS = 250_000
"""Vectors added per shard while building (250,000 x 1280-d float32 is 1.3 GB)."""


def build_ondisk_ivf(vectors: np.ndarray, folder: Path, lists_name: str, *, shard_vectors: int | None = None) -> faiss.Index:
    """Build an IVF-Flat inner-product index over unit ``vectors`` (an array or a read-only
    memory map) whose inverted lists live in ``folder / lists_name``; returns the index, ready
    to write with :func:`faiss.write_index` into ``folder`` and to search."""
    n, dim = vectors.shape
    shard_vectors = shard_vectors or SHARD_VECTORS
    nlist = ivf_lists(n)
    trained = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    trained.train(train_sample(vectors, max(nlist, 256)))  # the sample in-memory IVF trains on
    trained.nprobe = min(nlist, IVF_NPROBE)
    empty = faiss.serialize_index(trained)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".shards-") as scratch:
        shard_files = []
        for start in range(0, n, shard_vectors):
            shard = faiss.deserialize_index(empty)
            block = np.ascontiguousarray(vectors[start : start + shard_vectors], dtype=np.float32)
            shard.add_with_ids(block, np.arange(start, start + len(block), dtype=np.int64))
            path = Path(scratch) / f"shard-{len(shard_files)}.faiss"
            faiss.write_index(shard, str(path))
            shard_files.append(str(path))
            del shard, block
        with quiet_native_stdout():
            merge_ondisk(trained, shard_files, str(folder / lists_name))
    return trained


def open_ondisk_ivf(index_path: Path) -> faiss.Index:
    """Open an on-disk IVF index: its lists are memory-mapped from the ``.ivfdata`` file named in
    it, looked up beside ``index_path``."""
    with quiet_native_stdout():
        return faiss.read_index(str(index_path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)


@contextlib.contextmanager
def quiet_native_stdout():
    """Send what native code prints to stdout to /dev/null meanwhile: FAISS's on-disk lists print
    progress lines with printf, and our stdout may be carrying JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        ctypes.CDLL(None).fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def is_ondisk(index: faiss.Index) -> bool:
    """Whether ``index`` keeps its inverted lists in a file rather than in memory."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return False
    return isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)
