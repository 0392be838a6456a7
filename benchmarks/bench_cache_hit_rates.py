"""Hit rates of the GPU cache's policies under Zipf access, against the static optimum.

Replays Zipf(alpha) traces through ``_core.simulate_set_cache``: the host twin of the GPU cache's
bookkeeping, built from the same C++ decision code (policy.hpp) the kernels run, so it needs no
GPU. Cache sizes 1%, 5%, 10% of the rows; policies LRU, LFU, each with and without TinyLFU-style
admission; hit rates over the second half of the trace. Baselines in the same run: the static
optimum (the most frequent keys pinned) and the static optimum of a 16-way set-associative cache
(per set, its 16 most frequent keys: what set conflicts alone cost). Plain LRU is the first policy
column.

Targets: >= 0.95 of the optimum at alpha 0.9 with 1%, >= 0.98 at alpha 1.05 with 5%.

With ``--gpu``, the two target cases are also replayed through the GPU cache itself (an
``EmbeddingStore`` with a GPU tier of exactly that many rows, LFU + admission, the same trace in
calls of ``--batch`` keys): within a call every lookup happens before that call's inserts, which
the host twin (inserting at each miss) does not model.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, write_section  # noqa: E402

WAYS = 16  # the GPU cache's set size (embedding_cache._core.GpuCache)
SHARES = (0.01, 0.05, 0.10)
POLICIES = [(False, "lru"), (False, "lfu"), (True, "lru"), (True, "lfu")]


def _mix64(x: np.ndarray) -> np.ndarray:
    """policy.hpp's mix64 (splitmix64 finaliser) on uint64."""
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def _fastrange(h: np.ndarray, n: int) -> np.ndarray:
    """policy.hpp's set_of: the high 64 bits of h x n (uint64 h, n < 2**32), as int64."""
    hi, lo = h >> np.uint64(32), h & np.uint64(0xFFFFFFFF)
    with np.errstate(over="ignore"):
        return ((hi * np.uint64(n) + ((lo * np.uint64(n)) >> np.uint64(32))) >> np.uint64(32)).astype(np.int64)


def set_optimum(keys_by_rank: np.ndarray, weights: np.ndarray, capacity: int) -> float:
    """Hit rate of the best static content of a ``WAYS``-way cache of ``capacity`` rows: each set keeps
    its ``WAYS`` most frequent keys. ``keys_by_rank`` int64 (rows,) most frequent first."""
    sets = capacity // WAYS
    set_ids = _fastrange(_mix64(keys_by_rank), sets)
    order = np.argsort(set_ids, kind="stable")  # rank order kept within a set
    grouped = set_ids[order]
    position = np.arange(grouped.size) - np.searchsorted(grouped, grouped, side="left")
    return float(weights[order[position < WAYS]].sum())


def gpu_hit_rate(trace: np.ndarray, rows: int, capacity: int, batch: int) -> float:
    """Hit rate of the GPU cache (LFU + admission, ``capacity`` rows) over the second half of
    ``trace``, looked up through an EmbeddingStore in calls of ``batch`` keys."""
    import tempfile

    import cupy as cp

    from embedding_cache import EmbeddingStore, _core, build_store

    dim = 8
    with tempfile.TemporaryDirectory() as tmp:
        path = build_store(Path(tmp) / "s", {"t": (np.arange(rows, dtype=np.int64), np.zeros((rows, dim), np.float32))})
        slot = _core.gpu_cache_slot_bytes(dim, _core.GpuRowDtype.float32, True)
        with EmbeddingStore(path, device=0, gpu_cache_bytes=capacity * slot, gpu_eviction="lfu", gpu_admission=True) as store:
            assert store.stats()["t"]["tiers"]["gpu"]["rows"] == capacity // WAYS * WAYS
            keys = cp.asarray(trace)
            measured_from = -(-(trace.size // 2) // batch) * batch  # the first call in the second half
            for start in range(0, trace.size, batch):
                if start == measured_from:
                    before = store.stats()["t"]["tiers"]["gpu"]
                store.lookup("t", keys[start : start + batch])
            after = store.stats()["t"]["tiers"]["gpu"]
    return (after["hits"] - before["hits"]) / (trace.size - measured_from)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--lookups", type=int, default=100_000_000)
    parser.add_argument("--batch", type=int, default=4096, help="lookups per call (the LRU clock, which moves by misses, is read once per call)")
    parser.add_argument("--gpu", action="store_true", help="also replay the target cases through the GPU cache")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    from embedding_cache import _core

    rows, lookups = args.rows, args.lookups
    lines = [
        f"{rows:,}-row table, {lookups:,} lookups in batches of {args.batch} (the LRU clock read once per batch), hit rates over the second half; "
        f"host twin of the GPU cache ({WAYS}-way sets, the kernels' decision code). Ratios are to the static optimum.",
        "",
        f"| Zipf alpha | cache size | static optimum | {WAYS}-way static optimum / optimum | LRU | LFU | LRU + admission | LFU + admission |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    rng = np.random.default_rng(0)
    for alpha in (0.9, 1.05, 1.2):
        weights = np.arange(1, rows + 1, dtype=np.float64) ** -alpha
        weights /= weights.sum()
        cdf = np.cumsum(weights)
        keys_by_rank = rng.permutation(rows).astype(np.int64)
        trace = keys_by_rank[np.minimum(np.searchsorted(cdf, rng.random(lookups)), rows - 1)]
        configs = [(share, admission, eviction) for share in SHARES for admission, eviction in POLICIES]
        with ThreadPoolExecutor(min(len(configs), os.cpu_count() or 1)) as pool:  # the simulator releases the GIL
            simulated = list(pool.map(
                lambda c: float(_core.simulate_set_cache(trace, int(rows * c[0]), WAYS, c[2], args.batch, c[1])[lookups // 2 :].mean()),
                configs))
        for k, share in enumerate(SHARES):
            capacity = int(rows * share)
            optimum = float(weights[:capacity].sum())
            rates = [r / optimum for r in simulated[len(POLICIES) * k : len(POLICIES) * (k + 1)]]
            lines.append(f"| {alpha} | {share:.0%} | {optimum:.4f} | {set_optimum(keys_by_rank, weights, capacity) / optimum:.4f} | "
                         + " | ".join(f"{r:.3f}" for r in rates) + " |")
            if (alpha, share) in ((0.9, 0.01), (1.05, 0.05)):
                target = 0.95 if alpha == 0.9 else 0.98
                best = max(rates)
                name = ["LRU", "LFU", "LRU + admission", "LFU + admission"][int(np.argmax(rates))]
                verdicts.append(f"- alpha {alpha}, {share:.0%} cache: best policy ({name}) {best:.3f} of the optimum (target {target}): "
                                f"{'met' if best >= target else 'MISSED'}")
                if args.gpu:
                    on_gpu = gpu_hit_rate(trace, rows, capacity, args.batch) / optimum
                    verdicts.append(f"  - the GPU cache itself (LFU + admission, calls of {args.batch} keys): {on_gpu:.3f} of the optimum: "
                                    f"{'met' if on_gpu >= target else 'MISSED'}")
        del trace
    body = "\n".join([header("GPU cache policies: hit rates against the static optimum"), *lines, "", *verdicts])
    print(body)
    if not args.no_write:
        write_section("gpu-cache-hit-rates", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
