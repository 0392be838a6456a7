"""What bounds the GPU cache's miss path on this machine (issue 16): the host's memory bandwidth,
the host tier's reads of rows never read before by thread count, and the GPU reading the same
rows itself from registered host memory (zero-copy) against the pinned copy rate.

Prints a markdown table per measurement. Run on the GPU machine (``tools/device_run.sh
host-path``); every figure is a median of 5 unless said.

1. Host memory: torch's multi-threaded sum (read) and copy (read + write) of 1 GiB float32.
2. Host tier: ``HostTable.find`` of 104,858 keys never read before (a 0.90-hit call's misses) out
   of 6,000,000 rows of dim 64 fp32, into pageable and into pinned memory, at 1 .. 16 threads, and
   by batch size at 16 threads; the
   bytes a key moves (index line, row read, row written and its read-for-ownership) give GB/s.
3. Zero-copy: a kernel reading rows at random indices straight from host memory (the same 1 GiB
   of rows, pinned by ``cudaHostRegister``) into device memory, 104,858 and 1,048,576 rows, dims
   32 / 64 / 128; against ``cudaMemcpyAsync`` of the same bytes from pinned memory.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from common import cuda_elapsed_s, time_calls  # noqa: E402

ROWS, DIM, MISSES = 6_000_000, 64, 104_858  # the reads of never-read keys below fit

GATHER = r"""
extern "C" __global__ void pull_rows(const float4* __restrict__ host, const long long* __restrict__ rows,
                                     long long n, int row_vec, float4* __restrict__ out) {
  // row_vec float4 a row; consecutive lanes read consecutive 16-byte pieces of a row
  long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = t; i < n * row_vec; i += stride) {
    long long r = i / row_vec; int v = (int)(i - r * row_vec);
    out[i] = host[rows[r] * row_vec + v];
  }
}
"""


def _median_s(fn, repeats: int = 5) -> float:
    """Median wall seconds of ``repeats`` calls of ``fn`` (after benchmarks.common's warm-ups)."""
    return float(np.median(time_calls(fn, repeats, 0.0)))


def host_memory() -> list[str]:
    import torch

    lines = ["| threads | read GB/s (sum) | copy GB/s (read + write) |", "|---:|---:|---:|"]
    x = torch.ones(1 << 28, dtype=torch.float32)
    y = torch.empty_like(x)
    for threads in (1, 4, 8, os.cpu_count()):
        torch.set_num_threads(threads)
        read = x.numel() * 4 / _median_s(lambda: x.sum())
        copy = 2 * x.numel() * 4 / _median_s(lambda: y.copy_(x))
        lines.append(f"| {threads} | {read / 1e9:.1f} | {copy / 1e9:.1f} |")
    return lines


def host_tier(cp) -> tuple[list[str], np.ndarray]:
    from embedding_cache import _core

    table = _core.HostTable(DIM, _core.RowDtype.float32, slab_rows=1 << 20, expected_rows=ROWS, max_rows=0)
    keys = np.arange(ROWS, dtype=np.int64)
    for start in range(0, ROWS, 1 << 20):
        chunk = keys[start:start + (1 << 20)]
        table.insert_or_assign(chunk, np.broadcast_to(chunk[:, None].astype(np.float32), (chunk.size, DIM)).copy())
    order = np.random.default_rng(0).permutation(ROWS)
    pinned = np.frombuffer(cp.cuda.alloc_pinned_memory(MISSES * DIM * 4), dtype=np.float32, count=MISSES * DIM).reshape(MISSES, DIM)
    pageable = np.empty((MISSES, DIM), np.float32)
    pageable.fill(0)
    found = np.empty(MISSES, np.uint8)
    lines = [f"| threads | into | ms for {MISSES:,} keys | M keys/s | GB/s moved (~832 B a key) |", "|---:|---|---:|---:|---:|"]
    used = 0
    for threads in (1, 4, 8, 16):
        pool = _core.ThreadPool(threads)
        for name, out in (("pageable", pageable), ("pinned", pinned)):
            times = []
            for _ in range(5):  # keys never read before each time (a call's misses are such keys)
                batch = order[used:used + MISSES].astype(np.int64)
                used += MISSES
                t0 = time.perf_counter()
                table.find(batch, out, found, pool)
                times.append(time.perf_counter() - t0)
                assert found.all() and np.array_equal(out[:, 0], batch.astype(np.float32))
            s = statistics.median(times)
            lines.append(f"| {threads} | {name} | {1e3 * s:.3f} | {MISSES / s / 1e6:.1f} | {MISSES * 832 / s / 1e9:.1f} |")
    lines += ["", "Batch size at 16 threads (keys never read before; a 0.98-hit call reads two pieces of 10,486):", "",
              "| keys | ms | ns a key |", "|---:|---:|---:|"]
    pool = _core.ThreadPool(16)
    for n in (4096, 10_486, 52_429, MISSES):
        times = []
        for _ in range(5):
            batch = order[used:used + n].astype(np.int64)
            used += n
            t0 = time.perf_counter()
            table.find(batch, pinned[:n], found[:n], pool)
            times.append(time.perf_counter() - t0)
        s = statistics.median(times)
        lines.append(f"| {n:,} | {1e3 * s:.3f} | {1e9 * s / n:.1f} |")
    return lines, order


def zero_copy(cp, order: np.ndarray) -> list[str]:
    kernel = cp.RawKernel(GATHER, "pull_rows")
    nbytes = 1 << 30
    host = np.empty(nbytes // 4, dtype=np.float32)
    host[:] = np.arange(host.size, dtype=np.float32) % 4093
    t0 = time.perf_counter()
    cp.cuda.runtime.hostRegister(host.ctypes.data, nbytes, 0)
    register_s = time.perf_counter() - t0
    lines = [f"cudaHostRegister of 1 GiB of pageable numpy memory: {1e3 * register_s:.0f} ms.", "",
             "| dim | rows | zero-copy pull ms | GB/s | pinned memcpy of the same bytes ms | GB/s | pull / memcpy | checked |",
             "|---:|---:|---:|---:|---:|---:|---:|---|"]
    staging = np.frombuffer(cp.cuda.alloc_pinned_memory(1 << 29), dtype=np.uint8, count=1 << 29)
    for dim in (32, 64, 128):
        row_vec = dim // 4
        table_rows = nbytes // (dim * 4)
        for n in (MISSES, 1 << 20):
            rows = cp.asarray(order[:n] % table_rows, dtype=cp.int64)
            out = cp.empty((n, dim), dtype=cp.float32)
            grid = min(132 * 16, -(-n * row_vec // 256))
            run = lambda: kernel((grid,), (256,), (host.ctypes.data, rows, np.int64(n), np.int32(row_vec), out))  # noqa: E731
            pull = _cuda_s(cp, run)
            want = host.reshape(table_rows, dim)[cp.asnumpy(rows)]
            checked = np.array_equal(cp.asnumpy(out), want)
            device = cp.empty(n * dim * 4, dtype=cp.uint8)
            src = staging[: n * dim * 4]
            copy = _cuda_s(cp, lambda: device.set(src))
            b = n * dim * 4
            lines.append(f"| {dim} | {n:,} | {1e3 * pull:.3f} | {b / pull / 1e9:.1f} | {1e3 * copy:.3f} | {b / copy / 1e9:.1f} | "
                         f"{copy / pull:.2f} | {'yes' if checked else 'NO'} |")
    cp.cuda.runtime.hostUnregister(host.ctypes.data)
    return lines


def _cuda_s(cp, fn, repeats: int = 5) -> float:
    """Median seconds of ``fn`` on the current stream (CUDA events), after one warm-up."""
    fn()
    cp.cuda.Device().synchronize()
    return statistics.median(cuda_elapsed_s(cp, fn) for _ in range(repeats))


def sync_latency(cp) -> list[str]:
    noop = cp.RawKernel('extern "C" __global__ void noop(int* x) { if (x[0] == 12345) x[0] = 0; }', "noop")
    x = cp.zeros(1, dtype=cp.int32)
    s = cp.cuda.Stream(non_blocking=True)

    def launch_and_wait():
        with s:
            noop((1,), (32,), (x,))
            x.get(stream=s)

    return [f"A one-block kernel and a 4-byte copy back, waited for on its stream: {1e6 * _median_s(launch_and_wait, 101):.1f} us (median of 101)."]


def main() -> int:
    import cupy as cp

    print(f"# The miss path's host side on this machine ({os.cpu_count()} cores, GPU {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()})\n")
    print("## Host memory\n", *host_memory(), sep="\n")
    tier, order = host_tier(cp)
    print("\n## Host tier reads of keys never read before\n", *tier, sep="\n")
    print("\n## The GPU reading rows from host memory itself\n", *zero_copy(cp, order), sep="\n")
    print("\n## Waiting on a stream\n", *sync_latency(cp), sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
