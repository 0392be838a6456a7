"""Client-side helpers: one request over gRPC (``tritonclient.grpc``) or HTTP/JSON (no library),
Triton's metrics scraped, and a transform model's raw columns packed into its input tensors and
its output tensors unpacked into columns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tritonrec.serving.dtypes import numpy_dtype, wire_dtype
from tritonrec.serving.lists import list_from_tensors, list_tensor_names, list_to_tensors
from tritonrec.serving.transform_model import TransformModel, packed_input_name, packed_output_name
from tritonrec.transform.plan import ListColumn


def infer(client: Any, model: str, tensors: Mapping[str, np.ndarray], outputs: Sequence[str],
          timeout_s: float | None = None, request_id: str = "") -> dict[str, np.ndarray | None]:
    """Sends one request; returns output name -> array (None for an output the answer lacks).

    Args:
        client: a ``tritonclient.grpc.InferenceServerClient``.
        model: model name.
        tensors: input name -> array (any numeric dtype Triton knows; object arrays as BYTES).
        outputs: the output names to fetch.
        timeout_s: seconds to wait for the answer (None: no limit).
        request_id: the request's id ("" for none; an ensemble's steps see it, and a logging
            transform records it, so labels can be reported by it).

    Raises:
        tritonclient.utils.InferenceServerException: the server's error for this request
            ("Deadline Exceeded" after ``timeout_s``).
    """
    result = infer_result(client, model, tensors, outputs, timeout_s, request_id)
    return {name: result.as_numpy(name) for name in outputs}


def infer_result(client: Any, model: str, tensors: Mapping[str, np.ndarray], outputs: Sequence[str],
                 timeout_s: float | None = None, request_id: str = "") -> Any:
    """:func:`infer`, returning tritonclient's ``InferResult`` (``as_numpy(name)``, and
    ``get_response().model_version``: the version that answered)."""
    import tritonclient.grpc as grpcclient  # noqa: PLC0415

    inputs = []
    for name, array in tensors.items():
        tensor = grpcclient.InferInput(name, list(array.shape), wire_dtype(array.dtype))
        tensor.set_data_from_numpy(np.ascontiguousarray(array))
        inputs.append(tensor)
    requested = [grpcclient.InferRequestedOutput(name) for name in outputs]
    return client.infer(model, inputs, outputs=requested, client_timeout=timeout_s, request_id=request_id)


def json_inputs(tensors: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """The ``inputs`` of an HTTP/JSON inference request: name, shape, datatype and the values,
    row-major (bytes as str: JSON carries valid Unicode only; NaN and infinities cannot travel)."""
    return [{"name": name, "shape": list(array.shape), "datatype": wire_dtype(array.dtype),
             "data": [v.decode() if isinstance(v, bytes) else v for v in array.reshape(-1).tolist()]}
            for name, array in tensors.items()]


def json_outputs(reply: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Output name -> array of an HTTP/JSON inference answer (parsed JSON)."""
    return {o["name"]: np.asarray(o["data"], dtype=numpy_dtype(o["datatype"])).reshape(o["shape"]) for o in reply["outputs"]}


def infer_http(http_url: str, model: str, tensors: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
    """One request over Triton's HTTP/JSON protocol, with no client library (e.g. on a machine
    without tritonclient); returns output name -> array.

    Args:
        http_url: ``host:port`` of the server's HTTP endpoint.
        tensors: input name -> numeric array, or object array of str (sent as BYTES; JSON carries
            valid Unicode only).

    Raises:
        RuntimeError: the server's error for this request, with its message.
    """
    import json  # noqa: PLC0415
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    body = json.dumps({"inputs": json_inputs(tensors), "outputs": [{"name": name} for name in outputs]}).encode()
    request = urllib.request.Request(f"http://{http_url}/v2/models/{model}/infer", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            reply = json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"model {model!r}: {json.loads(e.read()).get('error', e.reason)}") from None
    return json_outputs(reply)


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


def pack_request(model: TransformModel, columns: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Client side: raw columns ((n,) arrays; a :class:`ListColumn` or (values, offsets) pair for a
    list column) -> the model's input tensors ([n, ...] arrays; a list column's two tensors in the
    model's ``list_layout``)."""
    out: dict[str, np.ndarray] = {}
    for c in model.plan.input_schema:
        if c.is_list:
            column = columns[c.name]
            column = column if isinstance(column, ListColumn) else ListColumn(*column)
            column = ListColumn(np.asarray(column.values, dtype=c.dtype), np.asarray(column.offsets, dtype=np.int64))
            values_name, second = list_tensor_names(c.name, model.list_layout)
            out[values_name], out[second] = list_to_tensors(column, model.list_layout)
        elif model.layout == "per-column":
            out[c.name] = np.ascontiguousarray(np.asarray(columns[c.name], dtype=c.dtype).reshape(-1, 1))
    if model.layout == "packed":
        for d, names in model.plan.packed_inputs.items():
            out[packed_input_name(d)] = np.ascontiguousarray(np.stack([np.asarray(columns[c], dtype=np.dtype(d)) for c in names], axis=1))
    return {s.name: out[s.name] for s in model.inputs}


def unpack_response(model: TransformModel, outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Client side: the model's output tensors -> output column name -> (n,) array (a
    :class:`ListColumn` with int64 offsets for a list column)."""
    columns: dict[str, Any] = {}
    for c in model.plan.output_schema:
        if c.is_list:
            values_name, second = list_tensor_names(c.name, model.list_layout)
            columns[c.name] = list_from_tensors(c.name, np.asarray(outputs[values_name]), np.asarray(outputs[second]), model.list_layout)
        elif model.output_layout == "per-column":
            columns[c.name] = np.asarray(outputs[c.name]).reshape(-1)
    if model.output_layout == "packed":
        for d, names in model.plan.packed_outputs.items():
            tensor = np.asarray(outputs[packed_output_name(d)])
            for j, name in enumerate(names):
                columns[name] = tensor[:, j]
    return {c.name: columns[c.name] for c in model.plan.output_schema}
