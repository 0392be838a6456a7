"""A small gRPC client helper over ``tritonclient.grpc`` (loopback servers, numpy arrays)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tritonrec.triton_types import triton_dtype


def infer(client: Any, model: str, tensors: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
    """Sends one request; returns output name -> array.

    Args:
        client: a ``tritonclient.grpc.InferenceServerClient``.
        model: model name.
        tensors: input name -> array (any numeric dtype Triton knows).
        outputs: the output names to fetch.

    Raises:
        tritonclient.utils.InferenceServerException: the server's error for this request.
    """
    import tritonclient.grpc as grpcclient  # noqa: PLC0415

    inputs = []
    for name, array in tensors.items():
        tensor = grpcclient.InferInput(name, list(array.shape), triton_dtype(array.dtype))
        tensor.set_data_from_numpy(np.ascontiguousarray(array))
        inputs.append(tensor)
    requested = [grpcclient.InferRequestedOutput(name) for name in outputs]
    result = client.infer(model, inputs, outputs=requested)
    return {name: result.as_numpy(name) for name in outputs}


def scrape_metrics(metrics_url: str) -> dict[str, float]:
    """Triton's metrics endpoint (``http://host:port/metrics``) as ``{'name{labels}': value}``
    for tritonrec's metric families (``tritonrec_*``)."""
    import urllib.request  # noqa: PLC0415

    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("tritonrec_"):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    return values
