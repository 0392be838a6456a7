"""Host tier of the embedding store: keys/s of EmbeddingStore.lookup against numpy and a dict.

Tables of 1M and 10M rows at dim 32, 64, 128 (fp32); 1M keys per call, uniform and
Zipf(1.05) over the table's keys; 1 and 2 threads. Baselines, measured in the same run on the same
keys: sorted keys + np.searchsorted + take (the simplest honest numpy lookup) and a Python dict of
key -> row index followed by a take. Every result is checked against the baseline's rows. Also the
host memory per row against the raw row size.
Targets: >= 20 M keys/s at dim 64 with 2 threads under Zipf; numpy baseline beaten >= 5x; host
memory <= 1.25x the raw rows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_seconds, header, write_section  # noqa: E402


def _zipf_ranks(n_rows: int, n_keys: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    weights = np.arange(1, n_rows + 1, dtype=np.float64) ** -alpha
    cdf = np.cumsum(weights)
    return np.minimum(np.searchsorted(cdf / cdf[-1], rng.random(n_keys)), n_rows - 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-large", action="store_true", help="skip the 10M-row table")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    from embedding_cache import EmbeddingStore, build_store

    rng = np.random.default_rng(0)
    configs = [(1_000_000, 32), (1_000_000, 64), (1_000_000, 128)] + ([] if args.no_large else [(10_000_000, 32), (10_000_000, 64), (10_000_000, 128)])
    lines = []
    verdicts = []
    checks = True
    for n_rows, dim in configs:
        work = Path(tempfile.mkdtemp(prefix="bench-host-"))
        keys = rng.permutation(np.arange(n_rows, dtype=np.int64) * 7 + 3)  # scattered, unsorted
        rows = rng.standard_normal((n_rows, dim), dtype=np.float32)
        build_store(work / "s", {"t": (keys, rows)})
        order = np.argsort(keys)
        sorted_keys = keys[order]
        lookup_dict = {int(k): i for i, k in enumerate(keys)} if n_rows <= 1_000_000 else None
        raw_bytes = rows.nbytes
        for threads in (1, 2):
            store = EmbeddingStore(work / "s", threads=threads)
            out = np.empty((args.keys, dim), np.float32)
            for dist in ("uniform", "zipf"):
                ranks = rng.integers(0, n_rows, args.keys) if dist == "uniform" else _zipf_ranks(n_rows, args.keys, 1.05, rng)
                query = keys[ranks]
                ours = best_seconds(lambda: store.lookup("t", query, out=out), args.repeats)
                checks &= bool(np.array_equal(out, rows[ranks]))
                if threads == 1:
                    numpy_s = best_seconds(lambda: rows[order[np.searchsorted(sorted_keys, query)]], args.repeats)
                    dict_s = best_seconds(lambda: rows[np.fromiter((lookup_dict[k] for k in query.tolist()), np.int64, query.size)], 1) if lookup_dict else float("nan")
                    baseline = (numpy_s, dict_s)
                numpy_s, dict_s = baseline
                rate = args.keys / ours
                lines.append(
                    f"| {n_rows:,} | {dim} | {dist} | {threads} | {rate / 1e6:.1f} | {rate * dim * 4 / 1e9:.2f} | "
                    f"{args.keys / numpy_s / 1e6:.1f} | {'-' if np.isnan(dict_s) else f'{args.keys / dict_s / 1e6:.2f}'} | {numpy_s / ours:.1f}x |"
                )
                if dim == 64 and threads == 2 and dist == "zipf":
                    verdicts.append(f"- >= 20 M keys/s at dim 64, 2 threads, Zipf ({n_rows:,} rows): {rate / 1e6:.1f} M keys/s, {'met' if rate >= 20e6 else 'MISSED'}")
                    verdicts.append(f"- numpy baseline beaten >= 5x there: {numpy_s / ours:.1f}x, {'met' if numpy_s / ours >= 5 else 'MISSED'}")
            memory = store.stats()["t"]["tiers"]["host"]["bytes"]
            store.close()
        lines_mem = f"- {n_rows:,} rows x dim {dim} fp32: host tier {memory / 2**20:,.0f} MiB for {raw_bytes / 2**20:,.0f} MiB of raw rows = {memory / raw_bytes:.2f}x {'(<= 1.25x met)' if memory / raw_bytes <= 1.25 else '(> 1.25x: MISSED)'}"
        verdicts.append(lines_mem)
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    table = [
        "| rows | dim | keys | threads | tritonrec M keys/s | GB/s out | numpy searchsorted M keys/s | dict M keys/s | vs numpy |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
        *lines,
    ]
    body = "\n".join([
        header("Embedding store, host tier: lookup vs numpy searchsorted and a dict"),
        f"{args.keys:,} keys per call (best of {args.repeats}); keys scattered int64; rows fp32. Every lookup checked against the rows it should return: {'yes' if checks else 'NO'}.\n",
        *table, "", *verdicts,
        "- The index against abseil's flat_hash_map, and the RocksDB tier against rocksdict: their own sections (bench_index.py, bench_rocksdb.py).",
    ])
    print(body)
    if not args.no_write:
        write_section("host-store", body)
    return 0 if checks else 1


if __name__ == "__main__":
    sys.exit(main())
