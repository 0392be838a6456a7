"""The ``embedding-cache`` command: build, info, lookup."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

import numpy as np


def _build(args: argparse.Namespace) -> int:
    from embedding_cache.build import build_store_from_parquet  # noqa: PLC0415

    sources = {}
    for spec in args.table:
        name, sep, file = spec.partition("=")
        if not sep or not name or not file:
            raise ValueError(f"--table {spec!r}: expected NAME=FILE.parquet")
        sources[name] = file
    metadata = _plan_metadata(args.plan, sources) if args.plan else None
    if metadata is not None:
        _check_keys_fit(sources, args.key_column, metadata["table_sizes"])
    path = build_store_from_parquet(
        args.store, sources, key_column=args.key_column, vector_column=args.vector_column,
        dtype=args.dtype, missing=args.missing, overwrite=args.overwrite, persistent=args.persistent, metadata=metadata,
    )
    print(f"wrote {path} ({len(sources)} table(s){', for plan ' + metadata['plan_fingerprint'] if metadata else ''})")
    return 0


def _plan_metadata(plan_dir: str, tables: dict[str, str]) -> dict:
    """``plan_fingerprint`` and ``table_sizes`` of the transform plan in ``plan_dir`` (its sealed
    manifest; no transform code needed) for ``tables``, each of which must be one of its
    Categorify outputs. ValueError naming the plan or the table otherwise."""
    from pathlib import Path  # noqa: PLC0415

    from tritonrec.integrity import PLAN_FORMAT, PLAN_FORMAT_VERSION, PLAN_MANIFEST, ManifestKind, read_sealed_manifest  # noqa: PLC0415

    kind = ManifestKind(PLAN_FORMAT, PLAN_FORMAT_VERSION, "transform plan", "a transform plan", "embedding-cache", "re-export the plan",
                        ValueError)
    manifest_path, manifest = read_sealed_manifest(Path(plan_dir), PLAN_MANIFEST, kind)
    sizes = manifest.get("table_sizes")
    if not isinstance(sizes, dict):
        raise ValueError(f"{manifest_path}: records no table sizes (saved by an older tritonrec): re-export the plan")
    unknown = sorted(set(tables) - set(sizes))
    if unknown:
        raise ValueError(f"--table {unknown}: not Categorify outputs of the plan {plan_dir} (its tables: {sorted(sizes)})")
    return {"plan_fingerprint": manifest["fingerprint"], "table_sizes": {t: int(sizes[t]) for t in tables}}


def _check_keys_fit(sources: dict[str, str], key_column: str, sizes: dict[str, int]) -> None:
    """Every key of each table's parquet file is a code of the plan (0 <= key < size); else
    ValueError naming the table and the keys out of range, before anything is written."""
    import pyarrow.parquet as pq  # noqa: PLC0415 - optional dependency

    for table, source in sources.items():
        keys = np.asarray(pq.read_table(source, columns=[key_column]).column(key_column).to_numpy())
        outside = keys[(keys < 0) | (keys >= sizes[table])]
        if outside.size:
            raise ValueError(f"table {table!r}: {outside.size} key(s) outside the plan's codes 0..{sizes[table] - 1} "
                             f"(keys are the column's Categorify codes), e.g. {outside[:5].tolist()}; nothing was written")


def _info(args: argparse.Namespace) -> int:
    from embedding_cache.format import FORMAT_VERSION  # noqa: PLC0415
    from embedding_cache.store import EmbeddingStore  # noqa: PLC0415

    with EmbeddingStore(args.store, threads=1, verify=not args.no_verify) as store:
        stats = store.stats()
        print(f"{store.path}: embedding store, format version {FORMAT_VERSION}")
        if not args.no_verify:
            print(f"checksums: {store.verified_bytes:,} bytes verified in {store.verify_seconds:.2f} s")
        if store.metadata:
            print(f"metadata: {store.metadata}")
        print(f"{'table':<20} {'rows':>12} {'dim':>5} {'dtype':>8} {'missing':>8} {'host MiB':>10}")
        for t in store.tables:
            mib = stats[t.name]["tiers"]["host"]["bytes"] / 2**20
            print(f"{t.name:<20} {t.rows:>12,} {t.dim:>5} {t.dtype:>8} {t.missing:>8} {mib:>10.1f}")
        rocksdb = next(iter(stats.values()), {}).get("tiers", {}).get("rocksdb")
        if rocksdb is not None:
            print(f"RocksDB tier: {rocksdb['bytes'] / 2**20:.1f} MiB on disk")
    return 0


def _lookup(args: argparse.Namespace) -> int:
    from embedding_cache.store import EmbeddingStore  # noqa: PLC0415

    with EmbeddingStore(args.store, threads=1) as store:
        keys = np.array(args.keys, dtype=np.int64)
        found = np.empty(keys.size, dtype=np.uint8)
        rows = store.lookup(args.table, keys, found=found)
        policy = next(t.missing for t in store.tables if t.name == args.table)
        for key, row, present in zip(keys.tolist(), rows, found.tolist()):
            note = "" if present else f"  (absent: the table's missing-key policy, {policy})"
            print(f"{key}: " + " ".join(f"{v:.7g}" for v in row) + note)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedding-cache", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = argparse.ArgumentDefaultsHelpFormatter
    build = sub.add_parser("build", help="build a store from parquet files (a key column and a list-of-float column)",
                           formatter_class=defaults)
    build.add_argument("store", help="the store directory to write")
    build.add_argument("--table", action="append", required=True, metavar="NAME=FILE.parquet",
                       help="a table and its parquet file (repeat for each table)")
    build.add_argument("--key-column", default="key", help="the parquet column of integer keys")
    build.add_argument("--vector-column", default="vector", help="the parquet column of float vectors (lists of one length)")
    build.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="row storage")
    build.add_argument("--missing", choices=("zeros", "error"), default="zeros", help="missing-key policy")
    build.add_argument("--overwrite", action="store_true", help="replace a store at that path")
    build.add_argument("--persistent", action="store_true", help="keep the rows in a RocksDB tier")
    build.add_argument("--plan", metavar="PLAN_DIR",
                       help="the transform plan (a plan directory, e.g. MODEL_REPOSITORY/NAME_transform/1/plan) whose "
                            "Categorify codes the keys are: records its fingerprint and table sizes, which tritonrec export checks")
    build.set_defaults(func=_build)
    info = sub.add_parser("info", help="tables, sizes and policies of a store", formatter_class=defaults)
    info.add_argument("store", help="the store directory")
    info.add_argument("--no-verify", action="store_true", help="skip checking every file against its checksum")
    info.add_argument("--verify", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    info.set_defaults(func=_info)
    lookup = sub.add_parser("lookup", help="print the rows of keys (marking keys no tier holds)", formatter_class=defaults)
    lookup.add_argument("store", help="the store directory")
    lookup.add_argument("table", help="the table's name")
    lookup.add_argument("keys", nargs="+", type=int, help="integer keys")
    lookup.set_defaults(func=_lookup)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # the reader went away (e.g. `| head`): not an error of ours
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout
        return 0
    except (OSError, ValueError, KeyError, TypeError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"embedding-cache {args.command}: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
