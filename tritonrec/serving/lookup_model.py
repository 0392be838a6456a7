"""The embedding lookup as a Triton model sees it, without Triton: ids in, vectors out.

``backends/embedding_lookup/model.py`` is a thin adapter over :class:`EmbeddingLookupModel`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedding_cache import EmbeddingStore, GpuCacheOptions, HostOptions, MissingPolicy, StoreFormatError, absent_keys_message
from tritonrec.serving.config import ConfigError, parameter, store_role, tier_options
from tritonrec.serving.dtypes import wire_dtype
from tritonrec.serving.fingerprint import FingerprintMismatchError, check_fingerprint
from tritonrec.serving.lists import (
    check_list_layout, check_list_rows, list_from_tensors, list_layout_for, list_tensor_names, list_tensor_specs, merge_list_requests,
)
from tritonrec.serving.requests import RequestError, row_slices, run_batched
from tritonrec.serving.specs import TensorSpec
from tritonrec.transform.ops import row_of_each_value

IDS = "ids"
LOAD_ERRORS = (StoreFormatError, ConfigError, FingerprintMismatchError, KeyError, ValueError, RuntimeError, ImportError)
"""What opening a lookup model raises for a bad store or configuration (the message says what)."""
EMBEDDINGS = "embeddings"
MISSING_CHOICES = ("store", "zeros", "error")
COMBINERS = ("sum", "mean")
_ZEROS = MissingPolicy("zeros")


class _AbsentOnDevice(KeyError):
    """A device lookup met ids that no tier holds in a table whose policy is ``error``."""


class EmbeddingLookupModel:
    """Looks up ids [batch, n_tables] int64 in a store; returns embeddings [batch, n_tables, dim] float32.

    Column ``j`` of ``ids`` is looked up in table ``tables[j]``. Every table must have the same dim.
    All requests of one :meth:`execute` are looked up together, one store call per table.

    Multi-hot tables (``multi_hot``: table -> ``"sum"`` or ``"mean"``) take a list of ids per row
    instead of a column of ``ids`` (which then holds the other tables' columns, in ``tables``
    order): ``<table>__values`` int64 + ``<table>__lengths`` INT32 [batch, 1] (``list_layout``
    ``padded``: values [batch, width], ids past each row's length ignored) or ``<table>__offsets``
    INT32 [n + 1] (``offsets``: values [nnz], for max_batch_size 0). Their slot of the output is the
    sum or the mean of the rows' vectors (zeros for an empty row), summed in id order in float32.

    Args:
        store: an opened :class:`EmbeddingStore` (the model closes it in :meth:`close`).
        tables: table name per ids column.
        max_batch_size: the most rows per request (0: no limit).
        missing: ``"store"`` (each table's own policy), ``"zeros"`` or ``"error"`` (a request
            holding an id that no tier has fails, naming the table and ids; others are served).
        fingerprint: the transform plan's fingerprint this model serves with; a store recording
            another (``metadata["plan_fingerprint"]``) is refused.
    """

    def __init__(
        self,
        store: EmbeddingStore,
        tables: Sequence[str],
        max_batch_size: int = 0,
        missing: str = "store",
        fingerprint: str | None = None,
        multi_hot: Mapping[str, str] | None = None,
        list_layout: str = "padded",
    ) -> None:
        if not tables:
            raise ValueError("tables: expected at least one table name")
        if missing not in MISSING_CHOICES:
            raise ValueError(f"missing-key policy {missing!r}: expected one of {MISSING_CHOICES}")
        info = {t.name: t for t in store.tables}
        unknown = [t for t in tables if t not in info]
        if unknown:
            raise ValueError(f"tables {unknown} are not in the store {store.path} (it holds {sorted(info)})")
        dims = {info[t].dim for t in tables}
        if len(dims) != 1:
            raise ValueError(f"tables {list(tables)} have different dims {sorted(dims)}: the output needs one dim")
        multi_hot = dict(multi_hot or {})
        for table, combiner in multi_hot.items():
            if table not in tables:
                raise ValueError(f"multi_hot table {table!r} is not one of the model's tables {list(tables)}")
            if combiner not in COMBINERS:
                raise ValueError(f"multi_hot combiner {combiner!r} of table {table!r}: expected one of {COMBINERS}")
        check_list_layout(list_layout, max_batch_size)
        check_fingerprint(f"embedding store {store.path}", store.metadata.get("plan_fingerprint"), fingerprint)
        self.store = store
        self.tables = list(tables)
        self.dim = dims.pop()
        self.max_batch_size = int(max_batch_size)
        self.missing = missing
        self._policy = None if missing == "store" else MissingPolicy(missing)
        policies = {t.name: t.missing for t in store.tables}
        self._strict = [missing == "error" or (missing == "store" and policies[t] == "error") for t in self.tables]
        # per table: zeros where strict (absent ids are reported per request), else the model's
        # policy (None: the table's own)
        self._policies = [_ZEROS if strict else self._policy for strict in self._strict]
        # on the GPU, strict tables raise (the caller then fails only the requests holding the ids)
        self._device_policies = [MissingPolicy("error") if strict else self._policy for strict in self._strict]
        self.multi_hot = multi_hot
        self.list_layout = list_layout
        self._single = [j for j, t in enumerate(self.tables) if t not in multi_hot]  # output slot of each ids column
        self._multi = [(j, t, multi_hot[t]) for j, t in enumerate(self.tables) if t in multi_hot]
        self.inputs = ([TensorSpec(IDS, np.dtype(np.int64), (len(self._single),))] if self._single else []) + [
            spec for _, t, _ in self._multi for spec in list_tensor_specs(t, np.dtype(np.int64), list_layout)]
        self._input_names = {spec.name for spec in self.inputs}
        self.outputs = [TensorSpec(EMBEDDINGS, np.dtype(np.float32), (len(self.tables), self.dim))]
        self._last = self._read_counters()

    @classmethod
    def open(
        cls,
        store_path: str | os.PathLike[str],
        tables: Sequence[str],
        *,
        max_batch_size: int = 0,
        missing: str = "store",
        fingerprint: str | None = None,
        host: HostOptions | None = None,
        device: int | None = None,
        gpu_cache: GpuCacheOptions | None = None,
        multi_hot: Mapping[str, str] | None = None,
        list_layout: str = "padded",
        role: str = "secondary",
    ) -> EmbeddingLookupModel:
        """Opens the store at ``store_path`` (see :class:`EmbeddingStore` for its errors, the
        tiers' options ``host`` and ``gpu_cache``, and ``role``; every file verified) and wraps it.
        With ``device`` (and ``gpu_cache``), ids on that GPU are looked up there. Serving only reads: by default the store's RocksDB tier
        is opened as a read-only secondary, so any number of models and instances share it."""
        store = EmbeddingStore(
            Path(store_path), role=role, device=device, host=host or HostOptions(), gpu_cache=gpu_cache)
        try:
            return cls(store, tables, max_batch_size, missing, fingerprint, multi_hot, list_layout)
        except BaseException:
            store.close()
            raise

    @classmethod
    def from_config(cls, config: Mapping[str, Any], store_path: str | os.PathLike[str], *, device: int | None = None,
                    instance_name: str = "") -> EmbeddingLookupModel:
        """The model a ``config.pbtxt`` (Triton's JSON form) describes over the store at
        ``store_path``: parameters ``tables``, ``missing_key_policy``, ``plan_fingerprint``,
        ``multi_hot``, ``store_role`` (of instance ``instance_name``) and the tiers' options
        (:func:`~tritonrec.serving.config.tier_options`; the GPU cache's with ``device``, a GPU
        ordinal). Errors: :data:`LOAD_ERRORS`."""
        tables = [t.strip() for t in parameter(config, "tables").split(",") if t.strip()]
        if not tables:
            raise ConfigError("parameter 'tables' is empty: expected the table name of each ids column, comma-separated")
        host, gpu_cache = tier_options(config, device is not None)
        max_batch_size = int(config.get("max_batch_size", 0))
        return cls.open(
            store_path, tables, max_batch_size=max_batch_size, missing=parameter(config, "missing_key_policy", "store"),
            fingerprint=parameter(config, "plan_fingerprint") or None, host=host, device=device, gpu_cache=gpu_cache,
            multi_hot=parse_multi_hot(parameter(config, "multi_hot", "")), list_layout=list_layout_for(max_batch_size),
            role=store_role(config, instance_name),
        )

    def check_request(self, tensors: Mapping[str, Any]) -> int:
        """Checks one request's inputs; returns its rows. Raises :class:`RequestError` naming the input."""
        if set(tensors) != self._input_names:
            raise RequestError(f"inputs {sorted(tensors)}: this model takes exactly {sorted(self._input_names)}")
        for spec in self.inputs:
            if spec.name != IDS and tensors[spec.name].dtype != spec.dtype:
                raise RequestError(f"input {spec.name!r} has dtype {wire_dtype(tensors[spec.name].dtype)}: expected {spec.triton_dtype}")
        rows = None
        if self._single:
            ids = tensors[IDS]
            if ids.dtype != np.int64:
                raise RequestError(f"input '{IDS}' has dtype {wire_dtype(ids.dtype)}: expected INT64")
            if ids.ndim != 2 or ids.shape[1] != len(self._single):
                raise RequestError(f"input '{IDS}' has shape {list(ids.shape)}: expected [batch, {len(self._single)}]")
            rows = int(ids.shape[0])
        xp = _array_module(next(iter(tensors.values()))) if tensors else np
        return check_list_rows(tensors, [t for _, t, _ in self._multi], self.list_layout, rows, "multi-hot table", self.max_batch_size, xp)

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Looks every key up once.

        Args:
            ids: int64 (n, n_tables) host array.

        Returns:
            ``(embeddings, absent)``: float32 (n, n_tables, dim) host array the caller owns, and
            for each table ``j`` whose policy is ``error`` and that lacks some ids, a bool (n,)
            mask of those rows (their vectors read as zeros).
        """
        if hasattr(ids, "__cuda_array_interface__"):
            return self._lookup_device(ids), {}
        ids = np.ascontiguousarray(ids)
        found = np.empty(ids.shape, dtype=np.uint8)
        out = self.store.lookup_columns(self.tables, ids, missing=self._policies, found=found)
        absent = {j: found[:, j] == 0 for j in range(len(self.tables)) if self._strict[j] and not found[:, j].all()}
        return out, absent

    def _lookup_device(self, ids: Any) -> Any:
        """ids cupy int64 (n, n_tables) on the GPU tier's device -> cupy float32 (n, n_tables, dim).

        Raises:
            KeyError: ids that exist nowhere in a table whose policy is ``error`` (the caller
                then looks requests up one by one to fail only those holding them).
        """
        return self.store.lookup_columns(self.tables, ids, missing=self._device_policies)

    def _refusal(self, ids: np.ndarray, absent: Mapping[int, np.ndarray]) -> RequestError:
        """The error of a request whose ``ids`` (n, n_tables) hold ids missing where ``absent`` (n,) says."""
        parts = []
        for j, mask in absent.items():
            keys = np.unique(ids[mask, j])
            if keys.size:
                parts.append(absent_keys_message(self.tables[j], keys))
        return RequestError(f"input '{IDS}': " + "; ".join(parts))

    def execute(self, requests: Sequence[Mapping[str, Any]]) -> list[dict[str, np.ndarray] | Exception]:
        """Per request, in order: ``{"embeddings": array}`` or the error that rejects it (others are served).

        Ids absent from a table whose policy is ``error`` fail only the requests holding them: on
        the host from the tiers' found flags, on the device (whose lookup raises KeyError) by
        looking the requests up one by one.
        """
        if self._multi:
            return run_batched(requests, self.check_request, self._run_multi_hot, retry_on=(KeyError,),
                               refuse=lambda e: RequestError(str(e.args[0]) if e.args else str(e)))
        return run_batched(requests, self.check_request, self._run_single, retry_on=(_AbsentOnDevice,),
                           refuse=lambda e: RequestError(f"input '{IDS}': {e.args[0]}"))

    def _run_single(self, batch: list[Mapping[str, Any]], rows: list[int]) -> list[Any]:
        """Checked requests of a model without multi-hot tables, looked up in one call."""
        parts = [r[IDS] for r in batch]
        if hasattr(parts[0], "__cuda_array_interface__"):
            import cupy  # noqa: PLC0415 - GPU instances only

            try:
                merged, absent = self.lookup(parts[0] if len(parts) == 1 else cupy.concatenate(parts))
            except KeyError as e:  # a strict table lacks some ids
                raise _AbsentOnDevice(*e.args) from None
        else:
            merged, absent = self.lookup(parts[0] if len(parts) == 1 else np.concatenate(parts))
        results: list[Any] = []
        for request, block in zip(batch, row_slices(rows)):
            mine = {j: mask[block] for j, mask in absent.items() if mask[block].any()}
            # a block of whole rows of a C-contiguous (n, n_tables, dim) array is contiguous
            results.append(self._refusal(request[IDS], mine) if mine else {EMBEDDINGS: merged if len(batch) == 1 else merged[block]})
        return results

    def _run_multi_hot(self, batch: list[Mapping[str, Any]], rows: list[int]) -> list[Any]:
        """Checked requests of a model with multi-hot tables, each table looked up in one call
        (on the device a strict table lacking some ids raises KeyError)."""
        xp = _array_module(next(iter(batch[0].values())))
        n = sum(rows)
        out = xp.empty((n, len(self.tables), self.dim), dtype=np.float32)
        # output slot -> (bool (n,) rows holding absent ids, row of each key, keys, bool absent per key): strict host tables
        absent: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        if self._single:
            self._look_up_single_slots(batch, xp, out, absent)
        for j, table, combiner in self._multi:
            values_name, second = list_tensor_names(table, self.list_layout)
            column = merge_list_requests([list_from_tensors(table, r[values_name], r[second], self.list_layout, xp) for r in batch], xp)
            keys = xp.ascontiguousarray(column.values.astype(np.int64, copy=False))
            if xp is not np:
                vectors = self.store.lookup(table, keys, missing=self._device_policies[j])
            else:
                found = np.empty(keys.shape[0], dtype=np.uint8)
                vectors = self.store.lookup(table, keys, missing=self._policies[j], found=found)
                if self._strict[j] and not found.all():
                    value_rows = row_of_each_value(column.lengths, np)
                    missed = np.zeros(n, dtype=bool)
                    missed[value_rows[found == 0]] = True
                    absent[j] = (missed, value_rows, keys, found == 0)
            out[:, j] = combine_rows(vectors, column.offsets, combiner, xp)
        results: list[Any] = []
        for block in row_slices(rows):
            parts = [absent_keys_message(self.tables[j], np.unique(keys[key_absent & (key_rows >= block.start) & (key_rows < block.stop)]))
                     for j, (missed, key_rows, keys, key_absent) in absent.items() if missed[block].any()]
            results.append(RequestError("; ".join(parts)) if parts else {EMBEDDINGS: out if len(rows) == 1 else out[block]})
        return results

    def _look_up_single_slots(self, batch: list[Mapping[str, Any]], xp: Any, out: Any, absent: dict[int, Any]) -> None:
        """Fills the one-id slots of ``out`` (n, n_tables, dim) from the requests' ``ids``; records
        rows with ids absent from strict host tables in ``absent`` (see :meth:`_run_multi_hot`)."""
        parts = [r[IDS] for r in batch]
        ids = parts[0] if len(parts) == 1 else xp.concatenate(parts)
        tables = [self.tables[j] for j in self._single]
        if xp is not np:
            out[:, self._single] = self.store.lookup_columns(tables, ids, missing=[self._device_policies[j] for j in self._single])
            return
        ids = np.ascontiguousarray(ids)
        found = np.empty(ids.shape, dtype=np.uint8)
        out[:, self._single] = self.store.lookup_columns(tables, ids, missing=[self._policies[j] for j in self._single], found=found)
        for k, j in enumerate(self._single):
            if self._strict[j] and not found[:, k].all():
                missed = found[:, k] == 0
                absent[j] = (missed, np.arange(ids.shape[0]), ids[:, k], missed)

    def _read_counters(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(table, tier) -> (keys looked up in that tier, keys that tier missed), cumulative."""
        counters = self.store.counters()
        return {(table, tier): value for table in self.tables for tier, value in counters[table].items()}

    def take_counter_deltas(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(table, tier) -> (lookups, misses) since the previous call (or since opening)."""
        now = self._read_counters()
        deltas = {key: (now[key][0] - self._last[key][0], now[key][1] - self._last[key][1]) for key in now}
        self._last = now
        return deltas

    def close(self) -> None:
        """Closes the store."""
        self.store.close()

    def __enter__(self) -> EmbeddingLookupModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_multi_hot(text: str) -> dict[str, str]:
    """The ``multi_hot`` parameter, ``"tags:sum,genres:mean"`` -> ``{"tags": "sum", "genres": "mean"}``.

    Raises:
        ConfigError: an entry that is not ``table:sum`` or ``table:mean``.
    """
    from tritonrec.serving.config import ConfigError  # noqa: PLC0415

    out = {}
    for entry in (e.strip() for e in text.split(",") if e.strip()):
        table, _, combiner = entry.partition(":")
        if not table.strip() or combiner.strip() not in COMBINERS:
            raise ConfigError(f"parameter 'multi_hot' entry {entry!r}: expected TABLE:sum or TABLE:mean, comma-separated")
        out[table.strip()] = combiner.strip()
    return out


def combine_rows(vectors: Any, offsets: Any, combiner: str, xp: Any = np) -> Any:
    """Rows of a multi-hot column, combined: ``vectors`` float32 (nnz, dim) (one per id, row by row),
    int64 ``offsets`` (n + 1,) -> float32 (n, dim): each row's sum, or mean (``combiner``); zeros for
    an empty row. Summed in id order."""
    lengths = offsets[1:] - offsets[:-1]
    out = xp.zeros((lengths.shape[0], vectors.shape[1]), dtype=np.float32)
    if vectors.shape[0]:
        if xp is np:
            nonempty = lengths > 0
            out[nonempty] = np.add.reduceat(vectors, offsets[:-1][nonempty], axis=0)
        else:
            xp.add.at(out, row_of_each_value(lengths, xp), vectors)
    if combiner == "mean":
        out /= xp.maximum(lengths, 1).astype(np.float32)[:, None]
    return out


def _array_module(array: Any) -> Any:
    """numpy for host arrays, cupy for device arrays."""
    if hasattr(array, "__cuda_array_interface__"):
        import cupy  # noqa: PLC0415 - GPU instances only

        return cupy
    return np

