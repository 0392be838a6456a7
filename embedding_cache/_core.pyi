import numpy as np
import numpy.typing as npt

__version__: str
has_cuda: bool

def cuda_device_count() -> tuple[int, str | None]: ...
def key_table_lookup(slots: npt.NDArray[np.int64], max_probe: int, keys: npt.NDArray[np.int64], out: npt.NDArray[np.int64]) -> None: ...
