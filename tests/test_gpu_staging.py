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
def test_a_piece_puts_present_keys_first_and_maps_every_position_to_its_row(m, absent_share):
    rng = np.random.default_rng(m)
    dim, lo = 3, 17
    keys = rng.integers(0, 1_000, m).astype(np.int64)
    absent = rng.random(m) < absent_share

    def read_host(column, k, found, out):
        assert column == 2
        found[:] = ~absent
        out[:] = np.where(absent[:, None], -1.0, k[:, None] + np.arange(dim) / 10)

    row_of, ordered, rows = np.zeros(m, np.int32), np.zeros(m, np.int64), np.zeros((m, dim), np.float32)
    present = gpu._read_piece(read_host, 2, lo, keys, row_of, ordered, rows)
    assert present == int((~absent).sum())
    np.testing.assert_array_equal(ordered[:present], keys[~absent])  # present first, in their order
    np.testing.assert_array_equal(ordered[present:], keys[absent])
    # the row written for missed position i (row_of is absolute: lo + the piece's row)
    for i in range(m):
        expected = -1.0 if absent[i] else keys[i] + np.arange(dim) / 10
        np.testing.assert_array_equal(rows[row_of[i] - lo], np.asarray(expected, np.float32) * np.ones(dim, np.float32))
    np.testing.assert_array_equal(rows[:present, 0], (keys[~absent]).astype(np.float32))
