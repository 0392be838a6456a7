"""The description of a tensor that crosses Triton (name, dtype, dims), for configs and checks."""

from __future__ import annotations

import dataclasses

import numpy as np

from tritonrec.serving.dtypes import triton_dtype

@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A tensor crossing Triton: name, numpy dtype, and dims without the batch dimension."""

    name: str
    dtype: np.dtype
    dims: tuple[int, ...]
    batched: bool = True
    """False for a tensor without a batch dimension (a list column's flat values or offsets):
    ``dims`` is then its whole shape."""

    @property
    def triton_dtype(self) -> str:
        return triton_dtype(self.dtype)

    def config_dims(self, max_batch_size: int) -> tuple[int, ...]:
        """The dims config.pbtxt declares: without the batch dimension when Triton batches
        (``max_batch_size`` > 0), the whole shape (batch as -1) when it does not."""
        return (-1, *self.dims) if self.batched and max_batch_size == 0 else self.dims
