"""What verifying a store's checksums costs at load, on a 1 GiB store.

A store of 1 GiB of rows (4 tables, fp32, dim 64: 4,194,304 rows) is built twice: as .npy files
(verified by SHA-256 of every file, on threads) and in RocksDB (verified by RocksDB's whole-file
CRC32C of every table file). Each is opened with ``verify=True`` (the default, what the backends
do) and ``verify=False``, cold (the files dropped from the page cache with posix_fadvise
DONTNEED before each open) and warm. The baseline, measured in the same run: reading the same
files start to end without hashing (4 MiB reads), cold and warm. Outputs checked: every open's
lookups of 100k keys equal the rows written, and the bytes verified equal the files' total size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, write_section  # noqa: E402


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and (p.suffix in (".npy", ".sst")))


def _drop_cache(path: Path) -> None:
    """Evicts every file under ``path`` from the page cache (clean pages; no root needed)."""
    for p in path.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _read_all(files: list[Path]) -> int:
    total = 0
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while chunk := f.read(4 << 20):
                total += len(chunk)
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="size of the rows, in GiB")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--tables", type=int, default=4)
    parser.add_argument("--workdir", default=None, help="where the stores are built (default: a temporary directory)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    from embedding_cache import EmbeddingStore, build_store

    rows_per_table = int(args.gib * 2**30 / (args.dim * 4) / args.tables)
    rng = np.random.default_rng(0)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-verify-"))
    tables = {f"t{i}": (np.arange(rows_per_table, dtype=np.int64) * 3 + i, rng.standard_normal((rows_per_table, args.dim), dtype=np.float32))
              for i in range(args.tables)}
    sample = rng.integers(0, rows_per_table, 100_000)
    lines, builds, ok = [], [], True
    try:
        for kind, build in (("npy files, SHA-256", {}), ("RocksDB, CRC32C", {"persistent": True})):
            t0 = time.perf_counter()
            path = build_store(work / kind.split(",")[0].replace(" ", "-"), tables, **build)
            build_s = time.perf_counter() - t0
            files = _files(path)
            size = sum(p.stat().st_size for p in files)
            # a host budget keeps the RocksDB store's open from reading the rows: it shows the verification alone
            open_options = {"host_budget_bytes": 64 << 20} if build else {}
            results = {}
            for cache in ("cold", "warm"):
                _drop_cache(path) if cache == "cold" else _read_all(files)
                t0 = time.perf_counter()
                read = _read_all(files)
                results[("read", cache)] = time.perf_counter() - t0
                ok &= read == size
                for verify in (True, False):
                    _drop_cache(path) if cache == "cold" else _read_all(files)
                    t0 = time.perf_counter()
                    store = EmbeddingStore(path, verify=verify, **open_options)
                    results[(verify, cache)] = time.perf_counter() - t0
                    if verify:
                        results[("verify", cache)] = store.verify_seconds
                        ok &= store.verified_bytes == size
                    for name, (keys, rows) in tables.items():
                        ok &= bool(np.array_equal(store.lookup(name, keys[sample]), rows[sample]))
                    store.close()
            gb = size / 1e9
            for cache in ("cold", "warm"):
                lines.append(
                    f"| {kind} | {cache} | {gb:.3f} | {results[('read', cache)]:.2f} ({gb / results[('read', cache)]:.2f} GB/s) | "
                    f"{results[('verify', cache)]:.2f} ({gb / results[('verify', cache)]:.2f} GB/s) | "
                    f"{results[(False, cache)]:.2f} | {results[(True, cache)]:.2f} | "
                    f"{results[('verify', cache)] / results[('read', cache)]:.2f} |"
                )
            builds.append(f"{kind.split(',')[0]} {build_s:.0f} s")
            shutil.rmtree(path)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    body = "\n".join([
        header("Verifying a store's checksums at load"),
        f"{args.gib:g} GiB of rows ({args.tables} tables x {rows_per_table:,} rows x dim {args.dim}, fp32) plus keys; "
        "cold = files dropped from the page cache before each step. Open times of the RocksDB store use a 64 MiB host "
        "budget (rows read on demand), so its open is mostly the verification. Outputs checked (100k keys per table "
        f"after every open equal the rows written; bytes verified = the files' size): {'yes' if ok else 'NO'}.\n",
        "| store | cache | GB | read the files (baseline), s | verify, s | open, verify=False, s | open, verify=True (default), s | verify / read |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *lines,
        "",
        f"Building the stores took {', '.join(builds)}. verify / read: the verification's time over the time to read the same files "
        f"without hashing (the baseline). Files are checked {os.cpu_count()} at a time (one thread per file, as many threads as "
        "cores): the .npy files with SHA-256, RocksDB's table files with its CRC32C. Cold, the verification runs at the disk's "
        "speed; warm, it is bound by hashing on the cores.",
    ])
    print(body)
    if not args.no_write:
        write_section("store-verification", body)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
