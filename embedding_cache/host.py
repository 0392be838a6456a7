"""The host tier: every table in a :class:`embedding_cache._core.HostTable` (rows in slabs, a hash
index, lookups on a thread pool with the GIL released), over an optional RocksDB tier.

With a host memory budget the tables start empty and keep the most used rows; the keys they miss
are read from RocksDB (:meth:`HostTier.complete`, the one read-through path of every lookup) and
offered to the table. Keys that no tier holds get the table's missing-key policy.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedding_cache import _core
from embedding_cache.format import DTYPES, LOAD_CHUNK, StoreFormatError, load_array
from embedding_cache.options import HostOptions
from embedding_cache.policy import POLICIES, MissingPolicy
from embedding_cache.rocksdb import RocksDBTier

_SLAB_ROWS = 1 << 16  # most rows per slab
_ROW_OVERHEAD = 24  # host bytes per cached row beyond its values (index slot, key, flags), for budgets


@dataclasses.dataclass(frozen=True)
class _Table:
    """A table as the manifest lists it: position ``id`` (its RocksDB table number), dim, dtype, policy."""

    id: int
    dim: int
    dtype: str
    policy: MissingPolicy


class HostTier:
    """The host tables of a store, opened from its manifest's ``entries``.

    Args:
        path: the store directory (its ``.npy`` files, when it has no RocksDB tier).
        entries: the manifest's ``tables`` list.
        manifest_path: for error messages.
        options: threads and the host memory budget (which needs ``rocksdb``).
        rocksdb: the store's RocksDB tier, or None.
        spin_us: how long the thread pool's idle workers watch for the next call before sleeping
            (microseconds; -1: ``TRITONREC_POOL_SPIN_US``, else 0), which the environment variable overrides.

    Raises:
        StoreFormatError: a table of an unknown dtype or missing-key policy, a missing or damaged file.
    """

    def __init__(self, path: Path, entries: Sequence[Mapping[str, Any]], manifest_path: Path, options: HostOptions,
                 rocksdb: RocksDBTier | None, spin_us: int = -1) -> None:
        self.path = path
        # spin_us: how long idle workers watch for the next call; TRITONREC_POOL_SPIN_US, where set, wins (-1)
        self.pool = _core.ThreadPool(options.threads or 0, -1 if "TRITONREC_POOL_SPIN_US" in os.environ else spin_us)
        self.budget = options.budget_bytes
        self.rocksdb = rocksdb
        self.entries = list(entries)
        self._manifest_path = manifest_path
        self.tables: dict[str, _core.HostTable] = {}
        self.info: dict[str, _Table] = {}
        self.open()

    def open(self) -> None:
        """(Re)builds every table: all rows, or, with a budget, empty (filled from RocksDB on demand)."""
        total = sum(int(e["rows"]) * int(e["dim"]) * np.dtype(e["dtype"]).itemsize for e in self.entries) or 1
        for i, entry in enumerate(self.entries):
            self._open_table(i, entry, total)

    def _open_table(self, i: int, entry: Mapping[str, Any], total_bytes: int) -> None:
        name, n, dim, dtype = entry["name"], int(entry["rows"]), int(entry["dim"]), entry["dtype"]
        if dtype not in DTYPES:
            raise StoreFormatError(f"{self._manifest_path}: table {name!r} has dtype {dtype!r}: expected one of {DTYPES}")
        policy = MissingPolicy.from_json(entry.get("missing"))
        if policy.policy not in POLICIES:
            raise StoreFormatError(f"{self._manifest_path}: table {name!r} has missing-key policy {policy.policy!r}")
        row_bytes = dim * np.dtype(dtype).itemsize
        if self.rocksdb is not None:
            n = self.rocksdb.count(i)
        max_rows = 0
        if self.budget is not None:  # the budget is shared in proportion to each table's raw size
            share = self.budget * (int(entry["rows"]) * row_bytes) / total_bytes
            max_rows = max(1, int(share // (row_bytes + _ROW_OVERHEAD)))
        resident = min(n, max_rows) if max_rows else n
        slabs = max(1, -(-resident // _SLAB_ROWS))
        slab_rows = max(1024, -(-resident // slabs))  # the rows fill whole slabs: no slack after loading
        table = _core.HostTable(dim, getattr(_core.RowDtype, dtype), slab_rows=slab_rows, expected_rows=resident, max_rows=max_rows)
        if self.rocksdb is None:
            self._load_npy(table, entry, n, dim, dtype)
        elif not max_rows:  # no budget: every row from RocksDB into host memory
            self.rocksdb.scan(i, dim, dtype, LOAD_CHUNK, lambda k, r: table.insert_or_assign(k, np.ascontiguousarray(r, dtype=np.float32)))
        self.tables[name] = table
        self.info[name] = _Table(i, dim, dtype, policy)

    def _load_npy(self, table: Any, entry: Mapping[str, Any], n: int, dim: int, dtype: str) -> None:
        keys = load_array(self.path, entry["keys"], np.dtype(np.int64), (n,))
        rows = load_array(self.path, entry["values"], np.dtype(dtype), (n, dim))
        for start in range(0, n, LOAD_CHUNK):
            chunk = slice(start, start + LOAD_CHUNK)
            table.insert_or_assign(np.ascontiguousarray(keys[chunk]), np.ascontiguousarray(rows[chunk], dtype=np.float32))

    def lookup(self, name: str, keys: np.ndarray, out: np.ndarray, found: np.ndarray, missing: MissingPolicy | None) -> np.ndarray:
        """int64 (n,) ``keys`` -> float32 (n, dim) ``out``; ``found`` uint8 (n,) set where a tier
        holds the key (all host, C-contiguous, checked by the caller). Returns ``out``."""
        hits = int(self.tables[name].find(keys, out, found, self.pool))
        self.complete(name, keys, out, found, hits, missing)
        return out

    def lookup_columns(self, names: Sequence[str], keys: np.ndarray, out: np.ndarray, found: np.ndarray,
                       missing: Sequence[MissingPolicy | None] | None) -> np.ndarray:
        """int64 (n, k) ``keys``, column j in ``names[j]`` -> float32 (n, k, dim) ``out``, one call
        for all columns; ``found`` uint8 (n, k). Returns ``out``."""
        hits = _core.find_columns([self.tables[t] for t in names], keys, out, found, self.pool)
        for j in np.flatnonzero(hits != keys.shape[0]):
            # Column views, written through: the rows read from RocksDB land in out and found
            # themselves. (Copies made only where needed once lost them when n == 1, because a
            # one-element column counts as contiguous and ascontiguousarray returned the view.)
            self.complete(names[j], keys[:, j], out[:, j], found[:, j], int(hits[j]), None if missing is None else missing[j])
        return out

    def complete(self, name: str, keys: np.ndarray, out: np.ndarray, found: np.ndarray, hits: int,
                 missing: MissingPolicy | None) -> None:
        """After the host table's find (``hits`` of n keys): reads the rest from RocksDB (with a
        budget), offers those rows to the table, applies ``missing`` (None: the table's policy) to
        the keys no tier holds. ``keys``, ``out``, ``found`` may be column views."""
        n = keys.shape[0]
        info, table = self.info[name], self.tables[name]
        if hits != n and self.rocksdb is not None and table.max_rows:
            got_keys, got_rows = self.rocksdb.read_through(info.id, info.dtype, keys, out, found)
            if got_keys.size:
                table.admit(got_keys, got_rows)
            hits += got_keys.size
        if hits != n:
            (info.policy if missing is None else missing).apply(name, keys, out, found == 0)

    def counters(self, name: str) -> tuple[int, int]:
        """(keys looked up, keys missed) of a table's host tier."""
        stats = self.tables[name].stats()
        return int(stats["lookups"]), int(stats["misses"])
