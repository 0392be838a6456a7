"""_native.host_dlpack_capsule: the zero-copy host export the Python backends hand Triton."""

import gc
import sys

import numpy as np
import pytest
import torch

from tritonrec import _native


def _renamed_like_triton(capsule) -> None:
    """What Triton's Python backend does to a capsule it takes (pb_tensor.cc): rename it."""
    import ctypes

    set_name = ctypes.pythonapi.PyCapsule_SetName
    set_name.argtypes = [ctypes.py_object, ctypes.c_char_p]
    set_name.restype = ctypes.c_int
    assert set_name(capsule, b"used_dlpack") == 0


@pytest.mark.parametrize("dtype", [np.bool_, np.int8, np.int32, np.int64, np.uint8, np.uint64,
                                   np.float16, np.float32, np.float64])
def test_consumer_sees_the_array_without_a_copy(dtype):
    array = (np.arange(12) % 3).astype(dtype).reshape(3, 4)
    viewed = torch.utils.dlpack.from_dlpack(_native.host_dlpack_capsule(array))
    assert viewed.data_ptr() == array.ctypes.data
    np.testing.assert_array_equal(viewed.numpy(), array)


def test_the_array_lives_until_the_consumer_lets_go():
    array = np.arange(6, dtype=np.float32)
    base = sys.getrefcount(array)
    viewed = torch.utils.dlpack.from_dlpack(_native.host_dlpack_capsule(array))
    gc.collect()
    assert sys.getrefcount(array) == base + 1  # held for the consumer
    del viewed
    gc.collect()
    assert sys.getrefcount(array) == base


def test_an_unconsumed_capsule_releases_the_array():
    array = np.zeros((2, 2), dtype=np.int64)
    base = sys.getrefcount(array)
    capsule = _native.host_dlpack_capsule(array)
    assert sys.getrefcount(array) == base + 1
    del capsule
    assert sys.getrefcount(array) == base


def test_a_capsule_renamed_by_its_consumer_is_left_to_the_consumer(capfd):
    # numpy's own capsule, renamed as Triton renames it, makes its destructor complain (or, under
    # numpy 1.26, free what the consumer still uses); ours leaves the tensor to the consumer.
    array = np.ones(4, dtype=np.float32)
    base = sys.getrefcount(array)
    capsule = _native.host_dlpack_capsule(array)
    _renamed_like_triton(capsule)
    del capsule
    gc.collect()
    assert "incorrect name" not in capfd.readouterr().err
    assert sys.getrefcount(array) == base + 1  # the consumer (here: nobody) still owns one reference


def test_bad_arrays_are_refused_by_name():
    with pytest.raises(TypeError, match="array: expected a C-contiguous array"):
        _native.host_dlpack_capsule(np.zeros((3, 2), dtype=np.float32).T)
    with pytest.raises(TypeError, match="array: expected a bool, integer or floating-point dtype"):
        _native.host_dlpack_capsule(np.array(["a", "b"]))
