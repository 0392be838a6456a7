"""An exact (column, key) -> code hash table for batched lookups in numpy or cupy.

Open addressing with linear probing at load factor <= 0.5. Built once at compile time; looked up
with a handful of vectorised array operations per probe round, so the cost per call barely depends
on the number of categorical columns, and all columns of a group are looked up in one call.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_EMPTY = np.int32(-1)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)


def _slot_hash(columns: Any, keys: Any, mask: np.uint64) -> Any:
    """Home slot of each (column, key): splitmix64 of ``key ^ (column * golden)``, masked."""
    h = keys.view(np.uint64) ^ (columns.astype(np.uint64) * _GOLDEN)
    h ^= h >> np.uint64(30)
    h *= _MIX_1
    h ^= h >> np.uint64(27)
    h *= _MIX_2
    h ^= h >> np.uint64(31)
    return (h & mask).astype(np.int64)


class KeyTable:
    """Maps (column id, int64 key) pairs to int64 codes; absent pairs map to -1.

    Arrays (host numpy unless moved with :meth:`to`): ``slot_keys`` int64 (capacity,),
    ``slot_columns`` int32 (capacity,) with -1 for an empty slot, ``slot_codes`` int64 (capacity,).
    ``max_probe`` is the longest displacement of any stored pair, which bounds every search.
    """

    def __init__(
        self, slot_keys: Any, slot_columns: Any, slot_codes: Any, max_probe: int, xp: Any = np
    ) -> None:
        capacity = int(slot_keys.shape[0])
        if capacity == 0 or capacity & (capacity - 1):
            raise ValueError(f"hash table capacity must be a power of two, got {capacity}")
        if not (slot_columns.shape[0] == slot_codes.shape[0] == capacity):
            raise ValueError("hash table arrays have different lengths")
        self.slot_keys = slot_keys
        self.slot_columns = slot_columns
        self.slot_codes = slot_codes
        self.max_probe = int(max_probe)
        self._mask = np.uint64(capacity - 1)
        self.xp = xp

    @classmethod
    def build(cls, columns: np.ndarray, keys: np.ndarray, codes: np.ndarray) -> KeyTable:
        """Builds the table on the host.

        Args:
            columns: int32 (n,) column id of each entry (>= 0).
            keys: int64 (n,) key of each entry; (column, key) pairs must be unique.
            codes: int64 (n,) code of each entry.
        """
        columns = np.ascontiguousarray(columns, dtype=np.int32)
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        n = keys.shape[0]
        capacity = 16
        while capacity < 2 * n:
            capacity *= 2
        mask = np.uint64(capacity - 1)
        slot_keys = np.zeros(capacity, dtype=np.int64)
        slot_columns = np.full(capacity, _EMPTY, dtype=np.int32)
        slot_codes = np.zeros(capacity, dtype=np.int64)

        pending = np.arange(n, dtype=np.int64)
        position = _slot_hash(columns, keys, mask)
        probe = 0
        max_probe = 0
        while pending.size:
            free = slot_columns[position] == _EMPTY
            candidates = pending[free]
            if candidates.size:
                slots, first = np.unique(position[free], return_index=True)
                winners = candidates[first]
                duplicate = (slot_columns[slots] == columns[winners]) & (slot_keys[slots] == keys[winners])
                if duplicate.any():  # pragma: no cover - unreachable: occupied slots are not free
                    raise ValueError("duplicate (column, key) pair")
                slot_columns[slots] = columns[winners]
                slot_keys[slots] = keys[winners]
                slot_codes[slots] = codes[winners]
                max_probe = probe
                placed = np.zeros(n, dtype=bool)
                placed[winners] = True
                keep = ~placed[pending]
                pending = pending[keep]
                position = position[keep]
            # Whatever is still pending now sits on an occupied slot: check it is no duplicate.
            if pending.size:
                same = (slot_columns[position] == columns[pending]) & (slot_keys[position] == keys[pending])
                if same.any():
                    i = int(pending[np.argmax(same)])
                    raise ValueError(f"duplicate key {int(keys[i])} in column {int(columns[i])}")
            position = (position + 1) & np.int64(capacity - 1)
            probe += 1
        return cls(slot_keys, slot_columns, slot_codes, max_probe)

    @property
    def capacity(self) -> int:
        """Number of slots."""
        return int(self.slot_keys.shape[0])

    def to(self, xp: Any) -> KeyTable:
        """A copy of this table whose arrays live in the memory of array module ``xp``."""
        return KeyTable(
            xp.asarray(self.slot_keys),
            xp.asarray(self.slot_columns),
            xp.asarray(self.slot_codes),
            self.max_probe,
            xp,
        )

    def lookup(self, columns: Any, keys: Any) -> Any:
        """Codes of (column, key) pairs; -1 where the pair is absent.

        Args:
            columns: int32 (m,) column ids, in the table's memory space.
            keys: int64 (m,) keys.

        Returns:
            int64 (m,) codes.
        """
        xp = self.xp
        position = _slot_hash(columns, keys, self._mask)
        codes = xp.full(keys.shape[0], -1, dtype=np.int64)
        active = None  # None: every element is still searching (saves an arange on the fast path)
        for _ in range(self.max_probe + 1):
            slot_columns = self.slot_columns[position]
            hit = (slot_columns == columns) & (self.slot_keys[position] == keys)
            if active is None:
                codes = xp.where(hit, self.slot_codes[position], codes)
            else:
                codes[active[hit]] = self.slot_codes[position[hit]]
            searching = ~hit & (slot_columns != _EMPTY)
            if not bool(searching.any()):
                break
            active = xp.nonzero(searching)[0] if active is None else active[searching]
            position = (position[searching] + 1) & np.int64(self._mask)
            columns = columns[searching]
            keys = keys[searching]
        return codes
