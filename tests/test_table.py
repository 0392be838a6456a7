"""KeyTable: exact (column, key) -> code lookups against a dict reference."""

import numpy as np
import pytest
from tritonrec import _native
from hypothesis import given, settings
from hypothesis import strategies as st

from tritonrec.transform._table import KeyTable

int64s = st.integers(-(2**63), 2**63 - 1)


@settings(max_examples=60, deadline=None)
@given(
    entries=st.dictionaries(st.tuples(st.integers(0, 5), int64s), st.integers(0, 2**31 - 1), max_size=400),
    probes=st.lists(st.tuples(st.integers(0, 6), int64s), max_size=200),
)
def test_lookup_matches_dict(entries, probes):
    cols = np.array([c for c, _ in entries], dtype=np.int64)
    keys = np.array([k for _, k in entries], dtype=np.int64)
    codes = np.array(list(entries.values()), dtype=np.int64)
    table = KeyTable.build(cols, keys, codes)
    queries = list(entries) + probes
    q_cols = np.array([c for c, _ in queries], dtype=np.int64) << np.int64(32)
    q_keys = np.array([k for _, k in queries], dtype=np.int64)
    expected = np.array([entries.get(q, -1) for q in queries], dtype=np.int64)
    np.testing.assert_array_equal(table.lookup(q_cols, q_keys), expected)


def test_large_table_with_dense_clusters():
    rng = np.random.default_rng(0)
    keys = np.arange(200_000, dtype=np.int64)  # consecutive keys stress linear probing
    cols = rng.integers(0, 26, size=keys.size)
    codes = rng.integers(3, 2**31 - 1, size=keys.size)
    table = KeyTable.build(cols, keys, codes)
    assert table.capacity >= 4 * keys.size
    got = table.lookup(cols << 32, keys)
    np.testing.assert_array_equal(got, codes)
    # the same keys under another column are absent
    np.testing.assert_array_equal(table.lookup((cols + 1) << 32, keys), -1)


def test_duplicate_pair_is_refused():
    with pytest.raises(ValueError, match="duplicate key 7 in column 1"):
        KeyTable.build(np.array([1, 0, 1]), np.array([7, 7, 7]), np.array([3, 4, 5]))


def test_out_of_range_codes_are_refused():
    with pytest.raises(ValueError, match="codes"):
        KeyTable.build(np.array([0]), np.array([1]), np.array([2**31]))


def test_empty_table_finds_nothing():
    table = KeyTable.build(np.array([], dtype=np.int64), np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    np.testing.assert_array_equal(table.lookup(np.zeros(3, np.int64), np.arange(3, dtype=np.int64)), -1)


def test_bad_slot_shapes_are_refused():
    with pytest.raises(ValueError, match="power of two"):
        KeyTable(np.zeros((3, 2), dtype=np.int64), 0)


@settings(max_examples=40, deadline=None)
@given(
    entries=st.dictionaries(st.tuples(st.integers(0, 4), int64s), st.integers(0, 2**31 - 1), max_size=300),
    extra=st.lists(int64s, min_size=5, max_size=100),
)
def test_native_and_numpy_blocks_agree(entries, extra):
    """The compiled probe loop and the vectorised numpy probes give the same codes."""
    cols = np.array([c for c, _ in entries], dtype=np.int64)
    keys = np.array([k for _, k in entries], dtype=np.int64)
    table = KeyTable.build(cols, keys, np.array(list(entries.values()), dtype=np.int64))
    assert table.native
    present = [k for _, k in entries]
    block = np.resize(np.array(present + extra, dtype=np.int64), (max(1, (len(present) + len(extra)) // 5), 5))
    native = table.lookup_block(block)
    expected = np.array([[entries.get((j, int(k)), -1) for j, k in enumerate(row)] for row in block], dtype=np.int64)
    np.testing.assert_array_equal(native, expected)
    table.native = False
    np.testing.assert_array_equal(table.lookup_block(block), expected)


def test_native_lookup_checks_its_arguments():
    table = KeyTable.build(np.array([0]), np.array([5]), np.array([9]))
    keys = np.array([[5]], dtype=np.int64)
    out = np.empty((1, 1), dtype=np.int64)
    _native.key_table_lookup(table.slots, table.max_probe, keys, out)
    assert out[0, 0] == 9
    with pytest.raises(TypeError, match="keys: expected a C-contiguous int64 array of 2 dimensions"):
        _native.key_table_lookup(table.slots, table.max_probe, keys.astype(np.int32), out)
    with pytest.raises(TypeError, match="out: expected a C-contiguous int64 array"):
        _native.key_table_lookup(table.slots, table.max_probe, keys, np.empty((2, 2), dtype=np.int64)[:, ::2])
    with pytest.raises(ValueError, match="out: expected the shape of keys"):
        _native.key_table_lookup(table.slots, table.max_probe, keys, np.empty((2, 1), dtype=np.int64))
    with pytest.raises(ValueError, match="slots: expected shape"):
        _native.key_table_lookup(np.zeros((3, 2), dtype=np.int64), 0, keys, out)
    with pytest.raises(ValueError, match="max_probe"):
        _native.key_table_lookup(table.slots, table.capacity, keys, out)
    readonly = np.empty((1, 1), dtype=np.int64)
    readonly.setflags(write=False)
    with pytest.raises(ValueError, match="out: expected a writeable array"):
        _native.key_table_lookup(table.slots, table.max_probe, keys, readonly)
