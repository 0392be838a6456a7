"""EmbeddingStore: a store's tiers (GPU cache, host tables, RocksDB) behind one batched lookup API.

A store directory (format: :mod:`embedding_cache.format`; written by :mod:`embedding_cache.build`)
is verified while opening, then its tables go into the host tier (:mod:`embedding_cache.host`),
over the RocksDB tier when the store has one (:mod:`embedding_cache.rocksdb`), under a GPU tier
when a device is given (:mod:`embedding_cache.gpu`). Every lookup, host or device, one table or
several, reads the host tier and RocksDB through :meth:`embedding_cache.host.HostTier.complete`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from embedding_cache.format import StoreFormatError, TableInfo, as_keys, as_rows, read_manifest, verify_npy
from embedding_cache.host import HostTier
from embedding_cache.options import GpuCacheOptions, HostOptions
from embedding_cache.policy import MissingPolicy
from embedding_cache.rocksdb import ROLES, RocksDBTier

OUT_DTYPES = ("float32", "float16")


def _on_device(keys: Any) -> bool:
    """True for a cupy array or a torch CUDA tensor."""
    return hasattr(keys, "__cuda_array_interface__") or bool(getattr(keys, "is_cuda", False))


def _check_host_out(out: Any, out_dtype: str, shape: tuple[int, ...]) -> None:
    """Raises TypeError / ValueError unless ``out`` is a C-contiguous, writeable numpy array of
    ``out_dtype`` and ``shape``."""
    if not isinstance(out, np.ndarray) or out.dtype != np.dtype(out_dtype):
        raise TypeError(f"out: expected a {out_dtype} numpy array, got {getattr(out, 'dtype', type(out).__name__)}")
    if out.shape != shape:
        raise ValueError(f"out: expected shape ({', '.join(map(str, shape))}), got {out.shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out: expected a C-contiguous, writeable array")


GPU_POOL_SPIN_US = 100
"""With a GPU tier, the host tier's idle workers watch for the next call this many microseconds
before sleeping: a lookup's missed rows are read in pieces in quick succession, and waking 15
sleeping workers in turn cost each piece tens of microseconds (H200 host, 0.98 hits: 0.95 -> 0.76
ms a call). TRITONREC_POOL_SPIN_US overrides it; without a GPU tier workers sleep at once (unless
it says otherwise), leaving the cores to the scorer."""


def _tier_options(host: HostOptions | None, gpu_cache: GpuCacheOptions | None, device: int | None,
                  shorthand: Mapping[str, Any]) -> tuple[HostOptions, GpuCacheOptions | None]:
    """The options objects, from themselves or from the keyword shorthands (not both)."""
    defaults = inspect.signature(EmbeddingStore.__init__).parameters
    given = {k for k, v in shorthand.items() if v != defaults[k].default}
    if (host is not None or gpu_cache is not None) and given:
        raise ValueError(f"give host= / gpu_cache= or the keywords {sorted(given)}, not both")
    if host is None:
        host = HostOptions(shorthand["host_budget_bytes"], shorthand["threads"], shorthand["block_cache_bytes"])
    if gpu_cache is None and shorthand["gpu_cache_bytes"] is not None:
        gpu_cache = GpuCacheOptions(int(shorthand["gpu_cache_bytes"]), shorthand["gpu_cache_dtype"], shorthand["gpu_eviction"],
                                    bool(shorthand["gpu_admission"]), bool(shorthand["gpu_async_insert"]))
    if (device is None) != (gpu_cache is None):
        raise ValueError("device and gpu_cache_bytes: give both for a GPU tier, or neither")
    return host, gpu_cache


class EmbeddingStore:
    """An opened store: batched lookups, online updates and erases, per-tier statistics.

    Args:
        path: the store directory.
        verify: check every file against its checksum while opening (default): the ``.npy``
            files against the SHA-256 in the manifest, RocksDB's table files against their
            whole-file CRC32C. The manifest's own seal is always checked.
        role: for a store with a RocksDB tier: ``"primary"`` (the one process that may write to
            it; RocksDB's lock keeps out a second) or ``"secondary"`` (read-only, any number beside
            the primary and each other; :meth:`catch_up` reads the primary's later writes).
        device: CUDA device of a GPU tier (needs GPU cache options); lookups then go through it
            (device keys: cupy arrays, torch CUDA tensors; numpy keys are copied there and back).
        host: the host tier's :class:`HostOptions` (threads, ``budget_bytes`` for a store with a
            RocksDB tier: the host tier then keeps the most used rows and reads the rest from
            RocksDB; RocksDB's block cache). Or the shorthands ``threads``, ``host_budget_bytes``,
            ``block_cache_bytes``.
        gpu_cache: the GPU tier's :class:`GpuCacheOptions` (device memory for all tables' caches,
            row dtype, ``lru``/``lfu`` eviction, TinyLFU admission, inserts on a stream of its own;
            see :class:`embedding_cache.gpu.GpuTier`). Or the shorthands ``gpu_cache_bytes``,
            ``gpu_cache_dtype``, ``gpu_eviction``, ``gpu_admission``, ``gpu_async_insert``.

    Raises:
        StoreFormatError: a missing, truncated or damaged file (naming it and both checksums),
            an edited manifest, another format version, or a store that needs the RocksDB tier
            in a build without it. ValueError: bad options.
    """

    def __init__(self, path: str | os.PathLike[str], *, verify: bool = True, role: str = "primary", device: int | None = None,
                 host: HostOptions | None = None, gpu_cache: GpuCacheOptions | None = None, threads: int | None = None,
                 host_budget_bytes: int | None = None, block_cache_bytes: int = 64 << 20, gpu_cache_bytes: int | None = None,
                 gpu_cache_dtype: str = "float32", gpu_eviction: str = "lru", gpu_admission: bool = False,
                 gpu_async_insert: bool = False) -> None:
        self.path = Path(path)
        self._closed, self._tier, self._gpu = True, None, None
        shorthand = dict(threads=threads, host_budget_bytes=host_budget_bytes, block_cache_bytes=block_cache_bytes,
                         gpu_cache_bytes=gpu_cache_bytes, gpu_cache_dtype=gpu_cache_dtype, gpu_eviction=gpu_eviction,
                         gpu_admission=gpu_admission, gpu_async_insert=gpu_async_insert)
        host, self._gpu_options = _tier_options(host, gpu_cache, device, shorthand)
        if role not in ROLES:
            raise ValueError(f"role {role!r}: expected one of {ROLES}")
        self.role, self._device = role, device
        manifest_path, manifest = read_manifest(self.path)
        self.metadata: dict[str, Any] = dict(manifest.get("metadata", {}))
        self.verified_bytes, self.verify_seconds = self._open_rocksdb(manifest_path, manifest, host, verify)
        """Bytes whose checksums were verified while opening, and the seconds it took."""
        self._counter_base: dict[str, dict[str, tuple[int, int]]] = {}  # counts of tiers rebuilt by catch_up
        try:
            self._host = HostTier(self.path, manifest["tables"], manifest_path, host, self._tier,
                                  spin_us=-1 if device is None else GPU_POOL_SPIN_US)
        except StoreFormatError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise StoreFormatError(f"{manifest_path}: damaged ({type(e).__name__}: {e})") from None
        self._closed = False
        if device is not None:
            self._open_gpu_tier()

    def _open_rocksdb(self, manifest_path: Path, manifest: Mapping[str, Any], host: HostOptions, verify: bool) -> tuple[int, float]:
        """Opens the RocksDB tier when the manifest lists one; verifies the files; returns (bytes, seconds) verified."""
        persistent = manifest.get("persistent")
        if persistent is not None:
            self._tier = RocksDBTier.open(self.path, manifest_path, persistent, host.block_cache_bytes, self.role, verify)
            return self._tier.verified_bytes, self._tier.verify_seconds
        if host.budget_bytes is not None:
            raise ValueError("host_budget_bytes needs a store with a persistent tier (build_store(..., persistent=True))")
        return verify_npy(self.path, manifest, manifest_path) if verify else (0, 0.0)

    def _open_gpu_tier(self) -> None:
        """Opens (or, after :meth:`catch_up`, reopens) the GPU tier on the store's device."""
        from embedding_cache.gpu import GpuTier  # noqa: PLC0415 - needs cupy

        host = self._host
        weights = {e["name"]: float(e["rows"]) for e in host.entries}
        self._gpu = GpuTier({name: info.dim for name, info in host.info.items()}, int(self._device), self._gpu_options, weights)

    def _table(self, name: str) -> Any:
        if self._closed:
            raise ValueError(f"EmbeddingStore {self.path} is closed")
        try:
            return self._host.tables[name]
        except KeyError:
            raise KeyError(f"no table {name!r} in {self.path}: tables are {sorted(self._host.tables)}") from None

    def lookup(
        self,
        table: str,
        keys: Any,
        out: Any = None,
        missing: MissingPolicy | None = None,
        found: np.ndarray | None = None,
        stream: Any = None,
        out_dtype: str = "float32",
    ) -> Any:
        """Rows of ``keys`` in ``table``, (n, dim) of ``out_dtype``, in the keys' memory.

        Host keys (numpy) come back as numpy, read from the host tiers with the GIL released, or,
        when the store has a GPU tier, copied to the device, looked up there and copied back. Device
        keys (a cupy array or a torch CUDA tensor, int64 (n,)) go through the GPU tier and come back
        on the device as the same kind of array; ``stream`` (a cupy or torch stream, or a raw
        handle; default: cupy's current stream) orders the work. Threads may look up at once (device
        keys each on a stream of their own).

        Args:
            table: table name.
            keys: int64 (n,) keys (host: any integer dtype that fits int64 is accepted).
            out: optional preallocated C-contiguous (n, dim) array of ``out_dtype`` in the keys' memory.
            missing: a policy for this call instead of the table's (see :meth:`MissingPolicy.parse`).
            found: optional C-contiguous uint8 (n,) host array: set to 1 where the key exists in
                some host tier (such a lookup asks the host tiers, not the GPU tier).
            out_dtype: ``"float32"`` or ``"float16"`` (rounded to nearest even).

        Returns:
            ``out`` (or a new array): the true row of every key present; for absent keys, the
            table's policy (zeros or the default vector; ``error`` raises KeyError after filling).

        Raises:
            TypeError: keys not integer, ``out`` not of ``out_dtype`` or not C-contiguous. ValueError:
            keys not 1-D, ``out`` of the wrong shape, a closed store. KeyError: an unknown table, or
            missing keys under the ``error`` policy (up to 10 listed).
        """
        host = self._table(table)
        if out_dtype not in OUT_DTYPES:
            raise ValueError(f"out_dtype {out_dtype!r}: expected 'float32' or 'float16'")
        if _on_device(keys):
            return self._lookup_device([table], keys, out, [missing], stream, out_dtype, columns=False)
        keys = as_keys(keys, "keys")
        if out is not None:
            _check_host_out(out, out_dtype, (keys.shape[0], host.dim))
        if self._gpu is not None and found is None:
            cp = self._gpu.cp
            s = self._gpu.stream_of(stream)
            with cp.cuda.Device(self._gpu.device), s:  # the keys' copy to the device ordered before the lookup, on its stream
                result = self._lookup_device([table], cp.asarray(keys), None, [missing], s, out_dtype, columns=False)
                return cp.asnumpy(result, stream=s, out=out)
        if out_dtype == "float32":
            return self._lookup_host(table, keys, out, missing, found)
        rows = self._lookup_host(table, keys, None, missing, found)
        if out is None:
            return rows.astype(np.float16)
        out[...] = rows
        return out

    def _lookup_host(self, table: str, keys: np.ndarray, out: np.ndarray | None, missing: MissingPolicy | None,
                     found: np.ndarray | None) -> np.ndarray:
        """The host tiers' lookup: int64 (n,) keys -> float32 (n, dim) ``out`` (checked by the caller)."""
        host = self._table(table)
        if out is None:
            out = np.empty((keys.shape[0], host.dim), dtype=np.float32)
        if found is None:
            found = np.empty(keys.shape[0], dtype=np.uint8)
        elif not isinstance(found, np.ndarray) or found.dtype != np.uint8 or found.shape != keys.shape or not found.flags.c_contiguous:
            raise ValueError(f"found: expected a C-contiguous uint8 array of shape {keys.shape}")
        return self._host.lookup(table, keys, out, found, missing)

    def _lookup_device(self, tables: list[str], keys: Any, out: Any, missing: list[MissingPolicy | None] | None, stream: Any,
                       out_dtype: str, columns: bool) -> Any:
        """Device keys (cupy or torch; (n,) with ``columns`` False, else (n, k)) through the GPU tier."""
        if self._gpu is None:
            raise ValueError(f"keys are on a GPU but {self.path} was opened without a GPU tier (pass device= and gpu_cache_bytes=)")
        cp = self._gpu.cp
        is_torch = type(keys).__module__.startswith("torch")
        device_keys = cp.from_dlpack(keys) if is_torch else keys
        ndim = 2 if columns else 1
        if device_keys.dtype != cp.int64 or device_keys.ndim != ndim or (columns and device_keys.shape[1] != len(tables)):
            expected = f"(n, {len(tables)})" if columns else "(n,)"
            raise TypeError(f"keys: expected device int64 keys of shape {expected}, got {device_keys.dtype} {tuple(device_keys.shape)}")
        if device_keys.device.id != self._gpu.device:
            raise ValueError(f"keys are on device {device_keys.device.id}; the GPU tier is on device {self._gpu.device}")
        n = int(device_keys.shape[0])
        dim = self._gpu.dim_of(tables[0])
        if out is not None:
            out = cp.from_dlpack(out) if is_torch else out
            shape = (n, len(tables), dim) if columns else (n, dim)
            if not isinstance(out, cp.ndarray) or out.dtype != cp.dtype(out_dtype) or out.shape != shape or not out.flags.c_contiguous:
                raise ValueError(f"out: expected a C-contiguous {out_dtype} device array of shape {shape}")
        s = self._gpu.stream_of(stream)
        with cp.cuda.Device(self._gpu.device), s:
            # non-contiguous keys are copied on the lookup's stream: on the current one the lookup
            # (on `s`) could read the copy before it was written, and reuse its memory after
            device_keys = cp.ascontiguousarray(device_keys.reshape(n, len(tables)))

        def complete(j: int, host_keys: np.ndarray, rows: np.ndarray, found: np.ndarray, hits: int) -> None:
            self._host.complete(tables[j], host_keys, rows, found, hits, None if missing is None else missing[j])

        hosts = [self._host.tables[t] for t in tables]
        result = self._gpu.lookup_columns(tables, device_keys, hosts, self._host.pool, complete,
                                          None if out is None else out.reshape(n, len(tables), dim), out_dtype, s)
        result = out if out is not None else result if columns else result.reshape(n, dim)
        if is_torch:
            import torch  # noqa: PLC0415

            return torch.from_dlpack(result)
        return result

    def prefetch(self, table: str, keys: Any, stream: Any = None) -> None:
        """Brings the rows of device ``keys`` into the GPU tier (a lookup whose output is dropped)."""
        self._table(table)
        self._lookup_device([table], keys, None, None, stream, "float32", columns=False)

    def lookup_columns(
        self,
        tables: list[str],
        keys: np.ndarray,
        out: np.ndarray | None = None,
        missing: list[MissingPolicy | None] | None = None,
        found: np.ndarray | None = None,
    ) -> np.ndarray:
        """Column ``j`` of ``keys`` looked up in ``tables[j]``, all in one call (GIL released).

        Device keys (cupy or torch int64 (n, k)) go through the GPU tier in one call (a wait for each
        chunk's missed keys, whatever k) and come back on the device.

        Args:
            tables: k table names of one dim.
            keys: int64 (n, k) C-contiguous host array, or device keys (then ``found`` must be None).
            out: optional float32 (n, k, dim) C-contiguous array to write into.
            missing: per table, a policy for this call instead of the table's (None: the table's).
            found: optional uint8 (n, k) C-contiguous array: set to 1 where the key exists in some tier.

        Returns:
            float32 (n, k, dim): as :meth:`lookup` for each column.

        Raises:
            KeyError: an unknown table, or missing keys in a table whose policy is ``error``.
        """
        hosts = [self._table(t) for t in tables]
        if _on_device(keys):
            if found is not None:
                raise ValueError("found: only for host keys (the GPU tier does not report it)")
            return self._lookup_device(list(tables), keys, out, missing, None, "float32", columns=True)
        if not isinstance(keys, np.ndarray) or keys.dtype != np.int64 or keys.ndim != 2 or keys.shape[1] != len(tables):
            raise ValueError(f"keys: expected an int64 array of shape (n, {len(tables)})")
        keys = np.ascontiguousarray(keys)
        n, k = keys.shape
        dim = hosts[0].dim if hosts else 0
        if out is None:
            out = np.empty((n, k, dim), dtype=np.float32)
        if found is None:
            found = np.empty((n, k), dtype=np.uint8)
        return self._host.lookup_columns(tables, keys, out, found, missing)

    def _check_writer(self) -> None:
        if self._tier is not None and self._tier.is_secondary:
            raise PermissionError(f"{self.path} is open as a read-only secondary: only the primary writes to its RocksDB tier")

    def catch_up(self) -> bool:
        """A secondary: reads the writes its primary made since this store opened or last caught
        up. When there were any, every row held above RocksDB (host tier, GPU tier) is dropped and
        read again (all of them at once when the store has no host budget), so no lookup returns
        a row the primary has replaced. Not to be called while lookups run.

        Returns:
            True when the primary had written something.

        Raises:
            PermissionError: on the primary, or a store without a RocksDB tier (nothing to catch up).
        """
        if self._tier is None or not self._tier.is_secondary:
            raise PermissionError(f"{self.path}: catch_up is for a store opened with role='secondary' on a RocksDB tier")
        if not self._tier.catch_up():
            return False
        before = self.counters()
        self._host.open()
        if self._gpu is not None:
            self._gpu = None  # frees its device memory before the new one takes it
            self._open_gpu_tier()
        # counters span the store's life: the new tiers count on from the old ones' totals
        for name, tiers in before.items():
            self._counter_base[name] = {tier: tiers[tier] for tier in ("host", "gpu") if tier in tiers}
        return True

    def update(self, table: str, keys: np.ndarray, rows: Any) -> None:
        """Inserts or overwrites rows (in memory): keys int64 (n,), rows float (n, dim).
        A lookup running meanwhile returns each row whole, old or new.

        Raises:
            PermissionError: a store opened as a secondary (only its primary writes)."""
        self._check_writer()
        host = self._table(table)
        keys = as_keys(keys, "keys")
        checked = as_rows(rows, keys.shape[0], host.dim, "rows")
        info = self._host.info[table]
        if info.dtype == "float16":
            # Round once, from the caller's values; the core then stores that fp16 value exactly.
            checked = np.ascontiguousarray(np.asarray(rows).astype(np.float16), dtype=np.float32)
        if self._tier is not None:  # write through: the persistent tier first
            self._tier.put(info.id, keys, np.ascontiguousarray(checked.astype(info.dtype)), self.path)
        if host.max_rows:
            host.assign_if_present(keys, checked)  # rows not held are read from RocksDB on demand
        else:
            host.insert_or_assign(keys, checked)
        if self._gpu is not None:  # the next device lookup reads the new rows from the host
            self._gpu.invalidate(table, keys)

    def erase(self, table: str, keys: np.ndarray) -> int:
        """Erases keys (int64 (n,)) from the table; returns how many were present.
        PermissionError on a secondary."""
        self._check_writer()
        host = self._table(table)
        keys = as_keys(keys, "keys")
        erased = int(host.erase(keys))
        if self._tier is not None:
            erased = self._tier.erase(self._host.info[table].id, keys)
        if self._gpu is not None:
            self._gpu.invalidate(table, keys)
        return erased

    @property
    def tables(self) -> list[TableInfo]:
        """Name, rows held, dim, storage dtype and missing-key policy of every table."""
        if self._closed:
            raise ValueError(f"EmbeddingStore {self.path} is closed")
        return [TableInfo(name, self._rows(name), i.dim, i.dtype, i.policy.policy) for name, i in self._host.info.items()]

    def _rows(self, name: str) -> int:
        return self._tier.count(self._host.info[name].id) if self._tier is not None else int(self._host.tables[name].size)

    def stats(self) -> dict[str, Any]:
        """Per table: ``lookups`` (keys), and per tier (``gpu`` with a GPU tier, ``host``, and
        ``rocksdb`` when the store has one) ``hits``, ``misses``, ``rows`` and ``bytes`` (device
        memory and capacity for the GPU; host memory; RocksDB's live data on disk, shared by all
        tables)."""
        counts = self.counters()
        result = {}
        for name, t in self._host.tables.items():
            tiers = {tier: {"hits": looked - missed, "misses": missed} for tier, (looked, missed) in counts[name].items()}
            tiers["host"].update(rows=int(t.size), bytes=int(t.bytes))
            if "rocksdb" in tiers:
                tiers["rocksdb"].update(rows=self._rows(name), bytes=self._tier.disk_bytes)
            if "gpu" in tiers:
                gpu = self._gpu.stats(name)
                tiers["gpu"].update(rows=gpu["capacity_rows"], bytes=gpu["bytes"])
            result[name] = {"lookups": counts[name]["host"][0], "tiers": tiers}
        return result

    def counters(self) -> dict[str, dict[str, tuple[int, int]]]:
        """Cumulative key counts, cheaply (no sizes): table -> tier (``gpu`` with a GPU tier,
        ``host``, and ``rocksdb`` when the store has one) -> (keys looked up in that tier, keys
        it did not hold)."""
        if self._closed:
            raise ValueError(f"EmbeddingStore {self.path} is closed")
        result = {}
        for name, info in self._host.info.items():
            base = self._counter_base.get(name, {})
            looked, missed = self._host.counters(name)
            host_base = base.get("host", (0, 0))
            tiers = {"host": (looked + host_base[0], missed + host_base[1])}
            if self._gpu is not None:
                gpu = self._gpu.stats(name)
                gpu_base = base.get("gpu", (0, 0))
                tiers = {"gpu": (gpu["hits"] + gpu["misses"] + gpu_base[0], gpu["misses"] + gpu_base[1]), **tiers}
            if self._tier is not None:
                tiers["rocksdb"] = self._tier.counters(info.id)
            result[name] = tiers
        return result

    def close(self) -> None:
        """Frees the tables; later calls raise ValueError. Closing twice is allowed."""
        if not getattr(self, "_closed", True):
            self._host.tables.clear()
            if self._tier is not None:
                self._tier.close()  # closes the database, removes a secondary's info-log directory
            self._tier = None
            self._gpu = None  # frees the device memory
            self._closed = True

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._host.tables)} tables"
        return f"EmbeddingStore({str(self.path)!r}, {state})"
