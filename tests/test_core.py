"""embedding_cache._core: the compiled module's identity and device discovery."""

import embedding_cache
from embedding_cache import _core


def test_version_matches_package():
    assert embedding_cache.__version__ == _core.__version__ == "0.1.0"


def test_has_cuda_is_a_bool():
    assert isinstance(embedding_cache.has_cuda, bool)


def test_device_count_is_consistent_with_its_reason():
    count, error = embedding_cache.cuda_device_status()
    assert count >= 0
    assert embedding_cache.cuda_device_count() == count
    if count == 0:
        # No device: the reason is a readable one-line message (no driver, or no CUDA in the build).
        assert isinstance(error, str) and error and "\n" not in error
        if not embedding_cache.has_cuda:
            assert "without CUDA" in error
    else:
        assert error is None
