"""embedding_cache: embedding tables behind one batched lookup API.

Tiers, one module each: a GPU cache of hot rows (``gpu.py``; CUDA builds, with cupy;
``EmbeddingStore(device=..., gpu_cache=GpuCacheOptions(...))``), the host store (``host.py``:
tables in host memory, C++ core, lookups on a thread pool with the GIL released) and the RocksDB
persistent tier (``rocksdb.py``) under a host memory budget; ``store.py`` composes them. The store
directory format (``format.py``), its builders (``build.py``), the missing-key policy
(``policy.py``), the tiers' options (``options.py``); device discovery.
"""

from __future__ import annotations

from embedding_cache import _core
from embedding_cache.build import build_store, build_store_from_parquet, build_store_from_state_dict
from embedding_cache.format import StoreFormatError, TableInfo, read_store_info
from embedding_cache.options import GpuCacheOptions, HostOptions, OptionsError
from embedding_cache.policy import MissingPolicy, absent_keys_message
from embedding_cache.store import EmbeddingStore

__version__: str = _core.__version__
has_cuda: bool = bool(_core.has_cuda)
"""True when the CUDA sources were compiled into ``_core``."""


def cuda_device_count() -> int:
    """Number of CUDA devices visible to this process.

    Returns 0 when the module was built without CUDA or no driver or device is present; call
    :func:`cuda_device_status` for the reason.
    """
    count, _error = _core.cuda_device_count()
    return int(count)


def cuda_device_status() -> tuple[int, str | None]:
    """``(count, error)``: the device count and, when it is 0 because of a failure, why."""
    count, error = _core.cuda_device_count()
    return int(count), error


__all__ = [
    "EmbeddingStore",
    "GpuCacheOptions",
    "HostOptions",
    "OptionsError",
    "MissingPolicy",
    "StoreFormatError",
    "TableInfo",
    "absent_keys_message",
    "__version__",
    "build_store",
    "build_store_from_parquet",
    "build_store_from_state_dict",
    "cuda_device_count",
    "cuda_device_status",
    "has_cuda",
    "read_store_info",
]
