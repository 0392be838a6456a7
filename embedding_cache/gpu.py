"""The GPU tier: per table, a cache of hot rows in device memory ahead of the host store.

A lookup of device keys runs the cache's lookup kernel on the caller's stream (hits gathered
in-kernel, misses listed), then reads the misses from the host tiers (host store, RocksDB), writes
them into the output and inserts the ones that exist into the cache. The output is always the true
row of every key that exists anywhere; keys that exist nowhere get the table's missing-key policy
and are not cached. Only the lookup's own stream is synchronised (to learn the number of misses),
never the device.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np

from embedding_cache import _core

DTYPES = ("float32", "float16")
EVICTIONS = ("lru", "lfu")


def _cupy() -> Any:
    try:
        import cupy  # noqa: PLC0415 - optional dependency (extra "gpu")
    except ImportError as e:
        raise ImportError("the GPU tier needs cupy (pip install 'tritonrec[gpu]')") from e
    return cupy


@dataclasses.dataclass
class _TableCache:
    cache: Any
    dim: int
    lookups: int = 0
    misses: int = 0


class GpuTier:
    """GPU caches of a store's tables on one device.

    Args:
        tables: table name -> dim.
        device: CUDA device number.
        capacity_bytes: device memory for all tables' caches together, shared in proportion to
            each table's ``weights`` entry (rows held = bytes / per-row bytes, at least one set of 16).
        weights: table name -> share weight (e.g. the table's row count).
        dtype: row storage, ``"float32"`` or ``"float16"`` (lookups return float32).
        eviction: ``"lru"`` or ``"lfu"``.
        admission: TinyLFU admission: a missed row replaces a full set's victim only if a
            frequency sketch of the misses saw its key more often than the victim was used.
    """

    def __init__(
        self,
        tables: dict[str, int],
        device: int,
        capacity_bytes: int,
        weights: dict[str, float],
        dtype: str = "float32",
        eviction: str = "lru",
        admission: bool = False,
    ) -> None:
        if not _core.has_cuda:
            raise RuntimeError("this build of embedding_cache has no CUDA sources (built without nvcc)")
        if dtype not in DTYPES:
            raise ValueError(f"gpu_cache_dtype {dtype!r}: expected one of {DTYPES}")
        if eviction not in EVICTIONS:
            raise ValueError(f"gpu_eviction {eviction!r}: expected one of {EVICTIONS}")
        if capacity_bytes < 1:
            raise ValueError(f"gpu_cache_bytes {capacity_bytes}: expected >= 1")
        count, error = _core.cuda_device_count()
        if not 0 <= device < count:
            raise ValueError(f"device {device}: this process sees {count} CUDA device(s){f' ({error})' if error else ''}")
        self.cp = _cupy()
        self.device = device
        row_dtype = getattr(_core.GpuRowDtype, dtype)
        total = sum(weights.values()) or 1.0
        self._tables: dict[str, _TableCache] = {}
        for name, dim in tables.items():
            share = capacity_bytes * weights[name] / total
            rows = max(16, int(share // _core.gpu_cache_slot_bytes(dim, row_dtype)))
            self._tables[name] = _TableCache(_core.GpuCache(rows, dim, row_dtype, eviction, device, bool(admission)), dim)
        self._tick = 0
        self._pinned = None  # pinned staging memory for missed rows
        self._pinned_bytes = 0
        self._staging_done = None  # event: the staging buffer's last copy to the device
        self._pending_inserts: list[Any] = []  # events of inserts that may not have run yet

    def _stream(self, stream: Any) -> Any:
        cp = self.cp
        if stream is None:
            return cp.cuda.get_current_stream()
        handle = stream if isinstance(stream, int) else getattr(stream, "cuda_stream", None)  # torch.cuda.Stream
        if handle is None:
            return stream  # a cupy stream
        with warnings.catch_warnings():  # cupy 14 deprecates ExternalStream for objects; raw handles need it
            warnings.simplefilter("ignore", DeprecationWarning)
            return cp.cuda.ExternalStream(handle, self.device)

    def lookup(self, table: str, keys: Any, read_host: Any, out: Any = None, stream: Any = None) -> Any:
        """Rows of device ``keys`` (cupy int64 (n,)) as cupy float32 (n, dim) on the cache's device.

        Args:
            read_host: ``(keys int64 (m,) host, found uint8 (m,) host, out float32 (m, dim) host)``:
                the host tiers' lookup into ``out`` (applies the table's missing-key policy).
            out: optional cupy float32 (n, dim) C-contiguous array.
            stream: a cupy stream, a torch CUDA stream or a raw handle; default cupy's current stream.
        """
        cp = self.cp
        entry = self._tables[table]
        n = int(keys.shape[0])
        s = self._stream(stream)
        self._tick += 1
        with cp.cuda.Device(self.device), s:
            if out is None:
                out = cp.empty((n, entry.dim), dtype=cp.float32)
            miss_index = cp.empty(max(n, 1), dtype=cp.int32)
            miss_count = cp.empty(1, dtype=cp.int32)
            entry.cache.find(keys.data.ptr, n, out.data.ptr, miss_index.data.ptr, miss_count.data.ptr, self._tick, s.ptr)
            misses = int(miss_count.get(stream=s)[0])  # waits for this stream only
            entry.lookups += n
            entry.misses += misses
            if misses:
                self._fill_misses(entry, keys, out, miss_index[:misses], read_host, s)
        return out

    def _staging(self, rows: int, dim: int) -> np.ndarray:
        """A pinned host float32 (rows, dim) buffer, reused across lookups (grown when needed)."""
        need = rows * dim * 4
        if self._pinned is None or self._pinned_bytes < need:
            self._pinned_bytes = max(need, 1 << 20)
            self._pinned = self.cp.cuda.alloc_pinned_memory(self._pinned_bytes)
        return np.frombuffer(self._pinned, dtype=np.float32, count=rows * dim).reshape(rows, dim)

    def _fill_misses(self, entry: _TableCache, keys: Any, out: Any, index: Any, read_host: Any, s: Any) -> None:
        """Reads the missed keys' rows from the host tiers into ``out`` and offers them to the cache.

        Duplicates are removed on the device first; the host writes the rows straight into pinned
        memory, from which one asynchronous copy takes them to the device.
        """
        cp = self.cp
        if self._staging_done is not None:
            self._staging_done.synchronize()  # the previous lookup's copy out of the staging buffer
        unique_keys, inverse = cp.unique(keys[index], return_inverse=True)
        host_keys = cp.asnumpy(unique_keys, stream=s)  # waits for this stream only
        found = np.empty(host_keys.size, dtype=np.uint8)
        staged = self._staging(host_keys.size, entry.dim)
        read_host(host_keys, found, staged)
        rows_dev = cp.empty((host_keys.size, entry.dim), dtype=cp.float32)
        rows_dev.set(staged, stream=s)
        self._staging_done = s.record()
        out[index] = rows_dev[inverse.reshape(-1)]
        present = np.flatnonzero(found)
        if present.size:
            if present.size != found.size:
                take = cp.asarray(present)
                unique_keys, rows_dev = unique_keys[take], rows_dev[take]
            # cupy's memory pool reuses freed blocks on the same stream only, so these arrays may
            # be released before the insert runs
            entry.cache.insert(unique_keys.data.ptr, rows_dev.data.ptr, int(unique_keys.size), self._tick, s.ptr)
            # an update must not be overtaken by this insert of rows read before it (see invalidate)
            self._pending_inserts = [e for e in self._pending_inserts if not e.done] + [s.record()]

    def invalidate(self, table: str, keys: np.ndarray) -> None:
        """Drops host ``keys`` (int64 (n,)) from the table's cache; returns when done (a later
        lookup on any stream cannot see the old rows). Inserts that earlier lookups queued are
        waited for first, so none can put back a row read before the update."""
        cp = self.cp
        if keys.size == 0:
            return
        for event in self._pending_inserts:  # inserts queued by earlier lookups, on any stream, first
            event.synchronize()
        self._pending_inserts = []
        with cp.cuda.Device(self.device):
            s = cp.cuda.Stream(non_blocking=True)
            with s:
                keys_dev = cp.asarray(np.ascontiguousarray(keys, dtype=np.int64))
                self._tables[table].cache.invalidate(keys_dev.data.ptr, keys.size, s.ptr)
            s.synchronize()

    def stats(self, table: str) -> dict[str, int]:
        """``hits``, ``misses``, ``capacity_rows`` and ``bytes`` (device memory) of a table's cache."""
        entry = self._tables[table]
        return {
            "hits": entry.lookups - entry.misses,
            "misses": entry.misses,
            "capacity_rows": int(entry.cache.capacity_rows),
            "bytes": int(entry.cache.bytes),
        }
