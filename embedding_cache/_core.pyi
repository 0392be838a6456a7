"""Type stubs of ``embedding_cache._core``, the C++/CUDA extension (csrc/, pybind11).

Memory spaces: "host" arrays are numpy arrays in host memory; "device" arguments of the GPU
functions are raw device addresses as ints (e.g. ``cupy_array.data.ptr``), and ``stream`` is a
``cudaStream_t`` handle as an int (e.g. ``cupy.cuda.Stream().ptr``). Array arguments must be
C-contiguous with the dtypes stated; functions that say so release the GIL.
"""

import enum
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str
has_cuda: bool
"""True when the extension was built with its CUDA sources (a GPU may still be absent)."""
has_rocksdb: bool
"""True when the extension was built with the RocksDB tier."""

def cuda_device_count() -> tuple[int, str | None]:
    """(count >= 0, None) or (0, a one-line reason: no driver, no device, a build without CUDA)."""

# -- host tier ------------------------------------------------------------------------------------

class ThreadPool:
    """Worker threads for batched host lookups."""

    def __init__(self, threads: int = 0, spin_us: int = -1) -> None:
        """threads: total threads per call (0: the machine's hardware threads); spin_us: how long an
        idle worker watches for the next call before sleeping (-1: TRITONREC_POOL_SPIN_US, else 0)."""
    @property
    def threads(self) -> int: ...
    @property
    def spin_us(self) -> int: ...

class TablesRead:
    """One read of several tables' keys, begun on a pool's workers: the calling thread is free
    until :meth:`finish`. The tables' read locks are held until then (their writers wait)."""

    def __init__(self, tables: list[HostTable], keys: list[npt.NDArray[np.int64]], out: list[npt.NDArray[np.float32]],
                 found: list[npt.NDArray[np.uint8]], pool: ThreadPool, streaming: bool = False) -> None:
        """keys[p] int64 (n_p,), out[p] float32 (n_p, dim of tables[p]) and found[p] uint8 (n_p,)
        C-contiguous host arrays; returns at once. Raises ValueError/TypeError for a bad array."""
    def finish(self) -> list[int]:
        """Joins the read, waits for its end (on the thread that began it), releases the tables;
        each part's keys found."""

class RowDtype(enum.Enum):
    """Row storage of a host table (rows are read out as float32)."""

    float32 = 0
    float16 = 1

class HostTable:
    """One embedding table in host memory: int64 key -> row of ``dim`` values (fp32 or fp16 storage),
    rows in slabs of ``slab_rows``. ``max_rows`` > 0 makes it a frequency-aware cache of at most
    that many rows (see :meth:`admit`)."""

    def __init__(self, dim: int, dtype: RowDtype = ..., slab_rows: int = 65536, expected_rows: int = 0, max_rows: int = 0) -> None: ...
    def insert_or_assign(self, keys: npt.NDArray[np.int64], rows: npt.NDArray[np.float32]) -> None:
        """Inserts or overwrites rows: keys int64 (n,), rows float32 (n, dim), host."""
    def assign_if_present(self, keys: npt.NDArray[np.int64], rows: npt.NDArray[np.float32]) -> None:
        """Overwrites the rows of keys already held (int64 (n,), float32 (n, dim), host); others are left out."""
    def admit(self, keys: npt.NDArray[np.int64], rows: npt.NDArray[np.float32]) -> int:
        """Offers rows read from a lower tier (int64 (n,), float32 (n, dim), host): taken while there
        is room, else by frequency (TinyLFU admission, sampled-LFU eviction). Returns how many were taken."""
    def erase(self, keys: npt.NDArray[np.int64]) -> int:
        """Erases keys (int64 (n,), host); returns how many were present."""
    def find(self, keys: npt.NDArray[np.int64], out: npt.NDArray[np.float32], found: npt.NDArray[np.uint8], pool: ThreadPool,
             streaming: bool = False) -> int:
        """Looks keys (int64 (n,)) up, GIL released: out float32 (n, dim) gets found rows and zeros
        elsewhere, found uint8 (n,) 1 where found (host arrays). Returns the number found.
        ``streaming``: fp32 rows written with non-temporal stores (past the CPU's caches: for memory
        a device copies next); the same values either way."""
    @property
    def dim(self) -> int: ...
    @property
    def max_rows(self) -> int:
        """0: holds every row; else the most rows it keeps (a cache)."""
    @property
    def dtype(self) -> RowDtype: ...
    @property
    def size(self) -> int:
        """Rows held."""
    @property
    def bytes(self) -> int:
        """Host memory held, in bytes (slabs and index)."""
    def stats(self) -> dict[str, int]:
        """Counters since creation, in keys: lookups, hits, misses."""

def find_columns(tables: list[HostTable], keys: npt.NDArray[np.int64], out: npt.NDArray[np.float32], found: npt.NDArray[np.uint8], pool: ThreadPool) -> npt.NDArray[np.int64]:
    """Looks column j of keys int64 (n, k) up in tables[j] (k tables of one dim), all columns in
    one call, GIL released: out float32 (n, k, dim) gets found rows and zeros elsewhere, found
    uint8 (n, k) 1 where found (host arrays). Returns int64 (k,): keys found per table."""

# -- RocksDB tier (has_rocksdb) --------------------------------------------------------------------

class PersistentTier:
    """Rows of every table of a store in one RocksDB database (batched MultiGet). Tables are
    numbered; rows are stored in the table's storage dtype (float32 or float16), host arrays."""

    def __init__(self, path: str, create_if_missing: bool = False, block_cache_bytes: int = 67108864, secondary_path: str = "") -> None:
        """Opens the database at ``path``: as the primary (the one writer), or with
        ``secondary_path`` as a read-only secondary keeping its info log there. RuntimeError with
        RocksDB's status when it cannot."""
    def put(self, table: int, keys: npt.NDArray[np.int64], rows: npt.NDArray[Any]) -> None:
        """Writes rows ((n, dim), storage dtype) of keys int64 (n,) in one atomic batch."""
    def erase(self, table: int, keys: npt.NDArray[np.int64]) -> int:
        """Erases keys int64 (n,); returns how many existed."""
    def multi_get(self, table: int, keys: npt.NDArray[np.int64], out: npt.NDArray[Any], found: npt.NDArray[np.uint8]) -> int:
        """Reads the rows of keys int64 (n,) into out ((n, dim), storage dtype); found uint8 (n,)
        1 where present. Returns the count found."""
    def scan(self, table: int, dim: int, dtype: Any, chunk: int, fn: Callable[[npt.NDArray[np.int64], npt.NDArray[Any]], None]) -> None:
        """Calls fn(keys int64 (m,), rows (m, dim) of ``dtype``) over every row of a table, ``chunk`` rows at a time (copies)."""
    def compact(self) -> None:
        """Compacts the whole database (after a bulk load), GIL released."""
    def count(self, table: int) -> int:
        """Rows held for a table."""
    @property
    def disk_bytes(self) -> int:
        """Live data on disk, in bytes (estimate)."""
    def verify_file_checksums(self, threads: int = 1) -> tuple[int, int]:
        """Reads every live table file (``threads`` at once) against its whole-file CRC32C in
        RocksDB's MANIFEST; returns (files, bytes). RuntimeError naming the file and both checksums
        on a mismatch, or for a file written without a checksum."""
    def catch_up(self) -> None:
        """A secondary: reads the primary's writes made since it opened or last caught up."""
    @property
    def sequence_number(self) -> int:
        """Sequence number of the last write this instance sees (a secondary's moves on catch_up)."""
    @property
    def is_secondary(self) -> bool:
        """True when opened as a read-only secondary."""

# -- GPU tier (has_cuda) ------------------------------------------------------------------------

class GpuRowDtype(enum.Enum):
    """Row storage of a GPU cache."""

    float32 = 0
    float16 = 1
    bfloat16 = 2

class GpuOutDtype(enum.Enum):
    """dtype of the rows a GPU cache lookup writes."""

    float32 = 0
    float16 = 1

class GpuCache:
    """One table's GPU cache: int64 keys in 16-way sets (set chosen by a hash of the key; at least 4,096 rows), rows in
    device memory of ``device``. All methods are asynchronous on ``stream``; pointers are device
    addresses."""

    def __init__(self, capacity_rows: int, dim: int, dtype: GpuRowDtype = ..., eviction: str = "lru", device: int = 0,
                 admission: bool = False, aging_multiple: int = 40) -> None:
        """capacity_rows: rows held (whole sets); eviction: ``lru`` or ``lfu``; admission: TinyLFU
        admission (a sketch, halved every aging_multiple x capacity_rows misses)."""
    def find(self, keys: int, n: int, out: int, miss_index: int, miss_count: int, tick: int, stream: int, key_stride: int = 1,
             out_stride: int = 0, out_dtype: GpuOutDtype = ...) -> None:
        """keys: device int64, key i at keys[i * key_stride]; hits' rows go to out (row i at
        out + i * out_stride elements of out_dtype; 0 = dim), misses' rows are left to the caller;
        miss_index: device int32 (n,) gets the misses' positions (first *miss_count, any order);
        miss_count: a device int32 scalar; tick: the LRU clock of this call."""
    def find_column(self, keys: int, n: int, columns: int, column: int, out: int, miss_index: int, miss_counts: int, tick: int,
                    stream: int, out_dtype: GpuOutDtype = ...) -> None:
        """:meth:`find` of column ``column`` of a block, async on ``stream``: ``keys`` device int64
        (n, columns) C-contiguous; hits' rows into slot ``column`` of ``out`` device (n, columns, dim)
        of ``out_dtype``; the misses' positions into row ``column`` of ``miss_index`` device int32
        (columns, n), their count into ``miss_counts[column]`` (device int32 (columns,)). The
        addresses of the column are computed here, from the layouts stated."""
    def insert(self, keys: int, rows: int, n: int, tick: int, stream: int) -> None:
        """Inserts or overwrites keys device int64 (n,) (unique) with rows device float32 (n, dim)."""
    def invalidate(self, keys: int, n: int, stream: int) -> None:
        """Drops keys device int64 (n,)."""
    @property
    def lru_tick(self) -> int:
        """The LRU clock a lookup starting now gets: :func:`lru_clock` of the misses that
        :class:`GpuTierLookup` counted into this cache so far."""
    @property
    def lookups(self) -> int:
        """Keys :class:`GpuTierLookup` looked up in this cache so far."""
    @property
    def misses(self) -> int:
        """The misses among them (what moves the LRU clock)."""
    @property
    def capacity_rows(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def device(self) -> int: ...
    @property
    def bytes(self) -> int:
        """Device memory held, in bytes."""

class GpuTierLookup:
    """A GPU tier's lookups (any number of tables on ``device``): device keys through the tables' GPU
    caches, misses read from the host tables, written into the output and inserted, in one call with
    the GIL released. Thread-safe: callers on streams of their own share ``stagings`` pinned stagings."""

    def __init__(self, device: int, stagings: int = 2, chunks: int = 4, min_chunk_rows: int = 65536, async_insert: bool = False,
                 taper: bool = False, stream_rows: bool = False, copy_stream: bool = False, crowded_chunks: int = 0,
                 crowded_copy_stream: bool = True, send_beside_read: bool = False) -> None:
        """chunks, min_chunk_rows, taper: how a call's key rows are cut (see :func:`lookup_chunks`);
        async_insert: insert on a stream of its own instead of the lookup's; stream_rows: the missed
        rows written into the pinned staging with non-temporal stores (past the CPU's caches);
        copy_stream: the rows' copies on a stream of each staging's own (a chunk's copy need not wait
        for the last chunk's inserts); crowded_chunks: 0 to ``chunks``, the chunks (not tapered) of
        a call that starts while another holds a staging or waits for one (0: cut as a lone call);
        crowded_copy_stream: with copy_stream, whether such a call copies on the staging's copy
        stream too (else on its own stream); send_beside_read: a lone call queues a chunk's copies,
        scatter and inserts while the pool's workers read the next chunk. Raises ValueError for an option out of range."""
    def lookup(self, caches: list[GpuCache], hosts: list[HostTable], keys: int, n: int, out: int, out_dtype: GpuOutDtype,
               stream: int, pool: ThreadPool, complete: Callable[[int, npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.uint8], int], None]) -> None:
        """``keys`` device int64 (n, columns) C-contiguous, column t through ``caches[t]`` over
        ``hosts[t]`` (at the cache's LRU clock, read once the call has a staging), into ``out`` device (n, columns, dim) C-contiguous of
        ``out_dtype``. ``complete(column, keys (m,), rows float32 (m, dim), found uint8 (m,), hits)`` is
        called (GIL held, views of pinned memory valid during the call) for a column's missed keys
        that its host table did not all hold; what it raises, the lookup raises. The output is
        queued on ``stream``; each cache counts its lookups and misses (:attr:`GpuCache.lookups`)."""
    def invalidate(self, cache: GpuCache, keys: npt.NDArray[np.int64]) -> None:
        """Drops host keys int64 (n,) from ``cache`` after every insert queued before; lookups that
        read rows before it do not insert them. Returns when done."""
    @property
    def pool_bytes(self) -> int:
        """Device memory its pool holds for calls (in flight or kept for the next ones), in bytes."""
    @property
    def crowded_calls(self) -> int:
        """Calls so far that started while another held a staging or waited for one."""
    trace: bool
    """Trace the calls from now on (each host step, and each chunk's GPU work by timing events) for
    :meth:`last_trace`; a traced call waits for its streams at its end (a probe's setting)."""
    def last_trace(self) -> list[tuple[str, int, float]]:
        """The steps of the last traced call that ended without error: ``(what, chunk, us)``, chunk -1
        for the call's own steps, microseconds after the call began (GPU steps, named ``"gpu ..."``,
        by the GPU's clock counted from the call's start on its stream), in the order marked."""

def gpu_cache_slot_bytes(dim: int, dtype: GpuRowDtype, admission: bool = False) -> int:
    """Device bytes per cached row (row, 8-byte slot word, lock share, and the admission sketch's share)."""

gpu_cache_min_rows: int
"""The fewest rows a GpuCache holds (256 sets of 16: fewer sets could not tell every key apart by its tag)."""

def lookup_chunks(n: int, chunks: int, min_rows: int, taper: bool = False) -> list[tuple[int, int]]:
    """The key rows ``[begin, end)`` a GPU tier lookup of ``n`` rows is cut into: at most ``chunks``
    ranges of ``ceil(n / chunks)`` rows but at least ``min_rows`` (the last takes the rest), in order.
    With ``taper`` (chunks >= 3) the first and last are half the others: ``u = max(min_rows,
    ceil(n / (2 chunks - 2)))`` rows first, then ``2u`` each, the last the rest (at most ``u``)."""

def compact_found(keys: npt.NDArray[np.int64], rows: npt.NDArray[np.float32], found: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """(keys, rows) where ``found`` != 0, in order: what a GPU tier lookup inserts of a column's
    misses some of whose keys exist nowhere."""

def lru_clock(misses: int, capacity_rows: int) -> int:
    """The LRU clock (uint32 tick, >= 1) of a GPU cache of ``capacity_rows`` rows after ``misses``
    misses in all: one tick per ``capacity_rows // 16`` misses, so it stands still while lookups hit."""

def eviction_rank(eviction: str, meta: int, tick: int) -> int:
    """How strongly a GPU cache slot of ``meta`` (``"lru"``: the tick of its last use, mod 256;
    ``"lfu"``: its use count, at most 255) is due for eviction at LRU clock ``tick`` (the highest goes
    first): LRU its age in ticks seen from 16 ticks after ``tick``, mod 256 (so a row touched by a
    lookup on another stream whose clock ran up to 16 ticks ahead ranks below the insert's own
    tick's rows); LFU 255 less its count."""

def simulate_set_cache(trace: npt.NDArray[np.int64], capacity_rows: int, ways: int = 16, eviction: str = "lru", batch: int = 1,
                       admission: bool = False, aging_multiple: int = 40) -> npt.NDArray[np.uint8]:
    """Replays keys (host int64 (n,), access order) through the GPU cache's bookkeeping on the host
    (same sets, ways and policy code), ``batch`` accesses per call; returns uint8 (n,), 1 where
    the access hit."""
