"""The options of a store's tiers: validated once, carried as one object from export to the store.

``tritonrec export`` (or :func:`tritonrec.export.export_ensemble`) takes a :class:`HostOptions` and
a :class:`GpuCacheOptions`, writes them as the lookup model's ``config.pbtxt`` parameters
(:meth:`to_parameters`), the backend reads them back (:meth:`from_parameters`) and hands the same
objects to :class:`embedding_cache.EmbeddingStore`, which gives them to its tiers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

GPU_DTYPES = ("float32", "float16", "bfloat16")
EVICTIONS = ("lru", "lfu")


class OptionsError(ValueError):
    """An option or ``config.pbtxt`` parameter with a bad value; the message names it."""


def int_or_none(text: str, key: str) -> int | None:
    """The integer of a ``config.pbtxt`` string parameter ``key``; None for ``""``; OptionsError
    naming the parameter for anything else that is not an integer."""
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise OptionsError(f"parameter {key!r} is {text!r}: expected an integer") from None


def _int_or_none(parameters: Mapping[str, str], key: str) -> int | None:
    return int_or_none(parameters.get(key, ""), key)


def _flag(parameters: Mapping[str, str], key: str) -> bool:
    return parameters.get(key, "").lower() == "true"


@dataclasses.dataclass(frozen=True)
class HostOptions:
    """The host tier of a store.

    Attributes:
        budget_bytes: host memory (bytes) for a store with a RocksDB tier; the host tier then keeps
            the most used rows and reads the rest from RocksDB. None: every row in host memory.
        threads: threads per lookup (None: the machine's cores).
        block_cache_bytes: RocksDB's block cache, in bytes (host memory).
    """

    budget_bytes: int | None = None
    threads: int | None = None
    block_cache_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise OptionsError(f"threads {self.threads}: expected >= 1")
        if self.budget_bytes is not None and self.budget_bytes < 1:
            raise OptionsError(f"host_budget_bytes {self.budget_bytes}: expected >= 1")
        if self.block_cache_bytes < 0:
            raise OptionsError(f"block_cache_bytes {self.block_cache_bytes}: expected >= 0")

    def to_parameters(self) -> dict[str, str]:
        """The lookup model's ``config.pbtxt`` parameters (``""``: the default)."""
        return {"host_budget_bytes": _text(self.budget_bytes), "threads": _text(self.threads)}

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> HostOptions:
        """From the string parameters written by :meth:`to_parameters` (absent or empty: default)."""
        return cls(_int_or_none(parameters, "host_budget_bytes"), _int_or_none(parameters, "threads"))


@dataclasses.dataclass(frozen=True)
class GpuCacheOptions:
    """The GPU tier of a store: a cache of hot rows per table in device memory.

    Attributes:
        cache_bytes: device memory (bytes) for all tables' caches, shared by row count; >= 1.
        dtype: row storage, ``"float32"``, ``"float16"`` or ``"bfloat16"`` (a hit returns the stored
            row, rounded to nearest even from the host's float32 row).
        eviction: ``"lru"`` or ``"lfu"``.
        admission: TinyLFU admission: a missed row replaces a full set's victim only if a frequency
            sketch of the misses saw its key more often than the victim was used.
        async_insert: insert missed rows on a stream of the tier's own, off the lookup's (same outputs).
    """

    cache_bytes: int
    dtype: str = "float32"
    eviction: str = "lru"
    admission: bool = False
    async_insert: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in GPU_DTYPES:
            raise OptionsError(f"gpu_cache_dtype {self.dtype!r}: expected one of {GPU_DTYPES}")
        if self.eviction not in EVICTIONS:
            raise OptionsError(f"gpu_eviction {self.eviction!r}: expected one of {EVICTIONS}")
        if isinstance(self.cache_bytes, bool) or not isinstance(self.cache_bytes, int) or self.cache_bytes < 1:
            raise OptionsError(f"gpu_cache_bytes {self.cache_bytes!r}: expected an integer >= 1")

    def to_parameters(self) -> dict[str, str]:
        """The lookup model's ``config.pbtxt`` parameters."""
        return {"gpu_cache_bytes": str(self.cache_bytes), "gpu_eviction": self.eviction, "gpu_admission": _bool(self.admission),
                "gpu_cache_dtype": self.dtype, "gpu_async_insert": _bool(self.async_insert)}

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> GpuCacheOptions | None:
        """From the string parameters written by :meth:`to_parameters`; None without ``gpu_cache_bytes``."""
        cache_bytes = _int_or_none(parameters, "gpu_cache_bytes")
        if cache_bytes is None:
            return None
        return cls(cache_bytes, parameters.get("gpu_cache_dtype") or "float32", parameters.get("gpu_eviction") or "lru",
                   _flag(parameters, "gpu_admission"), _flag(parameters, "gpu_async_insert"))

    @staticmethod
    def parameters_of(options: GpuCacheOptions | None) -> dict[str, str]:
        """:meth:`to_parameters` of ``options``, or the parameters of no GPU tier."""
        if options is not None:
            return options.to_parameters()
        return {**GpuCacheOptions(1).to_parameters(), "gpu_cache_bytes": ""}  # the defaults, and no cache


def _text(value: int | None) -> str:
    return "" if value is None else str(int(value))


def _bool(value: bool) -> str:
    return "true" if value else "false"
