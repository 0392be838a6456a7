"""The persistent tier: every table's rows in one RocksDB database (``rocksdb/`` of a store).

Opened as the primary (the one writer; RocksDB's lock keeps out a second) or as a read-only
secondary (any number beside the primary and each other). The host tier reads the keys it does
not hold through :meth:`RocksDBTier.read_through`; writes go here first (write-through).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from embedding_cache import _core
from embedding_cache.format import MANIFEST, NO_ROCKSDB, StoreFormatError

ROLES = ("primary", "secondary")


class RocksDBTier:
    """An opened RocksDB tier with per-table read-through counters.

    Args:
        tier_dir: the database directory.
        block_cache_bytes: RocksDB's block cache, in bytes (host memory).
        role: ``"primary"`` or ``"secondary"`` (its info log goes to a temporary directory,
            removed when the tier is closed or collected).

    Raises:
        StoreFormatError: RocksDB cannot open the directory (a held lock is named as such).
    """

    def __init__(self, tier_dir: Path, block_cache_bytes: int, role: str) -> None:
        self.dir = tier_dir
        self.verified_bytes = 0
        self.verify_seconds = 0.0
        self._counts: dict[int, list[int]] = {}  # table id -> [rows found, keys not found]
        secondary_path, self._cleanup = "", None
        self.secondary_dir: Path | None = None
        """A secondary's info-log directory (removed by :meth:`close`)."""
        if role == "secondary":
            secondary_path = tempfile.mkdtemp(prefix="embedding_cache-secondary-")
            self.secondary_dir = Path(secondary_path)
            self._cleanup = weakref.finalize(self, shutil.rmtree, secondary_path, True)
        try:
            self.db = _core.PersistentTier(str(tier_dir), create_if_missing=False, block_cache_bytes=block_cache_bytes,
                                           secondary_path=secondary_path)
        except RuntimeError as e:
            hint = ""
            if "lock" in str(e).lower():
                hint = " (another process has it open as the primary: open this one with role='secondary')"
            raise StoreFormatError(f"{tier_dir}: {e}{hint}") from None

    @classmethod
    def open(cls, path: Path, manifest_path: Path, persistent: Mapping[str, Any], block_cache_bytes: int, role: str,
             verify: bool) -> RocksDBTier:
        """The tier a store's manifest lists (``persistent``), in ``role``; with ``verify``, every
        table file's CRC32C checked. StoreFormatError for a build without RocksDB, a missing or damaged tier."""
        if not _core.has_rocksdb:
            raise StoreFormatError(f"{manifest_path}: this store keeps its rows in RocksDB, but {NO_ROCKSDB}")
        tier_dir = path / persistent.get("dir", "rocksdb")
        if not tier_dir.is_dir():
            raise StoreFormatError(f"{tier_dir}: missing (the store's RocksDB tier, listed in {MANIFEST})")
        tier = cls(tier_dir, block_cache_bytes, role)
        if verify:
            started = time.perf_counter()
            try:
                _files, tier.verified_bytes = tier.db.verify_file_checksums(threads=os.cpu_count() or 1)
            except RuntimeError as e:
                tier.close()
                raise StoreFormatError(f"{tier_dir}: {e}") from None
            tier.verify_seconds = time.perf_counter() - started
        return tier

    def read_through(self, table: int, dtype: str, keys: np.ndarray, out: np.ndarray,
                     found: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reads the keys with ``found`` 0 from table ``table``, fills them in.

        Args: ``keys`` int64 (n,), ``out`` float32 (n, dim) and ``found`` uint8 (n,) host arrays,
        views allowed (written in place where a row is found). Returns the keys found (int64 (m,))
        and their rows (float32 (m, dim)), C-contiguous, for the host tier to admit."""
        missed = np.flatnonzero(found == 0)
        buffer = np.empty((missed.size, out.shape[1]), dtype=dtype)
        in_tier = np.empty(missed.size, dtype=np.uint8)
        got = int(self.db.multi_get(table, np.ascontiguousarray(keys[missed]), buffer, in_tier))
        counts = self._counts.setdefault(table, [0, 0])
        counts[0] += got
        counts[1] += missed.size - got
        present = in_tier.astype(bool)
        rows = np.ascontiguousarray(buffer[present], dtype=np.float32)
        if got:
            out[missed[present]] = rows
            found[missed[present]] = 1
        return np.ascontiguousarray(keys[missed[present]]), rows

    def counters(self, table: int) -> tuple[int, int]:
        """(keys looked up here, keys not found) of table ``table`` since the tier opened."""
        hits, misses = self._counts.get(table, (0, 0))
        return hits + misses, misses

    def count(self, table: int) -> int:
        """Rows of table ``table``."""
        return int(self.db.count(table))

    def scan(self, table: int, dim: int, dtype: str, chunk: int, fn: Callable[[np.ndarray, np.ndarray], None]) -> None:
        """Calls ``fn(keys int64 (m,), rows dtype (m, dim))`` for every row of the table, ``chunk`` at a time."""
        self.db.scan(table, dim, dtype, chunk, fn)

    def multi_get(self, table: int, keys: np.ndarray, out: np.ndarray, found: np.ndarray) -> int:
        """RocksDB's MultiGet of int64 (n,) keys into ``out`` (n, dim) of the table's dtype; returns the rows found."""
        return int(self.db.multi_get(table, keys, out, found))

    def put(self, table: int, keys: np.ndarray, rows: np.ndarray, where: Path) -> None:
        """Writes rows (of the table's dtype); OSError naming ``where`` when RocksDB fails."""
        try:
            self.db.put(table, keys, rows)
        except RuntimeError as e:
            raise OSError(f"{where}: writing to RocksDB failed: {e}") from None

    def erase(self, table: int, keys: np.ndarray) -> int:
        return int(self.db.erase(table, keys))

    def compact(self) -> None:
        self.db.compact()

    def catch_up(self) -> bool:
        """A secondary: reads the primary's later writes; True when there were any."""
        before = self.db.sequence_number
        self.db.catch_up()
        return self.db.sequence_number != before

    @property
    def is_secondary(self) -> bool:
        return bool(self.db.is_secondary)

    @property
    def disk_bytes(self) -> int:
        """RocksDB's live data on disk, all tables together."""
        return int(self.db.disk_bytes)

    def close(self) -> None:
        """Closes the database and removes a secondary's info-log directory."""
        self.db = None
        if self._cleanup is not None:
            self._cleanup()
