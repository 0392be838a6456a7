"""The GPU tier lookup's host-side bookkeeping (no GPU needed): how a call's key rows are cut into
chunks, and how the missed keys that exist are packed for the insert when some exist nowhere."""

from __future__ import annotations

import numpy as np
import pytest

from embedding_cache import _core


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 7, 8, 9, 100, 65_536, 1_048_576, 1_048_577])
@pytest.mark.parametrize(("chunks", "min_rows"), [(1, 1), (3, 2), (4, 65_536), (16, 7)])
def test_chunks_cover_every_row_once_in_order(n, chunks, min_rows):
    ranges = _core.lookup_chunks(n, chunks, min_rows)
    covered = [i for begin, end in ranges for i in range(begin, end)] if n < 10_000 else None
    if covered is not None:
        assert covered == list(range(n))
    assert (ranges[0][0], ranges[-1][1]) == (0, n) if n else ranges == []
    assert all(b == a_end for (_, a_end), (b, _) in zip(ranges, ranges[1:]))  # contiguous
    assert len(ranges) <= chunks
    size = max(min_rows, -(-n // chunks))
    assert all(end - begin == size for begin, end in ranges[:-1])  # all but the last: one size
    assert all(0 < end - begin <= size for begin, end in ranges)


def test_large_calls_are_cut_into_as_many_chunks_as_asked_and_small_ones_into_one():
    assert len(_core.lookup_chunks(1 << 20, 4, 65_536)) == 4
    assert _core.lookup_chunks(4_096, 4, 65_536) == [(0, 4_096)]
    assert _core.lookup_chunks(1, 4, 65_536) == [(0, 1)]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 7, 8, 9, 10, 11, 100, 65_536, 1_048_576, 1_048_577])
@pytest.mark.parametrize(("chunks", "min_rows"), [(1, 1), (2, 3), (3, 1), (4, 2), (4, 65_536), (16, 7)])
def test_tapered_chunks_cover_every_row_once_with_half_sized_ends(n, chunks, min_rows):
    ranges = _core.lookup_chunks(n, chunks, min_rows, taper=True)
    if chunks < 3:  # nothing to taper: the even cut
        assert ranges == _core.lookup_chunks(n, chunks, min_rows)
        return
    covered = [i for begin, end in ranges for i in range(begin, end)] if n < 10_000 else None
    if covered is not None:
        assert covered == list(range(n))
    assert (ranges[0][0], ranges[-1][1]) == (0, n) if n else ranges == []
    assert all(b == a_end for (_, a_end), (b, _) in zip(ranges, ranges[1:]))
    assert len(ranges) <= chunks
    unit = max(min_rows, -(-n // (2 * chunks - 2)))
    sizes = [end - begin for begin, end in ranges]
    if sizes:
        assert sizes[0] == min(n, unit)
        assert all(size == 2 * unit for size in sizes[1:-1])
        assert 0 < sizes[-1] <= (unit if len(sizes) == chunks else 2 * unit)


def test_a_tapered_million_rows_in_four_chunks_are_a_sixth_a_third_a_third_a_sixth():
    assert _core.lookup_chunks(6_000_000, 4, 1, taper=True) == [(0, 1_000_000), (1_000_000, 3_000_000), (3_000_000, 5_000_000), (5_000_000, 6_000_000)]


@pytest.mark.parametrize(("n", "chunks", "min_rows", "message"),
                         [(-1, 4, 1, "n: expected >= 0"), (5, 0, 1, "chunks: expected >= 1"), (5, 4, 0, "min_rows: expected >= 1")])
def test_bad_chunk_arguments_are_refused_by_name(n, chunks, min_rows, message):
    with pytest.raises(ValueError, match=message):
        _core.lookup_chunks(n, chunks, min_rows)


@pytest.mark.parametrize("m", [0, 1, 2, 9, 1_000])
@pytest.mark.parametrize("found_share", [0.0, 0.4, 1.0])
def test_compact_found_keeps_the_keys_that_exist_with_their_rows_in_order(m, found_share):
    rng = np.random.default_rng(m)
    keys = rng.permutation(10 * m + 1)[:m].astype(np.int64)
    rows = rng.normal(size=(m, 3)).astype(np.float32)
    found = (rng.random(m) < found_share).astype(np.uint8)
    got_keys, got_rows = _core.compact_found(keys, rows, found)
    np.testing.assert_array_equal(got_keys, keys[found == 1])
    np.testing.assert_array_equal(got_rows, rows[found == 1])
    assert got_rows.shape == (int(found.sum()), 3)


def test_compact_found_refuses_shapes_that_do_not_match():
    with pytest.raises(ValueError, match=r"keys \(m,\), rows \(m, dim\), found \(m,\)"):
        _core.compact_found(np.zeros(3, np.int64), np.zeros((2, 4), np.float32), np.zeros(3, np.uint8))
