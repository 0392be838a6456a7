"""embedding_cache: a hierarchical embedding store (GPU cache, host store, persistent tier).

This release carries the compiled core's identity and device discovery; the host store, the
RocksDB tier and the GPU cache build on it.
"""

from __future__ import annotations

from embedding_cache import _core

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


__all__ = ["__version__", "has_cuda", "cuda_device_count", "cuda_device_status"]
