"""The decode stream: worker threads keep native libraries to one thread each."""

from __future__ import annotations

import faiss
import numpy as np

from detector.batching import Prepared, embed_stream


def test_worker_threads_run_faiss_on_one_thread_and_leave_the_caller_alone():
    # The pool is the parallelism: a worker whose FAISS calls started one OpenMP thread per core
    # oversubscribed a 16-core machine tenfold. The caller's own setting must not change.
    before = faiss.omp_get_max_threads()
    seen = []

    def prepare(item):
        seen.append(faiss.omp_get_max_threads())
        return Prepared(vector=np.zeros(4, np.float32))

    out = list(embed_stream(None, range(20), prepare, batch_size=4, workers=3))
    assert [e.item for e in out] == list(range(20))
    assert seen == [1] * 20
    assert faiss.omp_get_max_threads() == before


def test_opencv_runs_on_one_thread_while_any_scan_runs_and_is_restored_after():
    import cv2

    from detector.batching import opencv_one_thread

    before = cv2.getNumThreads()
    with opencv_one_thread():
        with opencv_one_thread():  # a second scan in the same process
            assert cv2.getNumThreads() == 1
        assert cv2.getNumThreads() == 1  # the first is still running
    assert cv2.getNumThreads() == before
