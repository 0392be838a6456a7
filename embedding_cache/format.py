"""The store directory format (version 2): its manifest, tables, checks of keys and rows.

A store is a directory: ``store.json`` (format version, tables, missing-key policies, free-form
metadata, the size and SHA-256 of every file, sealed by its own SHA-256) and
``tables/<i>.keys.npy`` (int64 (n,)) and ``tables/<i>.rows.npy`` ((n, dim) float32 or float16) per
table, or a RocksDB database (``rocksdb/``, every table file with a whole-file CRC32C in RocksDB's
MANIFEST). :mod:`embedding_cache.build` writes it; :class:`embedding_cache.EmbeddingStore` reads it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tritonrec.integrity import IntegrityError, ManifestKind, read_sealed_manifest, verify_files

FORMAT = "tritonrec.embedding_store"
FORMAT_VERSION = 2  # 2: SHA-256 of every file, a sealed manifest, RocksDB file checksums
MANIFEST = "store.json"
DTYPES = ("float32", "float16")
LOAD_CHUNK = 1 << 20  # rows written or inserted per call
NO_ROCKSDB = (
    "this build of embedding_cache has no RocksDB tier (built with TRITONREC_ROCKSDB=OFF or without "
    "librocksdb-dev); see embedding_cache._core.has_rocksdb"
)


class StoreFormatError(OSError):
    """A store directory cannot be opened; the message names the file and the reason."""


@dataclasses.dataclass(frozen=True)
class TableInfo:
    """A table of a store: name, rows held now, dim, storage dtype, missing-key policy."""

    name: str
    rows: int
    dim: int
    dtype: str
    missing: str


def as_keys(keys: Any, what: str) -> np.ndarray:
    """Host keys as int64 (n,) C-contiguous; TypeError / ValueError naming ``what`` otherwise."""
    if not isinstance(keys, np.ndarray):
        raise TypeError(f"{what}: expected a numpy array of int64 keys, got {type(keys).__name__}")
    if keys.dtype.kind not in "iu":
        raise TypeError(f"{what}: expected integer keys (int64), got dtype {keys.dtype}")
    if keys.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D array of keys, got shape {keys.shape}")
    if keys.dtype.kind == "u" and keys.size and int(keys.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{what}: keys above 2**63-1 do not fit int64")
    return np.ascontiguousarray(keys, dtype=np.int64)


def as_rows(rows: Any, n: int, dim: int | None, what: str) -> np.ndarray:
    """Host rows as float32 (n, dim) C-contiguous; TypeError / ValueError naming ``what`` otherwise."""
    rows = np.asarray(rows)
    if rows.dtype.kind != "f":
        raise TypeError(f"{what}: expected floating-point rows, got dtype {rows.dtype}")
    if rows.ndim != 2 or rows.shape[0] != n or (dim is not None and rows.shape[1] != dim):
        expected = f"({n}, {dim if dim is not None else 'dim'})"
        raise ValueError(f"{what}: expected rows of shape {expected}, got {rows.shape}")
    return np.ascontiguousarray(rows, dtype=np.float32)


def read_manifest(path: Path) -> tuple[Path, dict[str, Any]]:
    """``(path/store.json, its content)``, checked to be a store manifest of this format version
    whose seal (its own SHA-256) matches its content.

    Raises:
        StoreFormatError: no such file, not JSON, another format or format version, a broken seal.
    """
    return read_sealed_manifest(path, MANIFEST, ManifestKind(
        FORMAT, FORMAT_VERSION, "embedding store", "an embedding store", "embedding_cache", "rebuild the store", StoreFormatError))


def read_store_info(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[TableInfo]]:
    """A store's metadata and tables from its manifest, without loading any rows.

    Returns:
        ``(metadata, tables)``: the free-form metadata given to :func:`build_store`, and per
        table its name, rows at build time, dim, dtype and missing-key policy.

    Raises:
        StoreFormatError: no store at ``path``, or a damaged manifest.
    """
    manifest_path, manifest = read_manifest(Path(path))
    try:
        tables = [
            TableInfo(e["name"], int(e["rows"]), int(e["dim"]), e["dtype"], e.get("missing", {"policy": "zeros"})["policy"])
            for e in manifest["tables"]
        ]
    except (KeyError, TypeError, ValueError) as e:
        raise StoreFormatError(f"{manifest_path}: damaged ({type(e).__name__}: {e})") from None
    return dict(manifest.get("metadata", {})), tables


def verify_npy(path: Path, manifest: Mapping[str, Any], manifest_path: Path) -> tuple[int, float]:
    """Checks every table's keys and rows file against its size and SHA-256; returns (bytes
    verified, seconds taken). StoreFormatError naming the file otherwise."""
    started = time.perf_counter()
    try:
        refs = [e[part] for e in manifest["tables"] for part in ("keys", "values")]
        verified = verify_files(path, refs, manifest_path)
    except IntegrityError as e:
        raise StoreFormatError(str(e)) from None
    except (KeyError, TypeError, ValueError) as e:
        raise StoreFormatError(f"{manifest_path}: damaged ({type(e).__name__}: {e})") from None
    return verified, time.perf_counter() - started


def load_array(path: Path, ref: Mapping[str, Any], dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """A table file (``ref``: its manifest entry) memory-mapped, checked for size, dtype and shape."""
    file = path / ref["file"]
    try:
        size = file.stat().st_size
    except FileNotFoundError:
        raise StoreFormatError(f"{file}: missing (listed in {MANIFEST})") from None
    if size != ref["bytes"]:
        raise StoreFormatError(f"{file}: {size} bytes, {MANIFEST} says {ref['bytes']}: truncated or damaged")
    try:
        array = np.load(file, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise StoreFormatError(f"{file}: damaged ({e})") from None
    if array.dtype != dtype or array.shape != shape:
        raise StoreFormatError(f"{file}: holds {array.dtype} {array.shape}, expected {dtype} {shape}")
    return array
