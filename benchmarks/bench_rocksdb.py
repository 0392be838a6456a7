"""The RocksDB tier against RocksDB called directly through rocksdict, on the same database.

A 1M-row table (dim 64, fp32) built with build_store(persistent=True); 200k keys per call, uniform
and Zipf(1.05); best of 3. tritonrec: EmbeddingStore.lookup with a 1-row host budget (so every key
goes to RocksDB: MultiGet + the host tier's admission check) and the tier's own MultiGet; rocksdict:
the same database opened read-only with the same block cache and bloom filter, keys pre-encoded,
one multi-get, rows joined into a numpy array. Every result is checked against the rows written.
Target: the RocksDB tier within 1.5x of direct rocksdict reads.
"""

from __future__ import annotations

import argparse
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_seconds, header, write_section  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    from rocksdict import AccessType, BlockBasedOptions, Cache, Options, Rdict

    from embedding_cache import EmbeddingStore, build_store

    rng = np.random.default_rng(0)
    keys = rng.permutation(np.arange(args.rows, dtype=np.int64) * 7 + 3)
    rows = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    path = build_store(Path(tempfile.mkdtemp(prefix="bench-rocksdb-")) / "s", {"t": (keys, rows)}, persistent=True)

    options = Options(raw_mode=True)
    table_options = BlockBasedOptions()
    table_options.set_block_cache(Cache(64 << 20))
    table_options.set_bloom_filter(10, False)
    table_options.set_cache_index_and_filter_blocks(True)
    options.set_block_based_table_factory(table_options)
    direct = Rdict(str(path / "rocksdb"), options, access_type=AccessType.read_only())

    weights = np.arange(1, args.rows + 1, dtype=np.float64) ** -1.05
    cdf = np.cumsum(weights) / weights.sum()
    lines, ratios, checks = [], [], True
    with EmbeddingStore(path, host_budget_bytes=1) as store:
        tier = store._tier  # the tier's own MultiGet, without the host tier around it
        for dist in ("uniform", "zipf"):
            ranks = rng.integers(0, args.rows, args.keys) if dist == "uniform" else np.minimum(np.searchsorted(cdf, rng.random(args.keys)), args.rows - 1)
            query = keys[ranks]
            expected = rows[ranks]
            encoded = [b"\0\0\0\0" + struct.pack(">Q", (int(k) ^ (1 << 63)) & (2**64 - 1)) for k in query]

            def via_rocksdict():
                return np.frombuffer(b"".join(direct.get(encoded)), dtype=np.float32).reshape(-1, args.dim)

            out = np.empty((args.keys, args.dim), np.float32)
            found = np.empty(args.keys, np.uint8)
            t_direct = best_seconds(via_rocksdict, 3)
            t_tier = best_seconds(lambda: tier.multi_get(0, query, out, found), 3)
            checks &= bool(np.array_equal(out, expected))
            t_store = best_seconds(lambda: store.lookup("t", query), 3)
            checks &= bool(np.array_equal(store.lookup("t", query), expected)) and bool(np.array_equal(via_rocksdict(), expected))
            for label, seconds in (("rocksdict multi-get (direct)", t_direct), ("tritonrec tier MultiGet", t_tier), ("tritonrec EmbeddingStore.lookup, 1-row host budget", t_store)):
                lines.append(f"| {dist} | {label} | {args.keys / seconds / 1e6:.2f} | {seconds / t_direct:.2f} |")
            ratios.append((dist, t_store / t_direct, t_tier / t_direct))
    direct.close()
    body = "\n".join([
        header("Embedding store, RocksDB tier vs rocksdict on the same database"),
        f"{args.rows:,} rows x dim {args.dim} fp32 in RocksDB 7.8.3 (Debian), 64 MiB block cache, bloom filter 10 bits/key; "
        f"{args.keys:,} keys per call, best of 3. Every result checked against the rows written: {'yes' if checks else 'NO'}.\n",
        "| keys | reader | M keys/s | time / rocksdict |",
        "|---|---|---:|---:|",
        *lines,
        "",
        *[f"- {dist}: EmbeddingStore.lookup through the RocksDB tier {store_ratio:.2f}x rocksdict's time (tier MultiGet alone {tier_ratio:.2f}x): "
          f"{'met' if store_ratio <= 1.5 else 'MISSED'} (target within 1.5x)" for dist, store_ratio, tier_ratio in ratios],
    ])
    print(body)
    if not args.no_write:
        write_section("rocksdb-tier", body)
    return 0 if checks else 1


if __name__ == "__main__":
    sys.exit(main())
