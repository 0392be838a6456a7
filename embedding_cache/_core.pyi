__version__: str
has_cuda: bool

def cuda_device_count() -> tuple[int, str | None]: ...
