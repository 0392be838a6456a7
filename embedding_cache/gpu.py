"""The GPU tier: per table, a cache of hot rows in device memory ahead of the host store.

A lookup of device keys (one column per table: ``(n, k)`` keys, ``k`` tables, one call) runs each
table's lookup kernel on the caller's stream (hits gathered in-kernel, misses listed), learns the
miss counts (one wait on that stream), gathers the missed keys of all tables into one list (a
second wait), reads them from the host tiers (host store, RocksDB) straight into pinned memory, and
sends them back with one asynchronous copy, after which one kernel writes them into the output and
the tables' caches are offered the rows that exist. The output is always the true row of every key
that exists anywhere; keys that exist nowhere get the table's missing-key policy and are not cached.
Only the lookup's own stream is waited on, never the device.

With ``async_insert`` the inserts run on a stream of the tier's own, off the lookup's stream: the
lookup's output is ready as soon as the misses are written, whatever the inserts cost. Inserts and
lookups on different streams are safe: the insert kernel writes each slot as a seqlock writer and
the lookup kernel re-checks each hit's slot after copying its row (a changed slot counts as a miss).

Several threads may look up at once, each on its own stream: their misses go through two pinned
stagings (double-buffered), so one caller's rows are read from the host while another's are copied.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from embedding_cache import _core
from embedding_cache.options import GpuCacheOptions

OUT_DTYPES = ("float32", "float16")

# read_host(column, keys int64 (m,) host, found uint8 (m,) host, out float32 (m, dim) host): the
# host tiers' lookup of one column's (unique) missed keys into `out`, with the table's missing-key
# policy applied; `found` set to 1 where a key exists.
ReadHost = Callable[[int, np.ndarray, np.ndarray, np.ndarray], None]


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
    misses: int = 0  # also the LRU clock's input (see tick)
    generation: int = 0  # bumped by each invalidation: rows read before it are not inserted after

    @property
    def tick(self) -> int:
        """The table's LRU clock (uint32): one tick per 1/16 of the capacity missed, so it stands
        still while lookups hit and a hit writes its slot's tick only when the clock moved."""
        return _core.lru_clock(self.misses, self.cache.capacity_rows)


class _Pinned:
    """A growable pinned host buffer, reused across lookups."""

    def __init__(self, cp: Any) -> None:
        self.cp = cp
        self.memory = None
        self.nbytes = 0

    def take(self, nbytes: int) -> np.ndarray:
        """uint8 (nbytes,) view of the buffer (grown when needed, to a power of two of at least 1 MiB,
        so that calls of about one size do not pin new memory again and again: pinning tens of MB
        takes milliseconds)."""
        if self.memory is None or self.nbytes < nbytes:
            self.nbytes = max(1 << 20, 1 << (nbytes - 1).bit_length(), 2 * self.nbytes)
            self.memory = self.cp.cuda.alloc_pinned_memory(self.nbytes)
        return np.frombuffer(self.memory, dtype=np.uint8, count=nbytes)


class _Staging:
    """One lookup's pinned buffers for its misses (held under ``lock`` from the missed keys' copy
    to the host until the rows' copies to the device are queued)."""

    def __init__(self, cp: Any) -> None:
        self.lock = threading.Lock()
        self.to_host = _Pinned(cp)  # missed keys, device -> host
        self.to_device = _Pinned(cp)  # unique keys, row indices and rows, host -> device
        self.done = None  # event: the last copy out of to_device (the next user waits for it)


class _StagingPool:
    """``count`` stagings shared by a tier's concurrent lookups (double-buffered at 2: while one
    caller's rows are copied to the device out of one, another caller reads its misses into the
    next). A lookup takes the first free one, so a lone caller always takes the first (pinned
    memory is only taken by stagings that are used); with none free it waits for the first."""

    def __init__(self, cp: Any, count: int) -> None:
        if count < 1:
            raise ValueError(f"staging count {count}: expected >= 1")
        self.stagings = [_Staging(cp) for _ in range(count)]

    @contextlib.contextmanager
    def take(self) -> Any:
        for staging in self.stagings:
            if staging.lock.acquire(blocking=False):
                break
        else:
            staging = self.stagings[0]
            staging.lock.acquire()
        try:
            yield staging
        finally:
            staging.lock.release()


def _align(n: int) -> int:
    return (n + 255) & ~255


_PIECES = 2  # a lookup's missed rows are read and sent in about this many pieces (H200 host, 0.90 hits: 2 pieces 2.1 ms a call, 4: 2.7, 8: 2.7)
_PIECE_KEYS = 8192  # fewest keys a piece (each piece costs a host call and a copy)
_STAGINGS = 2  # concurrent lookups' pinned stagings (double-buffered: see _StagingPool)


def _pieces(offsets: np.ndarray) -> list[tuple[int, int, int]]:
    """Splits each column's range of missed positions (``offsets``, int64 (k + 1,)) into pieces
    ``(column, lo, hi)`` of about 1 / _PIECES of all of them (at least _PIECE_KEYS keys), in order."""
    total = int(offsets[-1])
    size = max(_PIECE_KEYS, -(-total // _PIECES))
    return [(j, lo, min(lo + size, int(offsets[j + 1]))) for j in range(offsets.size - 1)
            for lo in range(int(offsets[j]), int(offsets[j + 1]), size)]


def _read_piece(read_host: ReadHost, column: int, keys: np.ndarray, rows: np.ndarray) -> tuple[int, np.ndarray | None]:
    """Reads one piece of a column's missed keys (``keys``, int64 (m,)) from the host tiers into
    ``rows`` (float32 (m, dim), pinned). Returns how many exist and None when all do (rows in key
    order), else the order (int64 (m,)) that put the existing keys' rows first, applied to ``rows``
    (so that they are inserted as one range)."""
    m = keys.size
    found = np.empty(m, dtype=np.uint8)
    read_host(column, keys, found, rows)
    present = int(np.count_nonzero(found))
    if present == m:
        return present, None
    order = np.argsort(found == 0, kind="stable")
    rows[:] = rows[order]
    return present, order


def _reordered(pieces: list[tuple[int, int, int]], orders: list[np.ndarray | None], missed: np.ndarray, row_of: np.ndarray,
               ordered_keys: np.ndarray) -> None:
    """For a lookup some of whose keys exist nowhere: ``row_of`` (int32 (total,)) maps each missed
    position to its row in the staging block and ``ordered_keys`` (int64 (total,)) lists the keys in
    row order, piece by piece (``orders``: :func:`_read_piece`'s, None for a piece in key order)."""
    for (_, lo, hi), order in zip(pieces, orders):
        positions = np.arange(lo, hi, dtype=np.int32)
        if order is None:
            row_of[lo:hi] = positions
            ordered_keys[lo:hi] = missed[lo:hi]
        else:
            row_of[lo:hi][order] = positions
            ordered_keys[lo:hi] = missed[lo:hi][order]


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
        self._tables: dict[str, _TableCache] = {}
        for name, dim in tables.items():
            share = options.cache_bytes * weights[name] / total
            rows = max(_core.gpu_cache_min_rows, int(share // _core.gpu_cache_slot_bytes(dim, row_dtype, options.admission)))
            self._tables[name] = _TableCache(_core.GpuCache(rows, dim, row_dtype, options.eviction, device, options.admission), dim)
        self._staging = _StagingPool(self.cp, _STAGINGS)
        self._stats_lock = threading.Lock()  # concurrent lookups count their keys and misses
        self._insert_lock = threading.Lock()  # orders inserts against invalidations
        self._pending_inserts: list[tuple[Any, Any]] = []  # (event, device buffers) of inserts that may not have run
        self._insert_stream = None
        if self.async_insert:
            with self.cp.cuda.Device(device):
                self._insert_stream = self.cp.cuda.Stream(non_blocking=True)

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
        return self._tables[table].dim

    def lookup_columns(
        self,
        tables: Sequence[str],
        keys: Any,
        read_host: ReadHost,
        out: Any = None,
        out_dtype: str = "float32",
        stream: Any = None,
    ) -> Any:
        """Rows of device ``keys`` (cupy int64 (n, k) C-contiguous; column j in ``tables[j]``, all of
        one dim) as cupy (n, k, dim) of ``out_dtype`` (``"float32"`` or ``"float16"``) on the tier's device.

        Args:
            read_host: the host tiers' lookup of a column's missed keys (see :data:`ReadHost`).
            out: optional cupy (n, k, dim) C-contiguous array of ``out_dtype``.
            stream: a cupy stream, a torch CUDA stream or a raw handle; default cupy's current stream.
        """
        cp = self.cp
        entries = [self._tables[t] for t in tables]
        dims = {e.dim for e in entries}
        if len(dims) != 1:
            raise ValueError(f"tables {list(tables)}: expected one dim, got {sorted(dims)}")
        if out_dtype not in OUT_DTYPES:
            raise ValueError(f"out_dtype {out_dtype!r}: expected one of {OUT_DTYPES}")
        dim = dims.pop()
        n, k = int(keys.shape[0]), len(entries)
        s = self.stream_of(stream)
        with cp.cuda.Device(self.device), s:
            if out is None:
                out = cp.empty((n, k, dim), dtype=out_dtype)
            if n == 0:
                return out
            kind = getattr(_core.GpuOutDtype, out_dtype)
            miss_index = cp.empty((k, n), dtype=cp.int32)
            counts = cp.empty(k, dtype=cp.int32)
            ticks = [entry.tick for entry in entries]  # the inserts of this call's misses use them too
            for j, entry in enumerate(entries):
                entry.cache.find_column(keys.data.ptr, n, k, j, out.data.ptr, miss_index.data.ptr, counts.data.ptr, ticks[j], s.ptr,
                                        out_dtype=kind)
            host_counts = counts.get(stream=s)  # waits for this stream only
            with self._stats_lock:
                for entry, c in zip(entries, host_counts.tolist()):
                    entry.lookups += n
                    entry.misses += c
            if host_counts.any():
                self._fill_misses(entries, ticks, keys, out, kind, miss_index, counts, host_counts, read_host, s)
        return out

    def _fill_misses(self, entries: list[_TableCache], ticks: list[int], keys: Any, out: Any, kind: Any, miss_index: Any,
                     counts: Any, host_counts: np.ndarray, read_host: ReadHost, s: Any) -> None:
        """Reads every column's missed keys from the host tiers, writes them into ``out`` and
        offers the rows that exist to the caches (on ``s``, or the tier's insert stream) at the
        LRU clock ``ticks[j]`` of column j's lookup."""
        cp = self.cp
        k, n, dim = len(entries), int(keys.shape[0]), entries[0].dim
        total, max_count = int(host_counts.sum()), int(host_counts.max())
        offsets = np.zeros(k + 1, dtype=np.int64)
        np.cumsum(host_counts, out=offsets[1:])
        generations = [e.generation for e in entries]
        with self._staging.take() as staging:
            missed = cp.empty(total, dtype=cp.int64)
            _core.gather_miss_keys(keys.data.ptr, k, n, miss_index.data.ptr, counts.data.ptr, max_count, missed.data.ptr, self.device, s.ptr)
            host_missed = staging.to_host.take(8 * total).view(np.int64)
            cp.asnumpy(missed, stream=s, out=host_missed)  # waits for this stream only
            # Each column's missed keys are read as they are, repeats included (a host-side unique
            # cost more than the repeated reads; the insert kernel takes a repeated key once per set lock).
            # one pinned block: row_of int32 (total,) | keys int64 (total,) | rows float32 (total, dim);
            # row_of and keys are sent only when some key exists nowhere (its row is moved behind the
            # existing ones); else row i is missed key i, and the keys are `missed`, on the device already.
            keys_at = _align(4 * total)
            rows_at = keys_at + _align(8 * total)
            nbytes = rows_at + 4 * total * dim
            if staging.done is not None:
                staging.done.synchronize()  # the copy out of the buffer of the lookup that used it last
            block = staging.to_device.take(nbytes)
            rows = block[rows_at:nbytes].view(np.float32).reshape(total, dim)
            device_block = cp.empty(nbytes, dtype=cp.uint8)
            # The rows go in pieces: each piece's copy to the device runs while the host reads the next.
            pieces = _pieces(offsets)
            present, orders = [], []
            for j, lo, hi in pieces:
                count, order = _read_piece(read_host, j, host_missed[lo:hi], rows[lo:hi])
                present.append(count)
                orders.append(order)
                span = slice(rows_at + 4 * dim * lo, rows_at + 4 * dim * hi)
                device_block[span].set(block[span], stream=s)
            row_of_at, keys_of = 0, missed.data.ptr  # row i of the block is missed key i
            if any(order is not None for order in orders):
                _reordered(pieces, orders, host_missed, block[: 4 * total].view(np.int32), block[keys_at: keys_at + 8 * total].view(np.int64))
                device_block[:rows_at].set(block[:rows_at], stream=s)
                row_of_at, keys_of = device_block.data.ptr, device_block.data.ptr + keys_at
            staging.done = copied = s.record()
        _core.scatter_miss_rows(out.data.ptr, kind, k, n, dim, miss_index.data.ptr, counts.data.ptr, max_count,
                                row_of_at, device_block.data.ptr + rows_at, self.device, s.ptr)
        insert_stream = self._insert_stream if self.async_insert else s
        with self._insert_lock:
            if self.async_insert:
                insert_stream.wait_event(copied)
            for (j, lo, _), count in zip(pieces, present):
                entry = entries[j]
                if count and entry.generation == generations[j]:  # no invalidation since the rows were read
                    entry.cache.insert(keys_of + 8 * lo, device_block.data.ptr + rows_at + 4 * dim * lo, count, ticks[j], insert_stream.ptr)
            # an update must not be overtaken by these inserts of rows read before it (see invalidate);
            # the device block and keys stay referenced until they ran (cupy's pool reuses them on `s` only)
            self._pending_inserts = [p for p in self._pending_inserts if not p[0].done]
            self._pending_inserts.append((insert_stream.record(), (device_block, missed)))

    def invalidate(self, table: str, keys: np.ndarray) -> None:
        """Drops host ``keys`` (int64 (n,)) from the table's cache; returns when done (a later
        lookup on any stream cannot see the old rows). Inserts that earlier lookups queued are
        waited for first, and lookups still reading rows from the host will not insert them."""
        cp = self.cp
        if keys.size == 0:
            return
        entry = self._tables[table]
        with self._insert_lock:
            entry.generation += 1
            for event, _ in self._pending_inserts:  # inserts queued by earlier lookups, on any stream, first
                event.synchronize()
            self._pending_inserts = []
            with cp.cuda.Device(self.device):
                s = cp.cuda.Stream(non_blocking=True)
                with s:
                    keys_dev = cp.asarray(np.ascontiguousarray(keys, dtype=np.int64))
                    entry.cache.invalidate(keys_dev.data.ptr, keys.size, s.ptr)
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
