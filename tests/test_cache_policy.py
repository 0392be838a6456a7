"""The GPU cache's replacement decisions, compiled for the host (policy.hpp through the simulator)
and driven with access traces on the CPU."""

from __future__ import annotations

import numpy as np
import pytest

from embedding_cache import _core


def test_lru_evicts_the_row_used_longest_ago():
    keys = np.arange(33, dtype=np.int64)
    # a 32-row cache is one set: 32 rows fill it; key 32 then evicts the least recently used: key 0
    trace = np.concatenate([keys[:32], keys[1:32], keys[32:33], keys[:1]])
    hits = _core.simulate_set_cache(trace, 32, 32, "lru")
    assert hits[:32].sum() == 0 and hits[32:63].all() and hits[63] == 0 and hits[64] == 0


def test_lfu_keeps_the_row_used_most_often():
    keys = np.arange(40, dtype=np.int64)  # one set, as above
    trace = np.concatenate([np.repeat(keys[:1], 5), keys[1:40], keys[:1]])
    lfu = _core.simulate_set_cache(trace, 32, 32, "lfu")
    lru = _core.simulate_set_cache(trace, 32, 32, "lru")
    assert lfu[-1] == 1  # key 0 (5 uses) outlived 39 keys used once
    assert lru[-1] == 0  # LRU let it go


def test_a_hit_needs_the_key_not_its_set():
    trace = np.array([5, 5, 6, 5, 6], dtype=np.int64)
    assert _core.simulate_set_cache(trace, 64, 32, "lru").tolist() == [0, 1, 0, 1, 1]


@pytest.mark.parametrize("alpha", [0.9, 1.2])
def test_hit_rates_under_zipf_against_the_static_optimum(alpha):
    rng = np.random.default_rng(3)
    n_keys, capacity = 100_000, 2_000
    weights = np.arange(1, n_keys + 1, dtype=np.float64) ** -alpha
    weights /= weights.sum()
    trace = rng.permutation(n_keys)[rng.choice(n_keys, size=400_000, p=weights)].astype(np.int64)
    optimum = np.sort(weights)[::-1][:capacity].sum()
    rates = {e: _core.simulate_set_cache(trace, capacity, 16, e, 1024)[200_000:].mean() for e in ("lru", "lfu")}
    admitted = _core.simulate_set_cache(trace, capacity, 16, "lru", 1024, True)[200_000:].mean()
    assert 0.5 * optimum < rates["lru"] <= optimum + 0.01
    assert rates["lfu"] >= rates["lru"] - 0.005  # frequency beats recency under a stationary power law
    assert rates["lfu"] <= optimum + 0.01
    assert rates["lru"] < admitted <= optimum + 0.01  # the admission filter keeps one-off keys out


def test_admission_refuses_a_key_seen_less_often_than_the_victim():
    # one set of 16 (LFU): 16 keys used 10 times each fill it; a new key missing once is refused
    # (its sketch estimate, at most 2 with collisions, is below every held key's 10 uses), so all
    # held keys still hit; missing again and again, its estimate passes the victim's and it gets in
    held = np.repeat(np.arange(16, dtype=np.int64), 10)
    trace = np.concatenate([held, [100], np.arange(16), [100] * 20])
    hits = _core.simulate_set_cache(trace, 16, 16, "lfu", 1, True)
    assert hits[len(held)] == 0  # key 100's first miss: refused
    assert hits[len(held) + 1 : len(held) + 17].all()  # all 16 held keys still there
    assert hits[-1] == 1  # admitted once its frequency passed the victim's


def test_bad_arguments():
    trace = np.arange(10, dtype=np.int64)
    with pytest.raises(ValueError, match="eviction fifo: expected 'lru' or 'lfu'"):
        _core.simulate_set_cache(trace, 64, 32, "fifo")
    with pytest.raises(ValueError, match="capacity_rows: expected >= 1"):
        _core.simulate_set_cache(trace, 0, 32, "lru")
    with pytest.raises(ValueError, match="batch: expected >= 1"):
        _core.simulate_set_cache(trace, 64, 32, "lru", 0)
