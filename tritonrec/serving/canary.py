"""Canary requests: readiness that tells the truth.

Triton 2.51's model readiness is only the model's load state: a model whose stub hangs, or whose
answers turned wrong, stays READY. A canary is a small real request (one row, built from the
model's configuration) sent with a timeout; it passes when an answer arrives in time with every
declared output of the declared dtype and shape, finite floats, and the same values as the
model's first passing answer (integers exactly, floats to 1e-5 relative). The first answer is the
baseline for the life of the :class:`CanaryProber`.

Canary inputs: one row (batch 1 for a model with ``max_batch_size`` > 0), every variable
dimension 1, zeros for numbers, ``b""`` for strings; a list column's offsets tensor
(``<column>__offsets``) is ``[0, 1]`` and its lengths tensor (``<column>__lengths``) 1, so the row
holds one value. tritonrec's models accept these (0 and the empty string are ordinary raw values).
A model whose inputs zeros do not fit can opt out with the config parameter
``tritonrec_canary: "off"``.

Canary requests reach the model like any other request: they count in its metrics.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tritonrec.serving.dtypes import numpy_dtype

CANARY_PARAMETER = "tritonrec_canary"
FLOAT_RTOL = 1e-5
FLOAT_ATOL = 1e-6


class CanaryError(RuntimeError):
    """A model's configuration gives no canary request (e.g. an input of a datatype numpy lacks)."""


@dataclasses.dataclass(frozen=True)
class CanaryResult:
    """The outcome of one canary request to ``model``: ``ok``, else ``reason`` says what failed."""

    model: str
    ok: bool
    reason: str
    seconds: float


def _dims(tensor: Mapping[str, Any]) -> list[int]:
    return [int(d) for d in tensor.get("dims", [])]


def canary_inputs(config: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Input name -> one-row array for a model config (Triton's JSON form, as ``get_model_config``
    returns it under ``"config"``).

    Raises:
        CanaryError: an input whose datatype has no numpy equivalent, or a reshape the canary cannot fill.
    """
    batched = int(config.get("max_batch_size", 0)) > 0
    inputs = {}
    for tensor in config.get("input", []):
        name = tensor["name"]
        try:
            dtype = numpy_dtype(tensor["data_type"])
        except ValueError as e:
            raise CanaryError(f"input {name!r}: {e}") from None
        shape = [1 if d < 0 else d for d in _dims(tensor)]
        if batched:
            shape = [1, *shape]
        if name.endswith("__offsets") and len(shape) == 1:
            array = np.array([0, 1], dtype=dtype)
        else:
            fill = b"" if dtype == np.dtype(object) else (1 if name.endswith("__lengths") else 0)
            array = np.full(shape, fill, dtype=dtype)
        inputs[name] = array
    return inputs


def check_outputs(config: Mapping[str, Any], outputs: Mapping[str, np.ndarray | None]) -> str | None:
    """None when ``outputs`` hold every declared output with its dtype, one row of its dims and
    finite floats; else the first problem, in words."""
    batched = int(config.get("max_batch_size", 0)) > 0
    for tensor in config.get("output", []):
        name = tensor["name"]
        array = outputs.get(name)
        if array is None:
            return f"output {name!r} is missing"
        want = numpy_dtype(tensor["data_type"])
        if array.dtype != want:
            return f"output {name!r} is {array.dtype}, the config declares {want}"
        dims = _dims(tensor)
        expected = [1, *dims] if batched else dims
        if len(array.shape) != len(expected) or any(e >= 0 and e != a for e, a in zip(expected, array.shape)):
            return f"output {name!r} has shape {list(array.shape)}, the config declares {expected} (-1: any)"
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            return f"output {name!r} holds {array.reshape(-1)[~np.isfinite(array.reshape(-1))][0]}"
    return None


def first_difference(expected: Mapping[str, Any], got: Mapping[str, np.ndarray | None], atol: float, rtol: float) -> tuple[str, str] | None:
    """``(output name, what differs)`` for the first output of ``expected`` that ``got`` lacks
    (``"missing"``), has in another shape (``"shape [..] instead of [..]"``) or with other values
    (``"largest difference D"``: floats beyond ``atol`` + ``rtol`` x |expected|, NaN equal to NaN;
    other dtypes exactly); None when all match."""
    for name, want in expected.items():
        have = got.get(name)
        if have is None:
            return name, "missing"
        want = np.asarray(want)
        if have.shape != want.shape:
            return name, f"shape {list(have.shape)} instead of {list(want.shape)}"
        if want.dtype.kind == "f":
            bad = ~np.isclose(have, want, atol=atol, rtol=rtol, equal_nan=True)
        else:
            bad = np.asarray(have != want)
        if bad.any():
            if want.dtype.kind in "fiub":
                return name, f"largest difference {np.abs(have[bad].astype(np.float64) - want[bad].astype(np.float64)).max()}"
            return name, f"{int(bad.sum())} values differ"
    return None


def same_answer(baseline: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> str | None:
    """None when ``outputs`` equal ``baseline`` (floats to :data:`FLOAT_RTOL`); else the difference."""
    difference = first_difference(baseline, outputs, FLOAT_ATOL, FLOAT_RTOL)
    return None if difference is None else f"output {difference[0]!r} changed since the first canary ({difference[1]})"


class CanaryProber:
    """Sends canary requests to the models of one server over gRPC and checks the answers.

    Args:
        grpc_url: ``host:port`` of the server's gRPC endpoint.
        timeout_s: seconds an answer may take before the canary fails.
        headers: gRPC headers for the model-repository index (the admin key, when it is restricted).
    """

    def __init__(self, grpc_url: str, timeout_s: float = 10.0, headers: Mapping[str, str] | None = None) -> None:
        import tritonclient.grpc as grpcclient  # noqa: PLC0415

        self.client = grpcclient.InferenceServerClient(grpc_url)
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})
        self._configs: dict[str, dict[str, Any]] = {}
        self._baselines: dict[str, dict[str, np.ndarray]] = {}

    def ready_models(self) -> list[str]:
        """Names of the models the server reports READY (from its repository index)."""
        index = self.client.get_model_repository_index(headers=self.headers, as_json=True, client_timeout=self.timeout_s)
        return sorted({m["name"] for m in index.get("models", []) if m.get("state") == "READY"})

    def _config(self, model: str) -> dict[str, Any]:
        if model not in self._configs:
            self._configs[model] = self.client.get_model_config(model, as_json=True, client_timeout=self.timeout_s)["config"]
        return self._configs[model]

    def enabled(self, model: str) -> bool:
        """False when the model's config opts out (parameter ``tritonrec_canary: "off"``)."""
        parameters = self._config(model).get("parameters", {})
        return parameters.get(CANARY_PARAMETER, {}).get("string_value", "on").lower() != "off"

    def probe(self, model: str) -> CanaryResult:
        """One canary request to ``model``; never raises for the server's or the model's faults."""
        from tritonclient.utils import InferenceServerException  # noqa: PLC0415

        from tritonrec.serving.client import infer  # noqa: PLC0415

        t0 = time.perf_counter()

        def result(reason: str | None) -> CanaryResult:
            return CanaryResult(model, reason is None, reason or "", time.perf_counter() - t0)

        try:
            config = self._config(model)
            names = [t["name"] for t in config.get("output", [])]
            outputs = infer(self.client, model, canary_inputs(config), names, self.timeout_s)
        except InferenceServerException as e:
            message = e.message() or str(e)
            if "Deadline Exceeded" in message:
                return result(f"no answer within {self.timeout_s:g} s")
            return result(f"error: {message}")
        except CanaryError as e:
            return result(str(e))
        problem = check_outputs(config, outputs)
        if problem is None:
            baseline = self._baselines.setdefault(model, outputs)
            problem = same_answer(baseline, outputs)
        return result(problem)

    def probe_all(self, models: Sequence[str] | None = None) -> list[CanaryResult]:
        """Probes ``models`` (default: every READY model that has not opted out), one after another.

        Raises:
            tritonclient.utils.InferenceServerException: the server did not list its models.
        """
        names = self.ready_models() if models is None else list(models)
        return [self.probe(m) for m in names if models is not None or self.enabled(m)]

    def close(self) -> None:
        self.client.close()
