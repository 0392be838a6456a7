"""Writing a store directory (see :mod:`embedding_cache.format`) from in-memory tables, parquet files
or PyTorch embedding weights. A build goes to a temporary sibling directory and is renamed into
place only when complete."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from embedding_cache import _core
from embedding_cache.format import DTYPES, FORMAT, FORMAT_VERSION, LOAD_CHUNK, MANIFEST, NO_ROCKSDB, as_keys, as_rows
from embedding_cache.policy import MissingPolicy
from tritonrec.integrity import file_entry, write_manifest


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
        raise RuntimeError(NO_ROCKSDB)
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
        keys = as_keys(keys, f"table {name!r} keys")
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] < 1:
            raise ValueError(f"table {name!r} rows: expected shape (n, dim) with dim >= 1, got {rows.shape}")
        as_rows(rows[:0], 0, rows.shape[1], f"table {name!r} rows")  # dtype check
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
        for start in range(0, keys.shape[0], LOAD_CHUNK):
            chunk = slice(start, start + LOAD_CHUNK)
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
