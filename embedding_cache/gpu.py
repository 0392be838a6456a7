"""The GPU tier: per table, a cache of hot rows in device memory ahead of the host store.

A lookup of device keys (one column per table: ``(n, k)`` keys, ``k`` tables, one call) runs in one
C++ call with the GIL released (``_core.GpuTierLookup``): the keys are cut into a few chunks (the
first and last half the others), every chunk's lookup kernels (hits gathered in-kernel, misses
listed) are queued on the caller's stream at once, and then chunk by chunk the host waits for that
chunk's missed keys (written by the GPU into mapped pinned memory), reads them from the host tables
into pinned memory with non-temporal stores (the thread pool; rows left dirty in the cores' caches
were copied to the device at a third of the rate), and
queues their copy to the device, one kernel writing them into the output, and the inserts of the rows
that exist into the caches: one chunk's rows are read while the last one's are copied and inserted.
Keys the host tables do not hold go to the host tier's ``complete`` (RocksDB read-through, the
missing-key policy). The output is always the true row of every key that exists anywhere; keys
that exist nowhere get the table's missing-key policy and are not cached. Only the lookup's own
stream is waited on, never the device.

With ``async_insert`` the inserts run on a stream of the tier's own, off the lookup's stream: the
lookup's output is ready as soon as the misses are written, whatever the inserts cost. Inserts and
lookups on different streams are safe: the insert kernel writes each slot as a seqlock writer and
the lookup kernel re-checks each hit's slot after copying its row (a changed slot counts as a miss).

Several threads may look up at once, each on its own stream: their misses go through two pinned
stagings (double-buffered; more callers wait for one in the order they came), so one caller's rows
are read from the host while another's are copied. A call holds the GIL only while the host tier
completes keys its host tables lack. Each cache's LRU clock is read once the call has its staging.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from embedding_cache import _core
from embedding_cache.options import GpuCacheOptions

OUT_DTYPES = ("float32", "float16")

# complete(column, keys int64 (m,), rows float32 (m, dim), found uint8 (m,), hits): after the host
# table found `hits` of a column's m missed keys (found set where it did, their rows in `rows`), the
# lower tiers' read and the missing-key policy for the rest. All host, valid during the call only.
CompleteMisses = Callable[[int, np.ndarray, np.ndarray, np.ndarray, int], None]

_STAGINGS = 2  # concurrent lookups' pinned stagings (double-buffered)
_CHUNKS = 4  # a lone lookup's keys are cut into at most this many chunks (the H200 A/B in RESULTS, with _TAPER and _STREAM_ROWS: 4 led one caller)
_MIN_CHUNK_ROWS = 65_536  # fewest key rows a chunk (each costs a wait, a host call and a copy)
_TAPER = True  # first and last chunks half the others (_core.lookup_chunks): the reads start sooner, less is left after them
_STREAM_ROWS = True  # missed rows written into the pinned staging with non-temporal stores (past the CPU's caches)
_COPY_STREAM = True  # the rows' copies on a stream of each staging's own (a chunk's copy need not wait for the last one's inserts; the H200 A/Bs in RESULTS: 7-12% less time a lone call at 0.90 hits)
_SEND_BESIDE_READ = True  # a lone call queues chunk c - 1's copies, scatter and inserts while the pool's workers read chunk c (the H200 A/B in RESULTS: 0.98 hits 11% less time a call, 0.90 hits 6%)
_CROWDED_COPY_STREAM = False  # with _COPY_STREAM, a call that starts while another is in flight copies on it too (else on its own stream; no gain measured, once 8% lost with 4 callers)
_CROWDED_CHUNKS = 2  # chunks (not tapered) of a call that starts while another is in flight (the interleaved H200 A/B in RESULTS: at 0.98 hits 14-24% less time a call with 2-4 callers)


def _cupy() -> Any:
    try:
        import cupy  # noqa: PLC0415 - optional dependency (extra "gpu")
    except ImportError as e:
        raise ImportError("the GPU tier needs cupy (pip install 'tritonrec[gpu]')") from e
    return cupy


class GpuTier:
    """GPU caches of a store's tables on one device.

    Args:
        tables: table name -> dim.
        device: CUDA device number.
        options: the cache's :class:`GpuCacheOptions`: ``cache_bytes`` of device memory for all
            tables' caches together, shared in proportion to each table's ``weights`` entry (rows
            held = bytes / per-row bytes, at least 4,096: 256 sets of 16); row ``dtype`` (hits are the
            stored rows, rounded to nearest even; misses are the host's rows); ``eviction``;
            TinyLFU ``admission`` (a missed row replaces a full set's victim only if a frequency
            sketch of the misses saw its key more often than the victim was used); ``async_insert``
            (insert missed rows on the tier's own stream instead of the lookup's).
        weights: table name -> share weight (e.g. the table's row count).
    """

    def __init__(self, tables: dict[str, int], device: int, options: GpuCacheOptions, weights: dict[str, float]) -> None:
        if not _core.has_cuda:
            raise RuntimeError("this build of embedding_cache has no CUDA sources (built without nvcc)")
        count, error = _core.cuda_device_count()
        if not 0 <= device < count:
            raise ValueError(f"device {device}: this process sees {count} CUDA device(s){f' ({error})' if error else ''}")
        self.cp = _cupy()
        self.device = device
        self.async_insert = bool(options.async_insert)
        row_dtype = getattr(_core.GpuRowDtype, options.dtype)
        total = sum(weights.values()) or 1.0
        self._tables: dict[str, Any] = {}  # table -> its _core.GpuCache
        for name, dim in tables.items():
            share = options.cache_bytes * weights[name] / total
            rows = max(_core.gpu_cache_min_rows, int(share // _core.gpu_cache_slot_bytes(dim, row_dtype, options.admission)))
            self._tables[name] = _core.GpuCache(rows, dim, row_dtype, options.eviction, device, options.admission)
        self._lookup = _core.GpuTierLookup(device, _STAGINGS, _CHUNKS, _MIN_CHUNK_ROWS, self.async_insert, _TAPER, _STREAM_ROWS,
                                           _COPY_STREAM, min(_CROWDED_CHUNKS, _CHUNKS), _CROWDED_COPY_STREAM, _SEND_BESIDE_READ)

    def stream_of(self, stream: Any) -> Any:
        """The cupy stream of a lookup's ``stream`` argument (see :meth:`lookup_columns`)."""
        cp = self.cp
        if stream is None:
            return cp.cuda.get_current_stream()
        handle = stream if isinstance(stream, int) else getattr(stream, "cuda_stream", None)  # torch.cuda.Stream
        if handle is None:
            return stream  # a cupy stream
        with warnings.catch_warnings():  # cupy 14 deprecates ExternalStream for objects; raw handles need it
            warnings.simplefilter("ignore", DeprecationWarning)
            return cp.cuda.ExternalStream(handle, self.device)

    def dim_of(self, table: str) -> int:
        return int(self._tables[table].dim)

    def lookup_columns(
        self,
        tables: Sequence[str],
        keys: Any,
        hosts: Sequence[Any],
        pool: Any,
        complete: CompleteMisses,
        out: Any = None,
        out_dtype: str = "float32",
        stream: Any = None,
    ) -> Any:
        """Rows of device ``keys`` (cupy int64 (n, k) C-contiguous; column j in ``tables[j]``, all of
        one dim) as cupy (n, k, dim) of ``out_dtype`` (``"float32"`` or ``"float16"``) on the tier's device.

        Args:
            hosts: per column, the table's ``_core.HostTable`` (its misses are read from it).
            pool: the ``_core.ThreadPool`` the host tables are read on.
            complete: the lower tiers and the missing-key policy of keys the host tables lack (see
                :data:`CompleteMisses`); what it raises, the lookup raises.
            out: optional cupy (n, k, dim) C-contiguous array of ``out_dtype``.
            stream: a cupy stream, a torch CUDA stream or a raw handle; default cupy's current stream.
        """
        cp = self.cp
        caches = [self._tables[t] for t in tables]
        dims = {int(c.dim) for c in caches}
        if len(dims) != 1:
            raise ValueError(f"tables {list(tables)}: expected one dim, got {sorted(dims)}")
        if out_dtype not in OUT_DTYPES:
            raise ValueError(f"out_dtype {out_dtype!r}: expected one of {OUT_DTYPES}")
        dim = dims.pop()
        n = int(keys.shape[0])
        s = self.stream_of(stream)
        with cp.cuda.Device(self.device), s:
            if out is None:
                out = cp.empty((n, len(caches), dim), dtype=out_dtype)
            if n == 0:
                return out
            self._lookup.lookup(caches, list(hosts), keys.data.ptr, n, out.data.ptr,
                                getattr(_core.GpuOutDtype, out_dtype), s.ptr, pool, complete)
        return out

    def invalidate(self, table: str, keys: np.ndarray) -> None:
        """Drops host ``keys`` (int64 (n,)) from the table's cache; returns when done (a later
        lookup on any stream cannot see the old rows). Inserts that earlier lookups queued are
        waited for first, and lookups still reading rows from the host will not insert them."""
        if keys.size:
            self._lookup.invalidate(self._tables[table], np.ascontiguousarray(keys, dtype=np.int64))

    def stats(self, table: str) -> dict[str, int]:
        """``hits``, ``misses``, ``capacity_rows`` and ``bytes`` (device memory) of a table's cache
        (hits and misses as the lookups counted them in C++, chunk by chunk)."""
        cache = self._tables[table]
        lookups, misses = int(cache.lookups), int(cache.misses)
        return {
            "hits": lookups - misses,
            "misses": misses,
            "capacity_rows": int(cache.capacity_rows),
            "bytes": int(cache.bytes),
        }
