"""Every lookup path of every tier combination against a plain dict, at every batch size.

A one-row lookup once returned zero rows from the RocksDB tier while every test passed: batch 1 was
never compared with a reference. Here each tier combination (:data:`TIER_SETUPS`; a new tier, e.g.
Redis, is one more entry) is checked for batch sizes 0..64 and some large ones, fp32 and fp16
storage, present and absent keys under each missing-key policy, through ``lookup`` (plain, with
``out``, ``found``, ``out_dtype="float16"``) and ``lookup_columns``; hypothesis then varies the
contents. Stores are opened once per setup, so the hot tiers carry state (evictions, admissions)
from one example to the next, as a served store does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedding_cache import EmbeddingStore, MissingPolicy, _core, build_store

DIM = 6
TABLE_ROWS = 3000
TABLES = ("zeros", "vector", "error")  # table name = its missing-key policy
DEFAULT_VECTOR = np.arange(1, DIM + 1, dtype=np.float32) / 8
SIZES = [*range(65), 257, 1000, 4099]


@dataclasses.dataclass(frozen=True)
class TierSetup:
    """How to build and open a store so that a lookup goes through a given set of tiers.

    Attributes:
        name: the test id.
        build: keyword arguments of :func:`build_store`.
        open: keyword arguments of :class:`EmbeddingStore` (e.g. a host budget far below the data).
        marks: pytest marks (``gpu`` for the GPU tier).
        device_keys: also look up device (cupy) keys.
        lookup_chunks: the GPU tier's (chunks, fewest rows a chunk) instead of its defaults, so
            that small batches are cut into several chunks too.
    """

    name: str
    build: dict[str, Any]
    open: dict[str, Any]
    marks: tuple[Any, ...] = ()
    device_keys: bool = False
    lookup_chunks: tuple[int, int] | None = None


# Host budget for ~1/10 of the rows of each table (row bytes + the host tier's per-row overhead).
_BUDGET = len(TABLES) * (TABLE_ROWS // 10) * (DIM * 4 + 24)

_ROCKSDB = pytest.mark.skipif(not _core.has_rocksdb, reason="this build has no RocksDB tier")  # CI's build has one (test_persistent)
_GPU_CACHE = 64 * DIM * 4 * len(TABLES)  # 64 rows a table: far fewer than the keys looked up

TIER_SETUPS = [
    TierSetup("host", {}, {}),
    TierSetup("rocksdb-all-in-host", {"persistent": True}, {}, (_ROCKSDB,)),
    TierSetup("host-budget+rocksdb", {"persistent": True}, {"host_budget_bytes": _BUDGET}, (_ROCKSDB,)),
    TierSetup("gpu+host", {}, {"device": 0, "gpu_cache_bytes": _GPU_CACHE}, (pytest.mark.gpu,), True),
    TierSetup("gpu+host-budget+rocksdb", {"persistent": True}, {"device": 0, "gpu_cache_bytes": _GPU_CACHE, "host_budget_bytes": _BUDGET},
              (pytest.mark.gpu, _ROCKSDB), True),
    TierSetup("gpu-chunks+host-budget+rocksdb", {"persistent": True}, {"device": 0, "gpu_cache_bytes": _GPU_CACHE, "host_budget_bytes": _BUDGET},
              (pytest.mark.gpu, _ROCKSDB), True, (3, 2)),
]


@dataclasses.dataclass
class OpenedStore:
    store: EmbeddingStore
    setup: TierSetup
    dtype: str
    keys: np.ndarray  # int64 (TABLE_ROWS,): the keys every table holds
    reference: dict[str, dict[int, np.ndarray]]  # table -> key -> stored row as float32

    def expected(self, table: str, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 (n, DIM) rows the store must return (absent keys: zeros, or the default vector),
        and bool (n,) present."""
        ref = self.reference[table]
        present = np.array([int(q) in ref for q in queries], dtype=bool)
        default = DEFAULT_VECTOR if table == "vector" else np.zeros(DIM, np.float32)
        rows = np.stack([ref.get(int(q), default) for q in queries]) if queries.size else np.zeros((0, DIM), np.float32)
        return rows, present


@pytest.fixture(scope="module", params=[pytest.param(s, id=s.name, marks=s.marks) for s in TIER_SETUPS])
def setup(request) -> TierSetup:
    return request.param


@pytest.fixture(scope="module", params=["float32", "float16"])
def opened(request, setup, tmp_path_factory) -> OpenedStore:
    dtype = request.param
    rng = np.random.default_rng(7)
    keys = rng.choice(np.arange(-(2**40), 2**40, 104_729), size=TABLE_ROWS, replace=False).astype(np.int64)
    tables, reference = {}, {}
    for t, name in enumerate(TABLES):
        rows = rng.normal(0, 2, size=(TABLE_ROWS, DIM)).astype(np.float32) + t
        tables[name] = (keys, rows)
        stored = rows.astype(dtype).astype(np.float32)
        reference[name] = {int(k): stored[i] for i, k in enumerate(keys)}
    missing = {"zeros": "zeros", "vector": DEFAULT_VECTOR, "error": "error"}
    path = build_store(tmp_path_factory.mktemp(f"{setup.name}-{dtype}") / "store", tables, dtype=dtype, missing=missing, **setup.build)
    with pytest.MonkeyPatch.context() as patch:
        if setup.lookup_chunks is not None:
            from embedding_cache import gpu

            patch.setattr(gpu, "_CHUNKS", setup.lookup_chunks[0])
            patch.setattr(gpu, "_MIN_CHUNK_ROWS", setup.lookup_chunks[1])
        store = EmbeddingStore(path, threads=2, **setup.open)
    yield OpenedStore(store, setup, dtype, keys, reference)
    store.close()


def _queries(rng: np.random.Generator, keys: np.ndarray, n: int, absent_fraction: float) -> np.ndarray:
    """int64 (n,): keys of the tables, Zipf-skewed (hot rows repeat, as served traffic does), and
    a fraction of keys no table holds (odd multiples of 7 are never table keys)."""
    hot = keys[np.minimum(rng.zipf(1.3, n), keys.size) - 1]
    absent = rng.integers(-(2**50), 2**50, n) * 2 * 104_729 + 7
    return np.where(rng.random(n) < absent_fraction, absent, hot).astype(np.int64)


def _check_lookup(opened: OpenedStore, table: str, queries: np.ndarray) -> None:
    """Every ``lookup`` variant of one table against the reference."""
    store = opened.store
    expected, present = opened.expected(table, queries)
    if table == "error" and not present.all():
        with pytest.raises(KeyError, match="not in table 'error'"):
            store.lookup(table, queries)
        # with another policy for the call, the same keys are served
        np.testing.assert_array_equal(store.lookup(table, queries, missing=MissingPolicy("zeros")), np.where(present[:, None], expected, 0))
        return
    np.testing.assert_array_equal(store.lookup(table, queries), expected)
    out = np.full((queries.size, DIM), np.nan, np.float32)
    assert store.lookup(table, queries, out=out) is out
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(store.lookup(table, queries, out_dtype="float16"), expected.astype(np.float16))
    if store._gpu is None:  # ``found`` reports the host tiers; a store with a GPU tier is asked there
        found = np.full(queries.size, 7, np.uint8)
        np.testing.assert_array_equal(store.lookup(table, queries, found=found), expected)
        np.testing.assert_array_equal(found, present.astype(np.uint8))
    if opened.setup.device_keys:
        import cupy as cp

        np.testing.assert_array_equal(cp.asnumpy(store.lookup(table, cp.asarray(queries))), expected)


def _check_lookup_columns(opened: OpenedStore, queries: np.ndarray) -> None:
    """``lookup_columns`` over (n, 3) keys, one column per table, against the reference."""
    store = opened.store
    n = queries.shape[0]
    expected = np.empty((n, len(TABLES), DIM), np.float32)
    present = np.empty((n, len(TABLES)), bool)
    for j, table in enumerate(TABLES):
        expected[:, j], present[:, j] = opened.expected(table, queries[:, j])
    if not present[:, 2].all():
        with pytest.raises(KeyError, match="not in table 'error'"):
            store.lookup_columns(list(TABLES), queries)
        expected[~present[:, 2], 2] = 0
        policies = [None, None, MissingPolicy("zeros")]
    else:
        policies = None
    got = store.lookup_columns(list(TABLES), queries, missing=policies)
    np.testing.assert_array_equal(got, expected)
    if store._gpu is None:
        found = np.full((n, len(TABLES)), 7, np.uint8)
        out = np.full((n, len(TABLES), DIM), np.nan, np.float32)
        assert store.lookup_columns(list(TABLES), queries, out=out, missing=policies, found=found) is out
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(found, present.astype(np.uint8))
    if opened.setup.device_keys:
        import cupy as cp

        np.testing.assert_array_equal(cp.asnumpy(store.lookup_columns(list(TABLES), cp.asarray(queries), missing=policies)), expected)


def _for_sizes(check: Callable[[int, np.random.Generator], None]) -> None:
    for n in SIZES:
        check(n, np.random.default_rng(n))


def test_lookup_every_batch_size(opened):
    """0..64 rows and some large batches, with and without absent keys, every table's policy."""
    def check(n, rng):
        for absent_fraction in (0.0, 0.3):
            queries = _queries(rng, opened.keys, n, absent_fraction)
            for table in TABLES:
                _check_lookup(opened, table, queries)
    _for_sizes(check)


def test_lookup_columns_every_batch_size(opened):
    def check(n, rng):
        for absent_fraction in (0.0, 0.3):
            _check_lookup_columns(opened, _queries(rng, opened.keys, 3 * n, absent_fraction).reshape(n, 3))
    _for_sizes(check)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.one_of(st.integers(0, 3), st.integers(0, 300)), seed=st.integers(0, 2**32 - 1), absent_fraction=st.sampled_from([0.0, 0.05, 1.0]))
def test_lookups_match_the_reference(opened, n, seed, absent_fraction):
    rng = np.random.default_rng(seed)
    for table in TABLES:
        _check_lookup(opened, table, _queries(rng, opened.keys, n, absent_fraction))
    _check_lookup_columns(opened, _queries(rng, opened.keys, 3 * n, absent_fraction).reshape(n, 3))
