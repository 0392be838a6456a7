"""The GPU tier's miss staging on the host (no GPU needed): how missed keys are split into
pieces, read, ordered for the insert and mapped back to their positions."""

from __future__ import annotations

import numpy as np
import pytest

from embedding_cache import gpu


@pytest.mark.parametrize("counts", [[0], [1], [5, 0, 3], [20_000, 1, 0, 9_000], [100_000]])
def test_pieces_cover_every_column_in_order(counts, monkeypatch):
    monkeypatch.setattr(gpu, "_PIECE_KEYS", 4_000)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    pieces = gpu._pieces(offsets)
    covered = [(j, p) for j, lo, hi in pieces for p in range(lo, hi)]
    assert covered == [(j, p) for j in range(len(counts)) for p in range(int(offsets[j]), int(offsets[j + 1]))]
    assert all(hi > lo for _, lo, hi in pieces)
    size = max(4_000, -(-int(offsets[-1]) // gpu._PIECES))
    assert all(hi - lo <= size for _, lo, hi in pieces)
    if offsets[-1] >= 4 * 4_000:
        assert len(pieces) >= gpu._PIECES  # large misses go in several pieces


@pytest.mark.parametrize("m", [1, 2, 9, 1_000])
@pytest.mark.parametrize("absent_share", [0.0, 0.4, 1.0])
def test_pieces_put_present_keys_first_and_map_every_position_to_its_row(m, absent_share):
    """Two pieces of a staging block, the first all present (left in key order: row i is missed key
    i, nothing to send), the second with ``absent_share`` of its keys existing nowhere (present rows
    moved first); the map built for the block sends every missed position to its own key's row."""
    rng = np.random.default_rng(m)
    dim = 3
    keys = rng.permutation(10_000)[: 2 * m].astype(np.int64)
    absent = np.zeros(2 * m, bool)
    absent[m:] = rng.random(m) < absent_share
    nowhere = set(keys[absent].tolist())

    def read_host(column, k, found, out):
        assert column == 2
        found[:] = [key not in nowhere for key in k.tolist()]
        out[:] = np.where(found[:, None] == 0, -1.0, k[:, None] + np.arange(dim) / 10)

    rows = np.zeros((2 * m, dim), np.float32)
    pieces = [(2, 0, m), (2, m, 2 * m)]
    results = [gpu._read_piece(read_host, j, keys[lo:hi], rows[lo:hi]) for j, lo, hi in pieces]
    assert results[0][0] == m and results[0][1] is None
    assert results[1][0] == m - int(absent.sum()) and (results[1][1] is None) == (not absent.any())
    np.testing.assert_array_equal(rows[:m, 0], keys[:m].astype(np.float32))  # in key order
    row_of, ordered = np.zeros(2 * m, np.int32), np.zeros(2 * m, np.int64)
    gpu._reordered(pieces, [order for _, order in results], keys, row_of, ordered)
    for i in range(2 * m):  # the row written for missed position i
        expected = np.full(dim, -1.0, np.float32) if absent[i] else (keys[i] + np.arange(dim) / 10).astype(np.float32)
        np.testing.assert_array_equal(rows[row_of[i]], expected)
    for (_, lo, hi), (present, _) in zip(pieces, results):  # per piece: the present keys first, in their order
        np.testing.assert_array_equal(ordered[lo:lo + present], keys[lo:hi][~absent[lo:hi]])
        np.testing.assert_array_equal(ordered[lo + present:hi], keys[lo:hi][absent[lo:hi]])
        np.testing.assert_array_equal(rows[lo:lo + present, 0], keys[lo:hi][~absent[lo:hi]].astype(np.float32))


def test_the_staging_pool_gives_concurrent_lookups_their_own_buffers_and_waits_when_all_are_taken():
    import threading

    pool = gpu._StagingPool(None, 2)
    with pool.take() as first:
        with pool.take() as second:
            assert first is pool.stagings[0] and second is pool.stagings[1]
            taken, held = [], pool.take()
            third = threading.Thread(target=lambda: taken.append(held.__enter__()))
            third.start()
            third.join(0.2)
            assert third.is_alive() and not taken  # none free: waits (for the first)
        third.join(0.2)
        assert not taken  # the second's release does not wake it: it waits for the first
    third.join(5)
    assert taken == [pool.stagings[0]]
    held.__exit__(None, None, None)
    with pool.take() as again:  # a lone caller always takes the first (the second's pinned memory is never taken)
        assert again is pool.stagings[0]
    with pytest.raises(ValueError, match="staging count 0: expected >= 1"):
        gpu._StagingPool(None, 0)
