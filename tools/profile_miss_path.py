"""Where a GPU-tier lookup with misses spends its time on the host (issue 16): the calls of
``bench_gpu_cache.py``'s effective-rate table (1,048,576 device keys a call, dim 64 fp32, 0.90 and
0.98 set hit rates, misses never asked before) under cProfile, per call: wall time, the time
inside the host tier's reads (``HostTable.find``, within ``HostTier.lookup``), inside waits on the stream (cupy's ``get`` /
``asnumpy`` / event ``synchronize``), and the rest (Python and launches). Run on the GPU machine
(``tools/device_run.sh miss-path``).
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_gpu_cache import _store_of  # noqa: E402

DIM, N, HOT, ROWS = 64, 1 << 20, 200_000, 4_000_000
WAITS = ("'get' of 'cupy", "'synchronize' of 'cupy")  # cProfile's names of cupy's waits (tottime: the wait itself)


def _calls(cp, store, hit: float, rng, hot, cold, count: int):
    misses = int(round((1 - hit) * N))
    calls = []
    for c in range(count):
        keys = rng.permutation(np.concatenate([rng.choice(hot, N - misses), cold[c * misses:(c + 1) * misses]]))
        calls.append(cp.asarray(keys))
    cp.cuda.Device().synchronize()
    return calls


def profile(cp, path: Path, hit: float, async_insert: bool, rng) -> list[str]:
    from embedding_cache import EmbeddingStore

    hot = rng.permutation(ROWS)[:HOT].astype(np.int64)
    cold = np.setdiff1d(np.arange(ROWS, dtype=np.int64), hot)
    rng.shuffle(cold)
    misses = int(round((1 - hit) * N))
    capacity = HOT + 4 * misses
    with EmbeddingStore(path, verify=False, device=0, gpu_cache_bytes=int(capacity * (DIM * 4 + 13) * 1.25), gpu_async_insert=async_insert) as store:
        store.prefetch("t", cp.asarray(hot))
        store.prefetch("t", cp.asarray(hot))
        calls = _calls(cp, store, hit, rng, hot, cold, 13)
        for q in calls[:3]:
            store.lookup("t", q)
        cp.cuda.Device().synchronize()
        profiler = cProfile.Profile()
        t0 = time.perf_counter()
        profiler.enable()
        for q in calls[3:]:
            store.lookup("t", q)
        cp.cuda.Device().synchronize()
        profiler.disable()
        wall = (time.perf_counter() - t0) / 10
    stats = pstats.Stats(profiler)
    rows = sorted(((key, value) for key, value in stats.stats.items()), key=lambda kv: -kv[1][2])  # by tottime
    # the host table's find is a pybind11 call: its time is the own time of HostTier.lookup, which makes it
    find = sum(v[2] for k, v in rows if (k[0].endswith("host.py") and k[2] == "lookup") or "'find'" in k[2]) / 10
    waits = sum(v[2] for k, v in rows if any(w in k[2] for w in WAITS)) / 10
    lines = [f"### {hit:.2f} hits, inserts on {'their own stream' if async_insert else 'the lookup stream'}: "
             f"{1e3 * wall:.3f} ms a call; host reads (HostTable.find) {1e3 * find:.3f} ms, waits on the stream {1e3 * waits:.3f} ms, "
             f"the rest {1e3 * (wall - find - waits):.3f} ms", "", "| function | calls a lookup | own ms a lookup |", "|---|---:|---:|"]
    for (file, line, name), value in rows[:18]:
        lines.append(f"| {Path(file).name}:{line} {name} | {value[1] / 10:.0f} | {1e3 * value[2] / 10:.3f} |")
    return lines


def main() -> int:
    import cupy as cp

    rng = np.random.default_rng(5)
    path = _store_of(Path(tempfile.mkdtemp()) / "s", ROWS, DIM)
    print(f"# A GPU-tier lookup with misses, profiled on the host ({N:,} keys a call, dim {DIM} fp32, {ROWS:,} rows, "
          f"{HOT:,} hot keys; 10 calls)\n")
    for hit, async_insert in ((0.90, False), (0.98, False), (0.98, True)):
        print(*profile(cp, path, hit, async_insert, rng), "", sep="\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
