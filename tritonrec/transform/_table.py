"""An exact (column, key) -> code hash table for batched lookups in numpy or cupy.

Open addressing with linear probing at load factor <= 0.25. Each slot is 16 bytes, one row of an
int64 (capacity, 2) array: ``[key, column << 32 | code]``, so a probe is one gather of one row.
Built once at compile time; looked up by a compiled loop on the host (``tritonrec._native``),
by one elementwise kernel on cupy, or (the reference) with a handful of vectorised numpy
operations per probe round; every categorical column of a group is looked up in one call.
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:  # the compiled probe loop; the numpy path below gives the same codes
    from tritonrec._native import key_table_lookup as _native_lookup
except ImportError:  # pragma: no cover - a checkout without the built extension
    _native_lookup = None

EMPTY = np.int64(-1)
"""Second word of an empty slot (column -1, code 0xFFFFFFFF)."""
MAX_CODE = 2**31 - 1
MAX_COLUMNS = 2**31 - 1
_LOW = np.int64(0xFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
HASH_NAME = "fibonacci64(key^(column<<32))"
"""Names the slot hash: a saved table is only valid under the hash it was built with."""


def _slot_hash(tags: Any, keys: Any, shift: int) -> Any:
    """Home slot of each (column, key): Fibonacci hashing of ``key ^ (column << 32)``; int64.

    ``tags`` holds ``column << 32``. Two pairs may share a hash input; that only makes them
    collide in the table, where both key and column are compared exactly.
    """
    h = (keys ^ tags).view(np.uint64) * _GOLDEN
    return (h >> np.uint64(shift)).view(np.int64)


_PROBE_SOURCE = """
unsigned long long h = ((unsigned long long)(key ^ tag)) * 0x9E3779B97F4A7C15ULL;
long long home = (long long)(h >> shift);
code = -1;
for (int p = 0; p <= max_probe; ++p) {
    long long s = (home + p) & mask;
    long long stored = slots[2 * s];
    long long word = slots[2 * s + 1];
    if (word == -1) break;  /* an empty slot ends the run: no deletions */
    if (stored == key && (word & ~0xFFFFFFFFLL) == tag) { code = word & 0xFFFFFFFFLL; break; }
}
"""
_probe_kernel = None


def _device_probe(xp: Any) -> Any:
    """The probe loop as one cupy elementwise kernel (compiled on first use): per (tag, key) the
    same home slot and linear probe as the host, without a host round trip per probe round."""
    global _probe_kernel
    if _probe_kernel is None:
        _probe_kernel = xp.ElementwiseKernel(
            "int64 key, int64 tag, raw int64 slots, int64 mask, int32 shift, int32 max_probe", "int64 code",
            _PROBE_SOURCE, "tritonrec_key_table_probe",
        )
    return _probe_kernel


class KeyTable:
    """Maps (column id, int64 key) pairs to int64 codes; absent pairs map to -1.

    ``slots`` is an int64 (capacity, 2) array (host numpy unless moved with :meth:`to`);
    ``max_probe`` is the longest displacement of any stored pair, which bounds every search.
    """

    def __init__(self, slots: Any, max_probe: int, xp: Any = np, native: bool | None = None) -> None:
        capacity = int(slots.shape[0])
        if slots.ndim != 2 or slots.shape[1] != 2 or capacity == 0 or capacity & (capacity - 1):
            raise ValueError(f"hash table slots must be (power of two, 2), got {tuple(slots.shape)}")
        self.slots = slots
        self.max_probe = int(max_probe)
        self._mask = capacity - 1
        self._shift = 64 - (capacity.bit_length() - 1)
        self.xp = xp
        self.native = (xp is np and _native_lookup is not None) if native is None else bool(native)
        """Host lookups run the compiled probe loop of ``tritonrec._native`` (else numpy)."""
        if self.native and (xp is not np or _native_lookup is None):
            raise ValueError("the native lookup needs host numpy arrays and tritonrec._native")
        if self.native:
            self.slots = np.ascontiguousarray(slots, dtype=np.int64)

    @classmethod
    def build(cls, columns: np.ndarray, keys: np.ndarray, codes: np.ndarray, load_factor: float = 0.25) -> KeyTable:
        """Builds the table on the host.

        Args:
            columns: int (n,) column id of each entry, 0 <= id < 2**31.
            keys: int64 (n,) key of each entry; (column, key) pairs must be unique.
            codes: int (n,) code of each entry, 0 <= code < 2**31.
            load_factor: most entries per slot.

        Raises:
            ValueError: a duplicate pair, or a column id or code out of range.
        """
        columns = np.ascontiguousarray(columns, dtype=np.int64)
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        n = keys.shape[0]
        if n and (columns.min() < 0 or columns.max() > MAX_COLUMNS):
            raise ValueError("column ids must be in [0, 2**31)")
        if n and (codes.min() < 0 or codes.max() > MAX_CODE):
            raise ValueError("codes must be in [0, 2**31)")
        capacity = 16
        while capacity * load_factor < n:
            capacity *= 2
        slots = np.empty((capacity, 2), dtype=np.int64)
        slots[:, 0] = 0
        slots[:, 1] = EMPTY
        tags = (columns << np.int64(32)) | codes

        pending = np.arange(n, dtype=np.int64)
        position = _slot_hash(columns << np.int64(32), keys, 64 - (capacity.bit_length() - 1))
        probe = 0
        max_probe = 0
        while pending.size:
            free = np.take(slots, position, axis=0)[:, 1] == EMPTY
            if free.any():
                slot_numbers, first = np.unique(position[free], return_index=True)
                winners = pending[free][first]
                slots[slot_numbers, 0] = keys[winners]
                slots[slot_numbers, 1] = tags[winners]
                max_probe = probe
                placed = np.zeros(n, dtype=bool)
                placed[winners] = True
                keep = ~placed[pending]
                pending = pending[keep]
                position = position[keep]
            if pending.size:
                # Duplicates share a home slot and move in lockstep: one finds the other here.
                occupant = np.take(slots, position, axis=0)
                same = (occupant[:, 0] == keys[pending]) & ((occupant[:, 1] >> np.int64(32)) == columns[pending])
                if same.any():
                    i = int(pending[np.argmax(same)])
                    raise ValueError(f"duplicate key {int(keys[i])} in column {int(columns[i])}")
            position = (position + 1) & np.int64(capacity - 1)
            probe += 1
        return cls(slots, max_probe)

    @property
    def capacity(self) -> int:
        """Number of slots."""
        return int(self.slots.shape[0])

    def to(self, xp: Any) -> KeyTable:
        """A copy of this table whose slots live in the memory of array module ``xp``."""
        return KeyTable(xp.asarray(self.slots), self.max_probe, xp, native=None if xp is np else False)

    def lookup(self, columns: Any, keys: Any) -> Any:
        """Codes of (column, key) pairs; -1 where the pair is absent.

        Args:
            columns: int64 (m,) column ids shifted left by 32 bits (``column << 32``), in the
                table's memory space (see :meth:`column_tags`).
            keys: int64 (m,) keys.

        Returns:
            int64 (m,) codes.
        """
        xp = self.xp
        if getattr(xp, "__name__", "") == "cupy":
            return _device_probe(xp)(keys, columns, self.slots.reshape(-1), np.int64(self._mask), np.int32(self._shift),
                                     np.int32(self.max_probe))
        position = _slot_hash(columns, keys, self._shift)
        rows = xp.take(self.slots, position, axis=0)
        tag = rows[:, 1]
        hit = (rows[:, 0] == keys) & ((tag & ~_LOW) == columns)
        codes = xp.where(hit, tag & _LOW, np.int64(-1))
        searching = ~hit & (tag != EMPTY)
        if self.max_probe == 0 or not bool(searching.any()):
            return codes
        # The rest: a present key sits within max_probe slots after its home (linear probing, no
        # deletions), so one gather of that window per key settles every remaining search.
        active = xp.nonzero(searching)[0]
        offsets = xp.arange(1, self.max_probe + 1, dtype=np.int64)
        window = (position[active, None] + offsets) & np.int64(self._mask)  # (m, max_probe)
        rows = xp.take(self.slots, window.reshape(-1), axis=0).reshape(active.shape[0], self.max_probe, 2)
        hit = (rows[:, :, 0] == keys[active, None]) & ((rows[:, :, 1] & ~_LOW) == columns[active, None])
        found = xp.nonzero(hit.any(axis=1))[0]
        if found.shape[0]:
            column = hit[found].argmax(axis=1)
            codes[active[found]] = rows[found, column, 1] & _LOW
        return codes

    def lookup_block(self, keys: Any) -> Any:
        """Codes of an (n, k) block of keys, key (i, j) looked up in column j; -1 where absent.

        Args:
            keys: int64 (n, k) keys in the table's memory space.

        Returns:
            int64 (n, k) codes.
        """
        n, k = keys.shape
        if self.native:
            out = np.empty((n, k), dtype=np.int64)
            _native_lookup(self.slots, self.max_probe, np.ascontiguousarray(keys, dtype=np.int64), out)
            return out
        return self.lookup(self.column_tags(k, n, self.xp), self.xp.ascontiguousarray(keys).reshape(-1)).reshape(n, k)

    @staticmethod
    def column_tags(k: int, n: int, xp: Any = np) -> Any:
        """int64 (n * k,) ``column << 32`` for n rows of k columns, row-major."""
        return xp.tile(xp.arange(k, dtype=np.int64) << np.int64(32), n)
