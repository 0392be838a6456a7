"""The GPU cache's insert and lookup kernels timed (CUDA events) and, run under Nsight Compute, profiled
(tools/device_run.sh stage ``ncu-cache``): what bounds each, for RESULTS.md's notes on issue 16.

Cases: inserting 1,048,576 new rows into an empty cache of 2,097,152 slots (LRU; dim 32 / 64 / 128
fp32); the miss path's insert, 104,858 new rows (10% of a call) into a full cache with LFU and
admission (dim 64), which evicts; all-hit lookups of the 1,048,576 keys (dim 32 / 64 / 128).
``--once`` runs each case once, for ncu to catch (it replays each kernel for its counters).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import cupy as cp
from embedding_cache import _core

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from common import cuda_elapsed_s  # noqa: E402

N = 1 << 20


def _ms(fn, repeats: int) -> float:
    """Median milliseconds of ``fn`` on the current stream (CUDA events), after one warm-up when repeating."""
    if repeats > 1:
        fn()
    return statistics.median(cuda_elapsed_s(cp, fn) for _ in range(repeats)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--once", action="store_true", help="each case once (under ncu)")
    args = parser.parse_args()
    repeats = 1 if args.once else 7
    stream = cp.cuda.get_current_stream()
    rng = cp.random.default_rng(0)
    shuffle = cp.random.RandomState(0).permutation
    keys = cp.unique(rng.integers(1, 2**62, 2 * N, dtype=cp.int64))[:N]
    keys = keys[shuffle(N)]
    for dim in (32, 64, 128):
        rows = rng.random((N, dim), dtype=cp.float32)

        def fresh_insert() -> None:
            cache = _core.GpuCache(2 * N, dim, _core.GpuRowDtype.float32, "lru", 0)
            cache.insert(keys.data.ptr, rows.data.ptr, N, 1, stream.ptr)
            fresh_insert.cache = cache

        insert_ms = _ms(fresh_insert, repeats)  # the cache's creation is host work before the kernel
        cache = fresh_insert.cache
        out = cp.empty((N, dim), dtype=cp.float32)
        miss_index = cp.empty(N, dtype=cp.int32)
        miss_count = cp.empty(1, dtype=cp.int32)
        query = keys[shuffle(N)]
        lookup_ms = _ms(lambda: cache.find(query.data.ptr, N, out.data.ptr, miss_index.data.ptr, miss_count.data.ptr, 2, stream.ptr), repeats)
        misses = int(miss_count.get()[0])
        print(f"dim {dim} fp32: insert of {N:,} new rows into an empty cache {insert_ms:.3f} ms (with the cache's creation) = "
              f"{N / insert_ms / 1e6:.2f} G rows/s; all-hit lookup {lookup_ms:.3f} ms = {N / lookup_ms / 1e6:.2f} G keys/s, "
              f"{N * (8 + 8 * dim) / lookup_ms / 1e6:.0f} GB/s moved, {misses} misses", flush=True)
        del cache, fresh_insert.cache  # the next dim's cache and rows replace the rest
    dim, part = 64, N // 10
    rows = rng.random((N, dim), dtype=cp.float32)
    cache = _core.GpuCache(N, dim, _core.GpuRowDtype.float32, "lfu", 0, True)
    cache.insert(keys.data.ptr, rows.data.ptr, N, 1, stream.ptr)  # full: every later insert evicts (or is refused)
    fresh = cp.unique(rng.integers(1, 2**62, 8 * part, dtype=cp.int64))
    fresh = fresh[~cp.isin(fresh, keys)][: 4 * part]
    calls = iter(range(4))

    def miss_insert() -> None:
        i = next(calls, 3)
        cache.insert(fresh[i * part:].data.ptr, rows.data.ptr, part, 2 + i, stream.ptr)

    miss_ms = _ms(miss_insert, 1 if args.once else 3)
    print(f"dim 64 fp32, LFU + admission, full cache: insert of {part:,} new rows {miss_ms:.3f} ms = {part / miss_ms / 1e6:.2f} G rows/s", flush=True)


if __name__ == "__main__":
    main()
