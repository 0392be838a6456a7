"""EmbeddingStore: embedding tables in host memory behind one batched lookup API.

A store is a directory (see :func:`build_store` and the README's "Store format"): ``store.json``
(format version, tables, missing-key policies, free-form metadata, the size and SHA-256 of every
file, sealed by its own SHA-256) and ``tables/<i>.keys.npy`` (int64 (n,)) and
``tables/<i>.rows.npy`` ((n, dim) float32 or float16) per table, or a RocksDB database
(``rocksdb/``, every table file with a whole-file CRC32C in RocksDB's MANIFEST). Opening a store
verifies all of it, then loads every table into a :class:`embedding_cache._core.HostTable`: rows
in slabs, a hash index, lookups on a thread pool with the GIL released.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from embedding_cache import _core
from tritonrec.integrity import IntegrityError, ManifestKind, file_entry, read_sealed_manifest, verify_files, write_manifest

FORMAT = "tritonrec.embedding_store"
FORMAT_VERSION = 2  # 2: SHA-256 of every file, a sealed manifest, RocksDB file checksums
MANIFEST = "store.json"
DTYPES = ("float32", "float16")
POLICIES = ("zeros", "vector", "error")
ROLES = ("primary", "secondary")
_LOAD_CHUNK = 1 << 20  # rows inserted per call while opening
_SLAB_ROWS = 1 << 16  # most rows per slab
_NO_ROCKSDB = (
    "this build of embedding_cache has no RocksDB tier (built with TRITONREC_ROCKSDB=OFF or without "
    "librocksdb-dev); see embedding_cache._core.has_rocksdb"
)
_ROW_OVERHEAD = 24  # host bytes per cached row beyond its values (index slot, key, flags), for budgets


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


@dataclasses.dataclass(frozen=True)
class MissingPolicy:
    """What a lookup returns for a key that exists nowhere.

    ``zeros``: a zero row; ``vector``: the fixed ``vector`` (float32 (dim,)); ``error``: KeyError
    listing up to 10 of the missing keys.
    """

    policy: str = "zeros"
    vector: tuple[float, ...] | None = None

    @classmethod
    def parse(cls, value: Any, dim: int, table: str) -> MissingPolicy:
        """From ``"zeros"``, ``"error"``, a (dim,) vector, or a MissingPolicy."""
        if isinstance(value, MissingPolicy):
            policy = value
        elif isinstance(value, str):
            if value not in ("zeros", "error"):
                raise ValueError(f"table {table!r}: missing-key policy {value!r}: expected 'zeros', 'error' or a vector of {dim} floats")
            policy = cls(value)
        else:
            vector = np.asarray(value, dtype=np.float64)
            if vector.shape != (dim,):
                raise ValueError(f"table {table!r}: default vector has shape {vector.shape}: expected ({dim},)")
            policy = cls("vector", tuple(float(v) for v in vector))
        if policy.policy == "vector" and (policy.vector is None or len(policy.vector) != dim):
            raise ValueError(f"table {table!r}: default vector must have {dim} values")
        return policy

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy, **({"vector": list(self.vector)} if self.vector is not None else {})}


def _on_device(keys: Any) -> bool:
    """True for a cupy array or a torch CUDA tensor."""
    return hasattr(keys, "__cuda_array_interface__") or bool(getattr(keys, "is_cuda", False))


def _as_keys(keys: Any, what: str) -> np.ndarray:
    if not isinstance(keys, np.ndarray):
        raise TypeError(f"{what}: expected a numpy array of int64 keys, got {type(keys).__name__}")
    if keys.dtype.kind not in "iu":
        raise TypeError(f"{what}: expected integer keys (int64), got dtype {keys.dtype}")
    if keys.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D array of keys, got shape {keys.shape}")
    if keys.dtype.kind == "u" and keys.size and int(keys.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{what}: keys above 2**63-1 do not fit int64")
    return np.ascontiguousarray(keys, dtype=np.int64)


def _as_rows(rows: Any, n: int, dim: int | None, what: str) -> np.ndarray:
    rows = np.asarray(rows)
    if rows.dtype.kind != "f":
        raise TypeError(f"{what}: expected floating-point rows, got dtype {rows.dtype}")
    if rows.ndim != 2 or rows.shape[0] != n or (dim is not None and rows.shape[1] != dim):
        expected = f"({n}, {dim if dim is not None else 'dim'})"
        raise ValueError(f"{what}: expected rows of shape {expected}, got {rows.shape}")
    return np.ascontiguousarray(rows, dtype=np.float32)


# ------------------------------------------------------------------------------------- building
def build_store(
    path: str | os.PathLike[str],
    tables: Mapping[str, tuple[Any, Any]],
    *,
    dtype: str = "float32",
    missing: Any = "zeros",
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    persistent: bool = False,
) -> Path:
    """Writes a store directory from in-memory tables.

    Args:
        path: the store directory to create.
        tables: table name -> ``(keys, rows)``: keys an integer (n,) array of unique keys, rows a
            float (n, dim) array.
        dtype: storage dtype, ``"float32"`` or ``"float16"`` (rows are rounded to nearest even).
        missing: the missing-key policy (``"zeros"``, ``"error"`` or a (dim,) default vector), or a
            dict table name -> policy.
        metadata: JSON-serialisable data stored with the tables (e.g. the transform plan's fingerprint).
        overwrite: replace an existing store at ``path``.
        persistent: keep the rows in a RocksDB tier (``rocksdb/``) instead of ``.npy`` files: the
            store can then be opened with a host memory budget, and updates and erases persist.

    Returns:
        The store directory.

    Raises:
        TypeError, ValueError: bad tables or options. FileExistsError: ``path`` exists. OSError: the
        disk is full or unwritable; then nothing is left at ``path`` (the build goes to a temporary
        sibling directory and is renamed into place only when complete).
    """
    path = Path(path)
    if persistent and not _core.has_rocksdb:
        raise RuntimeError(_NO_ROCKSDB)
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {DTYPES}")
    if not tables:
        raise ValueError("tables: expected at least one table")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
    prepared = _prepare_tables(tables, missing)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.building-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        (staging / "tables").mkdir(parents=True)
        entries = _write_rocksdb(staging, prepared, dtype, path) if persistent else _write_npy(staging, prepared, dtype)
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "tables": entries, "metadata": dict(metadata or {})}
        if persistent:
            manifest["persistent"] = {"kind": "rocksdb", "dir": "rocksdb", "file_checksums": "crc32c"}
        write_manifest(staging / MANIFEST, manifest)
        _move_into_place(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


_Prepared = tuple[str, np.ndarray, np.ndarray, MissingPolicy]


def _prepare_tables(tables: Mapping[str, tuple[Any, Any]], missing: Any) -> list[_Prepared]:
    """(name, keys int64 (n,), rows (n, dim), policy) per table, checked (see :func:`build_store`)."""
    prepared = []
    for name, pair in tables.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"table name {name!r}: expected a non-empty string")
        try:
            keys, rows = pair
        except (TypeError, ValueError):
            raise TypeError(f"table {name!r}: expected a (keys, rows) pair") from None
        keys = _as_keys(keys, f"table {name!r} keys")
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] < 1:
            raise ValueError(f"table {name!r} rows: expected shape (n, dim) with dim >= 1, got {rows.shape}")
        _as_rows(rows[:0], 0, rows.shape[1], f"table {name!r} rows")  # dtype check
        if rows.shape[0] != keys.shape[0]:
            raise ValueError(f"table {name!r} rows: expected rows of shape ({keys.shape[0]}, {rows.shape[1]}), got {rows.shape}")
        unique, counts = np.unique(keys, return_counts=True)
        if unique.size != keys.size:
            raise ValueError(f"table {name!r}: duplicate keys {unique[counts > 1][:10].tolist()}")
        policy_value = missing.get(name, "zeros") if isinstance(missing, Mapping) else missing
        prepared.append((name, keys, rows, MissingPolicy.parse(policy_value, rows.shape[1], name)))
    if isinstance(missing, Mapping) and set(missing) - set(tables):
        raise ValueError(f"missing-key policies for unknown tables {sorted(set(missing) - set(tables))}")
    return prepared


def _entry(name: str, keys: np.ndarray, rows: np.ndarray, dtype: str, policy: MissingPolicy) -> dict[str, Any]:
    return {"name": name, "rows": int(keys.shape[0]), "dim": int(rows.shape[1]), "dtype": dtype, "missing": policy.to_json()}


def _write_npy(staging: Path, prepared: list[_Prepared], dtype: str) -> list[dict[str, Any]]:
    """Each table as ``tables/<i>.keys.npy`` + ``tables/<i>.rows.npy`` (listed with their checksums)."""
    entries = []
    for i, (name, keys, rows, policy) in enumerate(prepared):
        entry = _entry(name, keys, rows, dtype, policy)
        keys_file, rows_file = f"tables/{i}.keys.npy", f"tables/{i}.rows.npy"
        np.save(staging / keys_file, keys, allow_pickle=False)
        np.save(staging / rows_file, rows.astype(dtype), allow_pickle=False)  # one rounding, from the input
        entry["keys"] = file_entry(staging, keys_file)
        entry["values"] = file_entry(staging, rows_file)
        entries.append(entry)
    return entries


def _write_rocksdb(staging: Path, prepared: list[_Prepared], dtype: str, path: Path) -> list[dict[str, Any]]:
    """Every table's rows into one RocksDB database ``rocksdb/``, compacted and closed."""
    tier = _core.PersistentTier(str(staging / "rocksdb"), create_if_missing=True)
    entries = []
    for i, (name, keys, rows, policy) in enumerate(prepared):
        for start in range(0, keys.shape[0], _LOAD_CHUNK):
            chunk = slice(start, start + _LOAD_CHUNK)
            try:
                tier.put(i, keys[chunk], np.ascontiguousarray(rows[chunk].astype(dtype)))
            except RuntimeError as e:
                raise OSError(f"{path}: writing table {name!r} to RocksDB failed: {e}") from None
        entries.append(_entry(name, keys, rows, dtype, policy))
    try:
        tier.compact()  # a bulk-loaded database reads faster compacted
    except RuntimeError as e:
        raise OSError(f"{path}: compacting RocksDB failed: {e}") from None
    del tier  # closes the database before the directory moves
    return entries


def _move_into_place(staging: Path, path: Path) -> None:
    """Renames the finished ``staging`` directory to ``path`` (replacing an older store there)."""
    if path.exists():
        old = path.parent / f".{path.name}.replaced-{os.getpid()}"
        os.rename(path, old)
        os.rename(staging, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, path)


def build_store_from_parquet(
    path: str | os.PathLike[str],
    sources: Mapping[str, str | os.PathLike[str]],
    *,
    key_column: str = "key",
    vector_column: str = "vector",
    **options: Any,
) -> Path:
    """:func:`build_store` from parquet files: per table, a file with an integer key column and a
    list-of-float vector column (all lists of one length). ``options`` go to :func:`build_store`."""
    import pyarrow.parquet as pq  # noqa: PLC0415 - optional dependency

    tables = {}
    for name, source in sources.items():
        table = pq.read_table(source)
        for column in (key_column, vector_column):
            if column not in table.column_names:
                raise ValueError(f"{source}: no column {column!r} (columns: {table.column_names})")
        keys = table.column(key_column).to_numpy()
        vectors = table.column(vector_column).combine_chunks()
        lengths = np.asarray(vectors.value_lengths())
        if lengths.size and (lengths != lengths[0]).any():
            raise ValueError(f"{source}: column {vector_column!r} holds vectors of different lengths {sorted(set(lengths.tolist()))[:5]}")
        dim = int(lengths[0]) if lengths.size else 0
        values = np.asarray(vectors.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim if dim else 1)
        tables[name] = (keys, values)
    return build_store(path, tables, **options)


def build_store_from_state_dict(
    path: str | os.PathLike[str],
    source: Any,
    tables: Mapping[str, str] | None = None,
    **options: Any,
) -> Path:
    """:func:`build_store` from PyTorch ``nn.Embedding`` weights: row i of a weight is key i.

    Args:
        path: the store directory.
        source: a ``torch.nn.Module`` or a state_dict (name -> tensor).
        tables: table name -> state_dict key of a (num_embeddings, dim) weight. Default, for a
            module: every ``nn.Embedding`` in it, named by its module path; required for a state_dict.
        options: passed to :func:`build_store`.
    """
    import torch  # noqa: PLC0415 - optional dependency

    if isinstance(source, torch.nn.Module):
        state = source.state_dict()
        if tables is None:
            tables = {name: f"{name}.weight" for name, module in source.named_modules() if isinstance(module, torch.nn.Embedding)}
    elif isinstance(source, Mapping):
        state = source
        if tables is None:
            raise ValueError("tables: name the state_dict key of each table (e.g. {'users': 'emb.users.weight'})")
    else:
        raise TypeError(f"source: expected a torch.nn.Module or a state_dict, got {type(source).__name__}")
    if not tables:
        raise ValueError("no embedding tables found in the module")
    arrays = {}
    for name, key in tables.items():
        if key not in state:
            raise KeyError(f"table {name!r}: no {key!r} in the state_dict (keys: {sorted(state)[:10]})")
        weight = state[key].detach().to("cpu", torch.float32).numpy()
        if weight.ndim != 2:
            raise ValueError(f"table {name!r}: {key!r} has shape {tuple(weight.shape)}: expected (num_embeddings, dim)")
        arrays[name] = (np.arange(weight.shape[0], dtype=np.int64), weight)
    return build_store(path, arrays, **options)


def _read_manifest(path: Path) -> tuple[Path, dict[str, Any]]:
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
    manifest_path, manifest = _read_manifest(Path(path))
    try:
        tables = [
            TableInfo(e["name"], int(e["rows"]), int(e["dim"]), e["dtype"], e.get("missing", {"policy": "zeros"})["policy"])
            for e in manifest["tables"]
        ]
    except (KeyError, TypeError, ValueError) as e:
        raise StoreFormatError(f"{manifest_path}: damaged ({type(e).__name__}: {e})") from None
    return dict(manifest.get("metadata", {})), tables


def absent_keys_message(table: str, keys: Any) -> str:
    """``"<n> key(s) not in table '<table>': [up to 10 keys] ..."`` for keys (n,) that exist nowhere."""
    listed = keys[:10].tolist()
    return f"{keys.size} key(s) not in table {table!r}: {listed}{' ...' if keys.size > 10 else ''}"


def _check_host_out(out: Any, out_dtype: str, shape: tuple[int, ...]) -> None:
    """Raises TypeError / ValueError unless ``out`` is a C-contiguous, writeable numpy array of
    ``out_dtype`` and ``shape``."""
    if not isinstance(out, np.ndarray) or out.dtype != np.dtype(out_dtype):
        raise TypeError(f"out: expected a {out_dtype} numpy array, got {getattr(out, 'dtype', type(out).__name__)}")
    if out.shape != shape:
        raise ValueError(f"out: expected shape ({', '.join(map(str, shape))}), got {out.shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out: expected a C-contiguous, writeable array")

# ------------------------------------------------------------------------------------- the store
class EmbeddingStore:
    """An opened store: batched lookups, online updates and erases, per-tier statistics.

    Args:
        path: the store directory.
        threads: threads per lookup (default: the machine's cores).
        verify: check every file against its checksum while opening (default): the ``.npy``
            files against the SHA-256 in the manifest, RocksDB's table files against their
            whole-file CRC32C. The manifest's own seal is always checked.
        role: for a store with a RocksDB tier: ``"primary"`` (the one process that may write to
            it; RocksDB's lock keeps out a second) or ``"secondary"`` (read-only, any number beside
            the primary and each other; :meth:`catch_up` reads the primary's later writes).
        host_budget_bytes: for a store with a persistent (RocksDB) tier: the host memory its tables
            may use; the host tier then keeps the most frequently used rows and reads the rest
            from RocksDB. None: every row in host memory.
        block_cache_bytes: RocksDB's block cache, in bytes.
        device: CUDA device of a GPU tier (needs ``gpu_cache_bytes``); lookups then go through it
            (device keys: cupy arrays, torch CUDA tensors; numpy keys are copied there and back).
        gpu_cache_bytes: device memory for the GPU caches of all tables (shared by row count).
        gpu_cache_dtype: GPU row storage, ``"float32"``, ``"float16"`` or ``"bfloat16"`` (a hit
            returns the stored row, rounded to nearest even from the host's float32 row).
        gpu_eviction: ``"lru"`` or ``"lfu"``.
        gpu_admission: TinyLFU admission into the GPU caches (see :class:`embedding_cache.gpu.GpuTier`).
        gpu_async_insert: insert missed rows into the GPU caches on a stream of the tier's own,
            off the lookup's stream (same outputs).

    Raises:
        StoreFormatError: a missing, truncated or damaged file (naming it and both checksums),
            an edited manifest, another format version, or a store that needs the RocksDB tier
            in a build without it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        threads: int | None = None,
        verify: bool = True,
        role: str = "primary",
        host_budget_bytes: int | None = None,
        block_cache_bytes: int = 64 << 20,
        device: int | None = None,
        gpu_cache_bytes: int | None = None,
        gpu_cache_dtype: str = "float32",
        gpu_eviction: str = "lru",
        gpu_admission: bool = False,
        gpu_async_insert: bool = False,
    ) -> None:
        self.path = Path(path)
        self._closed = True
        self._tier = None
        manifest_path, manifest = _read_manifest(self.path)
        if threads is not None and threads < 1:
            raise ValueError(f"threads {threads}: expected >= 1")
        if role not in ROLES:
            raise ValueError(f"role {role!r}: expected one of {ROLES}")
        self.role = role
        self.verified_bytes = 0
        """Bytes whose checksums were verified while opening."""
        self.verify_seconds = 0.0
        """Seconds spent verifying checksums while opening."""
        self.metadata: dict[str, Any] = dict(manifest.get("metadata", {}))
        self._pool = _core.ThreadPool(threads or 0)
        self._tables: dict[str, _core.HostTable] = {}
        self._info: dict[str, dict[str, Any]] = {}
        self._policies: dict[str, MissingPolicy] = {}
        self._counter_base: dict[str, dict[str, tuple[int, int]]] = {}  # counts of tiers rebuilt by catch_up
        self._budget = host_budget_bytes
        if host_budget_bytes is not None and host_budget_bytes < 1:
            raise ValueError(f"host_budget_bytes {host_budget_bytes}: expected >= 1")
        persistent = manifest.get("persistent")
        if persistent is not None:
            self._open_persistent(manifest_path, persistent, block_cache_bytes, role, verify)
        elif host_budget_bytes is not None:
            raise ValueError("host_budget_bytes needs a store with a persistent tier (build_store(..., persistent=True))")
        elif verify:
            self._verify_npy(manifest, manifest_path)
        self._manifest_path = manifest_path
        try:
            self._entries = manifest["tables"]
            self._open_tables()
        except StoreFormatError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise StoreFormatError(f"{manifest_path}: damaged ({type(e).__name__}: {e})") from None
        self._closed = False
        self._gpu = None
        self._gpu_options = None
        if (device is None) != (gpu_cache_bytes is None):
            raise ValueError("device and gpu_cache_bytes: give both for a GPU tier, or neither")
        if device is not None:
            self._open_gpu_tier((int(device), int(gpu_cache_bytes), {e["name"]: float(e["rows"]) for e in self._entries},
                                 gpu_cache_dtype, gpu_eviction, gpu_admission, gpu_async_insert))

    def _open_persistent(self, manifest_path: Path, persistent: Mapping[str, Any], block_cache_bytes: int, role: str, verify: bool) -> None:
        """Opens the RocksDB tier in ``role`` and (``verify``) checks every table file's CRC32C."""
        if not _core.has_rocksdb:
            raise StoreFormatError(f"{manifest_path}: this store keeps its rows in RocksDB, but {_NO_ROCKSDB}")
        tier_dir = self.path / persistent.get("dir", "rocksdb")
        if not tier_dir.is_dir():
            raise StoreFormatError(f"{tier_dir}: missing (the store's RocksDB tier, listed in {MANIFEST})")
        self._tier = self._open_tier(tier_dir, block_cache_bytes, role)
        if verify:
            started = time.perf_counter()
            try:
                _files, self.verified_bytes = self._tier.verify_file_checksums(threads=os.cpu_count() or 1)
            except RuntimeError as e:
                self._tier = None
                raise StoreFormatError(f"{tier_dir}: {e}") from None
            self.verify_seconds = time.perf_counter() - started

    def _verify_npy(self, manifest: Mapping[str, Any], manifest_path: Path) -> None:
        """Checks every table's keys and rows file against its size and SHA-256."""
        started = time.perf_counter()
        try:
            refs = [e[part] for e in manifest["tables"] for part in ("keys", "values")]
            self.verified_bytes = verify_files(self.path, refs, manifest_path)
        except IntegrityError as e:
            raise StoreFormatError(str(e)) from None
        except (KeyError, TypeError, ValueError) as e:
            raise StoreFormatError(f"{manifest_path}: damaged ({type(e).__name__}: {e})") from None
        self.verify_seconds = time.perf_counter() - started

    def _open_tables(self) -> None:
        """(Re)builds every table's host tier: all rows, or, with a budget, empty (filled from RocksDB on demand)."""
        total = sum(int(e["rows"]) * int(e["dim"]) * np.dtype(e["dtype"]).itemsize for e in self._entries) or 1
        for i, entry in enumerate(self._entries):
            self._open_table(i, entry, self._manifest_path, total)

    def _open_gpu_tier(self, options: tuple[Any, ...] | None = None) -> None:
        """Opens the GPU tier with ``options`` (device, bytes, rows per table, dtype, eviction,
        admission, async insert), remembered for reopening; None: the remembered ones."""
        from embedding_cache.gpu import GpuTier  # noqa: PLC0415 - needs cupy

        if options is not None:
            self._gpu_options = options
        device, capacity, rows, dtype, eviction, admission, async_insert = self._gpu_options
        self._gpu = GpuTier({name: int(t.dim) for name, t in self._tables.items()}, device, capacity, rows, dtype, eviction, admission,
                            async_insert)

    def _open_tier(self, tier_dir: Path, block_cache_bytes: int, role: str) -> Any:
        """The RocksDB tier, as the primary or as a secondary keeping its info log in a temporary
        directory (removed when the store is closed or collected)."""
        secondary_path = ""
        if role == "secondary":
            secondary_path = tempfile.mkdtemp(prefix="embedding_cache-secondary-")
            self._secondary_dir = weakref.finalize(self, shutil.rmtree, secondary_path, True)
        try:
            return _core.PersistentTier(str(tier_dir), create_if_missing=False, block_cache_bytes=block_cache_bytes,
                                        secondary_path=secondary_path)
        except RuntimeError as e:
            hint = ""
            if "lock" in str(e).lower():
                hint = " (another process has it open as the primary: open this one with role='secondary')"
            raise StoreFormatError(f"{tier_dir}: {e}{hint}") from None

    def _load_array(self, ref: dict[str, Any], dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        file = self.path / ref["file"]
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

    def _open_table(self, i: int, entry: dict[str, Any], manifest_path: Path, total_bytes: int) -> None:
        name, n, dim, dtype = entry["name"], int(entry["rows"]), int(entry["dim"]), entry["dtype"]
        if dtype not in DTYPES:
            raise StoreFormatError(f"{manifest_path}: table {name!r} has dtype {dtype!r}: expected one of {DTYPES}")
        row_bytes = dim * np.dtype(dtype).itemsize
        if self._tier is not None:
            n = int(self._tier.count(i))
        max_rows = 0
        if self._budget is not None:  # the budget is shared in proportion to each table's raw size
            share = self._budget * (int(entry["rows"]) * row_bytes) / total_bytes
            max_rows = max(1, int(share // (row_bytes + _ROW_OVERHEAD)))
        resident = min(n, max_rows) if max_rows else n
        slabs = max(1, -(-resident // _SLAB_ROWS))
        slab_rows = max(1024, -(-resident // slabs))  # the rows fill whole slabs: no slack after loading
        table = _core.HostTable(dim, getattr(_core.RowDtype, dtype), slab_rows=slab_rows, expected_rows=resident, max_rows=max_rows)
        if self._tier is None:
            keys = self._load_array(entry["keys"], np.dtype(np.int64), (n,))
            rows = self._load_array(entry["values"], np.dtype(dtype), (n, dim))
            for start in range(0, n, _LOAD_CHUNK):
                table.insert_or_assign(np.ascontiguousarray(keys[start : start + _LOAD_CHUNK]), np.ascontiguousarray(rows[start : start + _LOAD_CHUNK], dtype=np.float32))
        elif not max_rows:  # no budget: every row from RocksDB into host memory
            self._tier.scan(i, dim, dtype, _LOAD_CHUNK, lambda k, r: table.insert_or_assign(k, np.ascontiguousarray(r, dtype=np.float32)))
        policy = entry.get("missing", {"policy": "zeros"})
        self._policies[name] = MissingPolicy(policy["policy"], tuple(policy["vector"]) if "vector" in policy else None)
        if self._policies[name].policy not in POLICIES:
            raise StoreFormatError(f"{manifest_path}: table {name!r} has missing-key policy {policy['policy']!r}")
        self._tables[name] = table
        self._info[name] = {"dim": dim, "dtype": dtype, "id": i, "tier_hits": 0, "tier_misses": 0}

    # ------------------------------------------------------------------------------------ API
    def _table(self, name: str) -> _core.HostTable:
        if self._closed:
            raise ValueError(f"EmbeddingStore {self.path} is closed")
        try:
            return self._tables[name]
        except KeyError:
            raise KeyError(f"no table {name!r} in {self.path}: tables are {sorted(self._tables)}") from None

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
        handle; default: cupy's current stream) orders the work.

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
        if out_dtype not in ("float32", "float16"):
            raise ValueError(f"out_dtype {out_dtype!r}: expected 'float32' or 'float16'")
        if _on_device(keys):
            return self._lookup_device([table], keys, out, [missing], stream, out_dtype, columns=False)
        keys = _as_keys(keys, "keys")
        if out is not None:
            _check_host_out(out, out_dtype, (keys.shape[0], host.dim))
        if self._gpu is not None and found is None:
            cp = self._gpu.cp
            with cp.cuda.Device(self._gpu.device):
                result = self._lookup_device([table], cp.asarray(keys), None, [missing], stream, out_dtype, columns=False)
                return cp.asnumpy(result, stream=self._gpu.stream_of(stream), out=out)
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
        hits = host.find(keys, out, found, self._pool)
        if hits != keys.shape[0] and self._tier is not None and host.max_rows:
            hits += self._read_through(table, host, keys, out, found)
        if hits != keys.shape[0]:
            self._apply_missing(table, missing, keys, out, found == 0)
        return out

    def _apply_missing(self, table: str, missing: MissingPolicy | None, keys: np.ndarray, out: np.ndarray, absent: np.ndarray) -> None:
        """Applies ``missing`` (None: the table's policy) to the rows of ``out`` where ``absent``
        (bool (n,)) is set: they hold zeros already; fills the default vector, or raises KeyError."""
        policy = self._policies[table] if missing is None else missing
        if policy.policy == "vector":
            out[absent] = np.asarray(policy.vector, dtype=np.float32)
        elif policy.policy == "error":
            raise KeyError(absent_keys_message(table, keys[absent]))

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
        device_keys = cp.ascontiguousarray(device_keys.reshape(n, len(tables)))

        def read_host(j: int, host_keys: np.ndarray, found: np.ndarray, out_rows: np.ndarray) -> None:
            self._lookup_host(tables[j], host_keys, out_rows, None if missing is None else missing[j], found)

        result = self._gpu.lookup_columns(tables, device_keys, read_host, None if out is None else out.reshape(n, len(tables), dim),
                                          out_dtype, stream)
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

        Device keys (cupy or torch int64 (n, k)) go through the GPU tier in one call (one wait for
        the miss counts, one for the missed keys, whatever k) and come back on the device.

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
        hits = _core.find_columns(hosts, keys, out, found, self._pool)
        for j in np.flatnonzero(hits != n):
            table, host = tables[j], hosts[j]
            got = int(hits[j])
            if self._tier is not None and host.max_rows:
                # Column views, written through: the rows read from RocksDB land in out and found
                # themselves. (Copies made only where needed once lost them when n == 1, because
                # a one-element column counts as contiguous and ascontiguousarray returned the view.)
                got += self._read_through(table, host, keys[:, j], out[:, j], found[:, j])
            if got != n:
                self._apply_missing(table, None if missing is None else missing[j], keys[:, j], out[:, j], found[:, j] == 0)
        return out

    def _read_through(self, table: str, host: Any, keys: np.ndarray, out: np.ndarray, found: np.ndarray) -> int:
        """Reads the keys the host tier missed from RocksDB, fills them in, offers them to host.

        Args: ``keys`` int64 (n,), ``out`` float32 (n, dim) and ``found`` uint8 (n,) host arrays,
        views allowed (written in place where ``found`` is 0). Returns the rows found there."""
        info = self._info[table]
        missed = np.flatnonzero(found == 0)
        missed_keys = np.ascontiguousarray(keys[missed])
        buffer = np.empty((missed.size, info["dim"]), dtype=info["dtype"])
        in_tier = np.empty(missed.size, dtype=np.uint8)
        got = int(self._tier.multi_get(info["id"], missed_keys, buffer, in_tier))
        info["tier_hits"] += got
        info["tier_misses"] += missed.size - got
        if got:
            present = in_tier.astype(bool)
            rows = np.ascontiguousarray(buffer[present], dtype=np.float32)
            out[missed[present]] = rows
            found[missed[present]] = 1
            host.admit(np.ascontiguousarray(missed_keys[present]), rows)
        return got

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
        before = self._tier.sequence_number
        self._tier.catch_up()
        if self._tier.sequence_number == before:
            return False
        before = self.counters()
        self._open_tables()
        if self._gpu is not None:
            self._gpu = None  # frees its device memory before the new one takes it
            self._open_gpu_tier()
        # counters span the store's life: the new tiers count on from the old ones' totals
        for name, tiers in before.items():
            self._info[name].update(tier_hits=tiers["rocksdb"][0] - tiers["rocksdb"][1], tier_misses=tiers["rocksdb"][1])
            self._counter_base[name] = {tier: tiers[tier] for tier in ("host", "gpu") if tier in tiers}
        return True

    def update(self, table: str, keys: np.ndarray, rows: Any) -> None:
        """Inserts or overwrites rows (in memory): keys int64 (n,), rows float (n, dim).
        A lookup running meanwhile returns each row whole, old or new.

        Raises:
            PermissionError: a store opened as a secondary (only its primary writes)."""
        self._check_writer()
        host = self._table(table)
        keys = _as_keys(keys, "keys")
        checked = _as_rows(rows, keys.shape[0], host.dim, "rows")
        info = self._info[table]
        if info["dtype"] == "float16":
            # Round once, from the caller's values; the core then stores that fp16 value exactly.
            checked = np.ascontiguousarray(np.asarray(rows).astype(np.float16), dtype=np.float32)
        if self._tier is not None:  # write through: the persistent tier first
            try:
                self._tier.put(info["id"], keys, np.ascontiguousarray(checked.astype(info["dtype"])))
            except RuntimeError as e:
                raise OSError(f"{self.path}: writing to RocksDB failed: {e}") from None
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
        keys = _as_keys(keys, "keys")
        erased = int(host.erase(keys))
        if self._tier is not None:
            erased = int(self._tier.erase(self._info[table]["id"], keys))
        if self._gpu is not None:
            self._gpu.invalidate(table, keys)
        return erased

    @property
    def tables(self) -> list[TableInfo]:
        """Name, rows held, dim, storage dtype and missing-key policy of every table."""
        if self._closed:
            raise ValueError(f"EmbeddingStore {self.path} is closed")
        return [
            TableInfo(name, self._rows(name), int(t.dim), self._info[name]["dtype"], self._policies[name].policy)
            for name, t in self._tables.items()
        ]

    def _rows(self, name: str) -> int:
        return int(self._tier.count(self._info[name]["id"])) if self._tier is not None else int(self._tables[name].size)

    def stats(self) -> dict[str, Any]:
        """Per table: ``lookups`` (keys), and per tier (``gpu`` with a GPU tier, ``host``, and
        ``rocksdb`` when the store has one) ``hits``, ``misses``, ``rows`` and ``bytes`` (device
        memory and capacity for the GPU; host memory; RocksDB's live data on disk, shared by all
        tables)."""
        counts = self.counters()
        result = {}
        for name, t in self._tables.items():
            tiers = {tier: {"hits": looked - missed, "misses": missed} for tier, (looked, missed) in counts[name].items()}
            tiers["host"].update(rows=int(t.size), bytes=int(t.bytes))
            if "rocksdb" in tiers:
                tiers["rocksdb"].update(rows=self._rows(name), bytes=int(self._tier.disk_bytes))
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
        for name, t in self._tables.items():
            counters = t.stats()
            base = self._counter_base.get(name, {})
            host_base = base.get("host", (0, 0))
            tiers = {"host": (int(counters["lookups"]) + host_base[0], int(counters["misses"]) + host_base[1])}
            if self._gpu is not None:
                gpu = self._gpu.stats(name)
                gpu_base = base.get("gpu", (0, 0))
                tiers = {"gpu": (gpu["hits"] + gpu["misses"] + gpu_base[0], gpu["misses"] + gpu_base[1]), **tiers}
            if self._tier is not None:
                info = self._info[name]
                tiers["rocksdb"] = (info["tier_hits"] + info["tier_misses"], info["tier_misses"])
            result[name] = tiers
        return result

    def close(self) -> None:
        """Frees the tables; later calls raise ValueError. Closing twice is allowed."""
        if not getattr(self, "_closed", True):
            self._tables.clear()
            self._tier = None  # closes the database
            self._gpu = None  # frees the device memory
            self._closed = True
            if getattr(self, "_secondary_dir", None) is not None:
                self._secondary_dir()  # removes the secondary's info-log directory

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._tables)} tables"
        return f"EmbeddingStore({str(self.path)!r}, {state})"
