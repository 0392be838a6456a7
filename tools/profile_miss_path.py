"""How the GPU tier's miss path scales with the chunks a call is cut into (issue 16): the calls of
``bench_gpu_cache.py``'s effective-rate table (1,048,576 device keys a call, dim 64 fp32, 0.90 and
0.98 set hit rates, misses never asked before, lookup-stream inserts) with ``embedding_cache.gpu._CHUNKS``
at 1, 2, 4 and 8, one and two callers at once, every output checked. Run on the GPU machine
(``tools/device_run.sh miss-path``).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_gpu_cache import _concurrent, _mixed_keys, _rows_of, _store_of  # noqa: E402

DIM, N, HOT, ROWS = 64, 1 << 20, 200_000, 4_000_000
CHUNKS = (1, 2, 4, 8)
TIMED = 12


def probe(cp, path: Path, chunks: int, rng, hot: np.ndarray, cold: np.ndarray) -> list[str]:
    from embedding_cache import EmbeddingStore, gpu

    gpu._CHUNKS = chunks
    cursor = 0
    lines = []
    capacity = HOT + 4 * int(0.1 * N)
    with EmbeddingStore(path, verify=False, device=0, gpu_cache_bytes=int(capacity * (DIM * 4 + 13) * 1.25)) as store:
        for _ in range(2):
            store.prefetch("t", cp.asarray(hot))
        for hit in (0.90, 0.98):
            misses = int(round((1 - hit) * N))

            def calls(m: int) -> list:
                nonlocal cursor
                out = []
                for _ in range(m):
                    fresh = cold[np.arange(cursor, cursor + misses) % cold.size]
                    cursor += misses
                    out.append(cp.asarray(_mixed_keys(rng, hot, fresh, N)))
                return out

            for callers in (1, 2):
                warm, timed = calls(callers), calls(TIMED)
                seconds, missed, outs = _concurrent(cp, store, warm, timed, callers)
                ok = all(np.array_equal(cp.asnumpy(o), _rows_of(cp.asnumpy(k), DIM)) for o, k in zip(outs, timed))
                lines.append(f"| {chunks} | {hit:.2f} | {callers} | {1 - missed / (TIMED * N):.4f} | {1e3 * seconds / TIMED:.3f} | "
                             f"{TIMED * N / seconds / 1e9:.2f} | {'yes' if ok else 'NO'} |")
    return lines


def main() -> int:
    import cupy as cp

    rng = np.random.default_rng(5)
    path = _store_of(Path(tempfile.mkdtemp()) / "s", ROWS, DIM)
    hot = rng.permutation(ROWS)[:HOT].astype(np.int64)
    cold = np.setdiff1d(np.arange(ROWS, dtype=np.int64), hot)
    rng.shuffle(cold)
    print(f"# The GPU tier's miss path by chunks a call ({N:,} keys a call, dim {DIM} fp32, {ROWS:,} rows, {HOT:,} hot keys; "
          f"{TIMED} timed calls shared among the callers)\n")
    print("| chunks | hit rate (set) | callers | hit rate (measured) | ms a call | G keys/s | output checked |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for chunks in CHUNKS:
        print(*probe(cp, path, chunks, rng, hot, cold), sep="\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
