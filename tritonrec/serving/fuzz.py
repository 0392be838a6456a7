"""A bad-input fuzzer for a served model repository: every answer is right or an error, nothing
crashes or hangs the server, and a valid request right after any bad one gets the same answer.

Each :class:`Target` is one served model with a way to make valid requests (``sample``) and an
in-process reference (``reference``: one request's tensors -> outputs, or an exception for a
request the model must refuse). :class:`Fuzzer` sends cases drawn at random:

=====================  ===================================================================  ========================
case                   request                                                              must get
=====================  ===================================================================  ========================
``valid``              1..max_batch_size rows from ``sample``                               the reference answer
``special_values``     valid rows with NaN, +-inf, +-3e38, int64 min/max, -1, 2**62         the reference answer, or
                                                                                            an error where the
                                                                                            reference errs or is not
                                                                                            finite
``empty_batch``        0 rows                                                               an error or 0 rows
``over_max_batch``     max_batch_size + 1 .. 2x rows                                        an error
``wrong_dtype``        one input in another datatype                                        an error
``wrong_shape``        one input with another inner shape or rank                           an error
``unknown_input``      one input renamed                                                    an error
``missing_input``      one input left out                                                   an error
``extra_input``        one more input                                                       an error
``mismatched_batch``   inputs with different numbers of rows                                an error
``truncated_raw``      gRPC: fewer bytes than the shape needs                               an error
``excess_raw``         gRPC: more bytes than the shape needs                                an error
``bad_datatype``       gRPC: a datatype Triton does not know                                an error
``negative_shape``     gRPC: a negative dimension                                           an error; Triton 2.51
                                                                                            checks batch dimensions
                                                                                            modulo 2**32 and lets 0
                                                                                            pass: a later input's
                                                                                            lying batch dimension
                                                                                            gets the answer of the
                                                                                            bytes sent
``http_valid``         HTTP/JSON: valid rows                                                the reference answer
``http_bad_json``      HTTP: a JSON body cut short, or random bytes                         an error (4xx)
``http_wrong_types``   HTTP: strings where numbers belong, a wrong element count            an error (4xx)
``http_truncated``     HTTP: a Content-Length longer than the body sent, then a close       no crash, no hang
``http_binary_cut``    HTTP: the binary-tensor extension with its data cut short             an error (4xx)
``http_negative``      HTTP: a negative dimension                                           an error (Triton 2.51
                                                                                            answers 500 itself)
=====================  ===================================================================  ========================

HTTP cases run only when an HTTP address is given. Deeply nested JSON is left out: it crashes
Triton 2.51 itself (see the README's Security section; ``tritonrec serve`` serves gRPC only unless
``--http`` is given). An error must carry a message; answers are compared with
:func:`outputs_match` (integers exactly, floats to ``atol``/``rtol``, NaN equal to NaN). After every
case the ``probe`` request (valid, fixed) must get its first answer again, and ``alive`` must
still hold. A request with no answer within ``timeout_s`` is a hang.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from embedding_cache import HostOptions
from tritonrec.serving.canary import first_difference
from tritonrec.serving.client import json_inputs, json_outputs, pack_request
from tritonrec.serving.dtypes import numpy_dtype, wire_dtype

Tensors = dict[str, np.ndarray]

GRPC_CASES = (
    "valid", "special_values", "empty_batch", "over_max_batch", "wrong_dtype", "wrong_shape", "unknown_input",
    "missing_input", "extra_input", "mismatched_batch", "truncated_raw", "excess_raw", "bad_datatype", "negative_shape",
)
HTTP_CASES = ("http_valid", "http_bad_json", "http_wrong_types", "http_truncated", "http_binary_cut", "http_negative")
SPECIAL_FLOATS = (np.nan, np.inf, -np.inf, 3e38, -3e38, 0.0, -0.0)
SPECIAL_INTS = (np.iinfo(np.int64).min, np.iinfo(np.int64).max, -1, 2**62, 0)


@dataclasses.dataclass
class Target:
    """One served model to fuzz.

    Attributes:
        model: its name on the server.
        inputs: input name -> (numpy dtype, dims without the batch dimension), as its config declares.
        outputs: its output names.
        max_batch_size: the config's ``max_batch_size`` (> 0: inputs carry a batch dimension).
        sample: (rng, rows) -> valid input tensors of ``rows`` rows.
        reference: one request's tensors -> the expected outputs; raises for a request to refuse.
        finite_outputs: served outputs must be finite (a probability); a non-finite reference
            then means the request must be refused.
    """

    model: str
    inputs: dict[str, tuple[np.dtype, tuple[int, ...]]]
    outputs: list[str]
    max_batch_size: int
    sample: Callable[[np.random.Generator, int], Tensors]
    reference: Callable[[Tensors], Mapping[str, np.ndarray]]
    finite_outputs: bool = False


@dataclasses.dataclass
class Failure:
    """A case whose outcome broke a rule: ``kind`` is ``wrong``, ``crash``, ``hang``, ``unnamed_error`` or ``probe``."""

    kind: str
    case: str
    model: str
    detail: str


@dataclasses.dataclass
class FuzzReport:
    """Counts per case (``sent``, ``answered``, ``refused``) and every failure."""

    sent: Counter = dataclasses.field(default_factory=Counter)
    answered: Counter = dataclasses.field(default_factory=Counter)
    refused: Counter = dataclasses.field(default_factory=Counter)
    lenient: Counter = dataclasses.field(default_factory=Counter)
    """Malformed requests Triton served as the valid request whose bytes they carry (see :meth:`Fuzzer._judge_refusal`)."""
    failures: list[Failure] = dataclasses.field(default_factory=list)
    probes: int = 0
    seconds: float = 0.0

    def count(self, kind: str) -> int:
        return sum(1 for f in self.failures if f.kind == kind)

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        lines = [f"{sum(self.sent.values())} cases in {self.seconds:.1f} s, {self.probes} probes; "
                 f"crashes {self.count('crash')}, hangs {self.count('hang')}, wrong answers {self.count('wrong')}, "
                 f"unnamed errors {self.count('unnamed_error')}, probe mismatches {self.count('probe')}; "
                 f"served by Triton's lenient batch check {sum(self.lenient.values())}"]
        lines += [f"  {f.kind} in {f.case} on {f.model}: {f.detail}" for f in self.failures[:20]]
        return "\n".join(lines)


class Outcome:
    """What the server did with one request: ``outputs``, or ``error`` (message), or ``hang``/``crash``."""

    def __init__(self, outputs: Tensors | None = None, error: str | None = None, hang: bool = False, crash: bool = False) -> None:
        self.outputs, self.error, self.hang, self.crash = outputs, error, hang, crash


def outputs_match(expected: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], atol: float, rtol: float) -> str | None:
    """None when every expected output is in ``got`` with its shape and values (see
    :func:`tritonrec.serving.canary.first_difference`); else the first difference, in words."""
    difference = first_difference(expected, got, atol, rtol)
    return None if difference is None else f"output {difference[0]!r}: {difference[1]}"


def _only_later_batch_lies(raw: Sequence[tuple[str, str, list[int], bytes]], tensors: Tensors) -> bool:
    """True when ``raw`` carries ``tensors`` unchanged except a later input's batch dimension."""
    valid = _raw(tensors)
    if len(raw) != len(valid) or raw[0] != valid[0]:
        return False
    return all(r[:2] == v[:2] and r[3] == v[3] and list(r[2][1:]) == list(v[2][1:]) for r, v in zip(raw, valid))


class GrpcSender:
    """Raw ``ModelInfer`` calls (any names, datatypes, shapes and bytes) over one channel."""

    def __init__(self, url: str, timeout_s: float) -> None:
        import grpc  # noqa: PLC0415
        from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: PLC0415

        self._grpc, self._pb = grpc, service_pb2
        self.channel = grpc.insecure_channel(url, options=[("grpc.max_receive_message_length", 2**31 - 1),
                                                           ("grpc.max_send_message_length", 2**31 - 1)])
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.timeout_s = timeout_s

    def send(self, model: str, tensors: Sequence[tuple[str, str, Sequence[int], bytes]], outputs: Sequence[str]) -> Outcome:
        """``tensors``: (name, datatype, shape, raw bytes) each."""
        request = self._pb.ModelInferRequest(model_name=model)
        for name, datatype, shape, raw in tensors:
            tensor = request.inputs.add()
            tensor.name, tensor.datatype = name, datatype
            tensor.shape.extend(int(d) for d in shape)
            request.raw_input_contents.append(raw)
        for name in outputs:
            request.outputs.add().name = name
        try:
            response = self.stub.ModelInfer(request, timeout=self.timeout_s)
        except self._grpc.RpcError as e:
            code = e.code()
            if code == self._grpc.StatusCode.DEADLINE_EXCEEDED:
                return Outcome(hang=True)
            if code == self._grpc.StatusCode.UNAVAILABLE:
                return Outcome(crash=True, error=e.details())
            return Outcome(error=e.details() or "")
        got = {}
        for i, tensor in enumerate(response.outputs):
            dtype = numpy_dtype(tensor.datatype)
            got[tensor.name] = np.frombuffer(response.raw_output_contents[i], dtype=dtype).reshape(list(tensor.shape))
        return Outcome(outputs=got)

    def close(self) -> None:
        self.channel.close()


def _raw(tensors: Mapping[str, np.ndarray]) -> list[tuple[str, str, list[int], bytes]]:
    return [(name, wire_dtype(a.dtype), list(a.shape), np.ascontiguousarray(a).tobytes()) for name, a in tensors.items()]


class HttpSender:
    """HTTP/JSON requests (and malformed ones) to Triton's HTTP endpoint."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.host, port = url.rsplit(":", 1)
        self.port = int(port)
        self.timeout_s = timeout_s

    def post(self, path: str, body: bytes, headers: Mapping[str, str] | None = None, declared_length: int | None = None) -> tuple[int | None, bytes, str]:
        """(status or None, body, what went wrong) of one POST; ``declared_length`` may lie."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        try:
            connection.putrequest("POST", path)
            connection.putheader("Content-Type", "application/json")
            connection.putheader("Content-Length", str(len(body) if declared_length is None else declared_length))
            for key, value in (headers or {}).items():
                connection.putheader(key, value)
            connection.endheaders()
            connection.send(body)
            if declared_length is not None and declared_length > len(body):
                connection.sock.shutdown(1)  # no more bytes will come (SHUT_WR)
            response = connection.getresponse()
            return response.status, response.read(), ""
        except TimeoutError:
            return None, b"", "timeout"
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            return None, b"", type(e).__name__
        finally:
            connection.close()

    def infer(self, model: str, tensors: Mapping[str, np.ndarray], outputs: Sequence[str]) -> Outcome:
        body = json.dumps({"inputs": json_inputs(tensors), "outputs": [{"name": n, "parameters": {"binary_data": False}} for n in outputs]}).encode()
        status, reply, problem = self.post(f"/v2/models/{model}/infer", body)
        if status is None:
            return Outcome(hang=problem == "timeout", crash=problem != "timeout", error=problem)
        if status != 200:
            return Outcome(error=json.loads(reply).get("error", "") if reply.startswith(b"{") else reply.decode(errors="replace"))
        return Outcome(outputs=json_outputs(json.loads(reply)))


class Fuzzer:
    """Sends random bad and good requests to ``targets`` (see the module docstring).

    Args:
        grpc_url: ``host:port`` of the server's gRPC endpoint.
        targets: the models to fuzz.
        http_url: ``host:port`` of its HTTP endpoint (None: no HTTP cases).
        alive: returns False once the server process has died.
        seed: for the random cases.
        timeout_s: seconds a request may take before it counts as a hang.
        atol, rtol: tolerance of float answers (the scorer's GEMMs differ in the last bits between batch shapes).
    """

    def __init__(
        self,
        grpc_url: str,
        targets: Sequence[Target],
        *,
        http_url: str | None = None,
        alive: Callable[[], bool] = lambda: True,
        seed: int = 0,
        timeout_s: float = 30.0,
        atol: float = 1e-5,
        rtol: float = 1e-5,
    ) -> None:
        self.targets = list(targets)
        self.grpc = GrpcSender(grpc_url, timeout_s)
        self.http = HttpSender(http_url, timeout_s) if http_url else None
        self.alive = alive
        self.rng = np.random.default_rng(seed)
        self.atol, self.rtol = atol, rtol
        self._probes: dict[str, tuple[Tensors, Tensors]] = {}

    def close(self) -> None:
        self.grpc.close()

    # -- the cases ---------------------------------------------------------------------------

    def _rows(self, target: Target) -> int:
        top = max(target.max_batch_size, 1)
        return int(self.rng.choice([1, 1, 2, 3, int(self.rng.integers(1, top + 1)), top]))

    def _expected(self, target: Target, tensors: Tensors) -> Tensors | Exception:
        try:
            out = {k: np.asarray(v) for k, v in target.reference(tensors).items()}
        except Exception as e:  # noqa: BLE001 - the reference's refusal is the expected outcome
            return e
        return out

    def _judge_answer(self, target: Target, case: str, tensors: Tensors, outcome: Outcome, report: FuzzReport, may_refuse: bool) -> None:
        expected = self._expected(target, tensors)
        if outcome.error is not None:
            report.refused[case] += 1
            refusable = may_refuse and (isinstance(expected, Exception) or not all(np.isfinite(v).all() for v in expected.values() if v.dtype.kind == "f"))
            if not outcome.error.strip():
                report.failures.append(Failure("unnamed_error", case, target.model, "an error without a message"))
            elif not refusable:
                report.failures.append(Failure("wrong", case, target.model, f"refused ({outcome.error[:200]}) but the reference answers"))
            return
        report.answered[case] += 1
        if isinstance(expected, Exception):
            report.failures.append(Failure("wrong", case, target.model, f"answered, but the reference refuses: {expected}"[:300]))
            return
        if target.finite_outputs and not all(np.isfinite(v).all() for v in outcome.outputs.values() if v.dtype.kind == "f"):
            report.failures.append(Failure("wrong", case, target.model, "a non-finite value was served"))
            return
        problem = outputs_match(expected, outcome.outputs, self.atol, self.rtol)
        if problem:
            report.failures.append(Failure("wrong", case, target.model, problem))

    def _special(self, tensors: Tensors) -> Tensors:
        out = {k: v.copy() for k, v in tensors.items()}
        for array in out.values():
            flat = array.reshape(-1)
            if flat.size == 0:
                continue
            where = self.rng.integers(0, flat.size, size=max(1, flat.size // 8))
            pool = SPECIAL_FLOATS if array.dtype.kind == "f" else SPECIAL_INTS if array.dtype.kind in "iu" else None
            if pool is not None:
                flat[where] = np.asarray(self.rng.choice(np.asarray(pool, dtype=array.dtype), size=where.size))
        return out

    def _structural(self, target: Target, case: str, tensors: Tensors) -> list[tuple[str, str, list[int], bytes]] | None:
        """The raw tensors of a structurally bad request made from the valid ``tensors``, or None
        when ``case`` cannot apply to ``target``."""
        raw = _raw(tensors)
        pick = int(self.rng.integers(0, len(raw)))
        batched = target.max_batch_size > 0
        if case in ("empty_batch", "over_max_batch", "mismatched_batch"):
            return self._bad_batch(target, case, raw, pick) if batched else None
        if case == "missing_input":
            return raw[:pick] + raw[pick + 1 :]
        if case == "extra_input":
            return [*raw, ("extra", *raw[pick][1:])]
        raw[pick] = self._mutated(case, *raw[pick], batched)
        return raw

    def _bad_batch(self, target: Target, case: str, raw: list[tuple[str, str, list[int], bytes]], pick: int) -> list[Any] | None:
        """Empty, oversized or (between inputs) mismatched batches of a batched model."""
        if case == "empty_batch":
            return [(n, d, [0, *s[1:]], b"") for n, d, s, _ in raw]
        if case == "over_max_batch":
            rows = int(self.rng.integers(target.max_batch_size + 1, 2 * target.max_batch_size + 1))
            return _raw(target.sample(self.rng, rows))
        if len(raw) < 2:
            return None
        other = (pick + 1) % len(raw)
        n2, d2, s2, b2 = raw[other]
        rows = s2[0] + int(self.rng.choice([-1, 1, 2])) if s2[0] > 1 else s2[0] + 1
        raw[other] = (n2, d2, [rows, *s2[1:]], (b2 * 2)[: rows * (len(b2) // max(s2[0], 1))])
        return raw

    def _mutated(self, case: str, name: str, datatype: str, shape: list[int], data: bytes, batched: bool) -> tuple[str, str, list[int], bytes]:
        """One input made bad: its dtype, shape, name, bytes or datatype string."""
        if case == "wrong_dtype":
            other = {"FP32": ["FP64", "INT64", "FP16", "INT32"], "INT64": ["INT32", "FP32", "UINT64", "FP64"]}.get(datatype, ["FP32", "INT64"])
            new = str(self.rng.choice(other))
            with np.errstate(invalid="ignore", over="ignore"):  # NaN to int: any value will do
                array = np.frombuffer(data, dtype=numpy_dtype(datatype)).astype(numpy_dtype(new))
            return name, new, shape, array.tobytes()
        if case == "wrong_shape":
            new_shape = self._wrong_shape(shape, batched)
            count = int(np.prod(new_shape)) if new_shape else 1
            return name, datatype, new_shape, self.rng.bytes(count * numpy_dtype(datatype).itemsize)
        if case == "unknown_input":
            return name + "_x", datatype, shape, data
        if case == "truncated_raw":
            return name, datatype, shape, data[: int(self.rng.integers(0, max(len(data), 1)))]
        if case == "excess_raw":
            return name, datatype, shape, data + self.rng.bytes(int(self.rng.integers(1, 64)))
        if case == "bad_datatype":
            return name, str(self.rng.choice(["FP128", "", "fp32", "TYPE_FP32", "\x00"])), shape, data
        if case == "negative_shape":
            bad = list(shape)
            bad[int(self.rng.integers(0, len(bad)))] = int(self.rng.choice([-1, -2, -(2**40)]))
            return name, datatype, bad, data
        raise ValueError(f"unknown case {case!r}")

    def _wrong_shape(self, shape: list[int], batched: bool) -> list[int]:
        """Another inner shape: one dim off, one dim more, or one dim fewer."""
        inner = shape[1:] if batched else shape
        choice = int(self.rng.integers(0, 3))
        if choice == 0 and inner:
            new_inner = [inner[0] + int(self.rng.choice([-1, 1, 5])), *inner[1:]]
        elif choice == 1:
            new_inner = [*inner, 1]
        else:
            new_inner = inner[:-1] if inner else [2]
        new_inner = [max(d, 0) for d in new_inner]
        return [shape[0], *new_inner] if batched else new_inner

    def _http_case(self, target: Target, case: str, report: FuzzReport) -> Outcome:
        assert self.http is not None
        path = f"/v2/models/{target.model}/infer"
        # JSON has no NaN or infinity: those travel over gRPC (case special_values)
        tensors = {k: np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0) if v.dtype.kind == "f" else v
                   for k, v in target.sample(self.rng, self._rows(target)).items()}
        if case == "http_valid":
            outcome = self.http.infer(target.model, tensors, target.outputs)
            if not (outcome.hang or outcome.crash):
                self._judge_answer(target, case, tensors, outcome, report, may_refuse=False)
            return outcome
        body = {"inputs": json_inputs(tensors)}
        declared = None
        headers = None
        if case == "http_bad_json":
            text = json.dumps(body).encode()
            data = text[: int(self.rng.integers(0, len(text)))] if self.rng.random() < 0.7 else self.rng.bytes(int(self.rng.integers(1, 512)))
        elif case == "http_wrong_types":
            entry = body["inputs"][int(self.rng.integers(0, len(body["inputs"])))]
            if self.rng.random() < 0.5:
                entry["data"] = [str(v) for v in entry["data"]]
            else:
                entry["data"] = entry["data"][: max(len(entry["data"]) - 1, 0)] if len(entry["data"]) > 1 else [1, 2, 3]
            data = json.dumps(body).encode()
        elif case == "http_truncated":
            data = json.dumps(body).encode()
            declared = len(data) + int(self.rng.integers(1, 4096))
        elif case == "http_binary_cut":
            header = {"inputs": [], "outputs": [{"name": n} for n in target.outputs]}
            blobs = []
            for n, a in tensors.items():
                blob = np.ascontiguousarray(a).tobytes()
                header["inputs"].append({"name": n, "shape": list(a.shape), "datatype": wire_dtype(a.dtype),
                                         "parameters": {"binary_data_size": len(blob)}})
                blobs.append(blob)
            head = json.dumps(header).encode()
            payload = b"".join(blobs)
            data = head + payload[: int(self.rng.integers(0, max(len(payload), 1)))]
            headers = {"Inference-Header-Content-Length": str(len(head))}
        elif case == "http_negative":
            entry = body["inputs"][0]
            entry["shape"] = [-1, *entry["shape"][1:]]
            data = json.dumps(body).encode()
        else:
            raise ValueError(f"unknown case {case!r}")
        status, reply, problem = self.http.post(path, data, headers, declared)
        if problem == "timeout":
            return Outcome(hang=True)
        if status is None:
            # a connection the server closed on a lying Content-Length is an answer, if the server lives
            return Outcome(error=problem) if case == "http_truncated" else Outcome(crash=True, error=problem)
        if status == 200:
            return Outcome(outputs={})
        return Outcome(error=f"HTTP {status}: {reply[:200].decode(errors='replace')}")

    def _judge_refusal(self, target: Target, case: str, outcome: Outcome, report: FuzzReport,
                       raw: Sequence[tuple[str, str, list[int], bytes]] | None = None, tensors: Tensors | None = None) -> None:
        """A malformed request must be refused with a message (an empty batch may get 0 rows).

        One exception, Triton's own: it compares the batch dimensions of a request's inputs modulo
        2**32 and lets 0 pass, then serves every input with the first input's batch size. Such a
        request whose bytes are those of ``tensors`` (only a later input's batch dimension lies)
        must get the answer of ``tensors``; it is counted in ``report.lenient``.
        """
        if outcome.outputs is not None:
            if case == "empty_batch" and all(v.shape[:1] == (0,) for v in outcome.outputs.values()):
                report.answered[case] += 1
                return
            if case == "negative_shape" and tensors is not None and raw is not None and _only_later_batch_lies(raw, tensors):
                expected = self._expected(target, tensors)
                if not isinstance(expected, Exception) and outputs_match(expected, outcome.outputs, self.atol, self.rtol) is None:
                    report.lenient[case] += 1
                    return
            shapes = {k: list(v.shape) for k, v in outcome.outputs.items()}
            request = [(n, d, list(s), len(b)) for n, d, s, b in raw or []]
            report.failures.append(Failure("wrong", case, target.model, f"a malformed request {request} was answered: {shapes}"))
            return
        report.refused[case] += 1
        if not (outcome.error or "").strip():
            report.failures.append(Failure("unnamed_error", case, target.model, "an error without a message"))

    # -- the loop ----------------------------------------------------------------------------

    def _probe(self, target: Target, report: FuzzReport, after: str) -> None:
        if target.model not in self._probes:
            tensors = target.sample(np.random.default_rng(12345), 2)
            first = self.grpc.send(target.model, _raw(tensors), target.outputs)
            if first.outputs is None:
                report.failures.append(Failure("probe", after, target.model, f"the probe request failed: {first.error}"))
                return
            self._probes[target.model] = (tensors, first.outputs)
        tensors, baseline = self._probes[target.model]
        report.probes += 1
        outcome = self.grpc.send(target.model, _raw(tensors), target.outputs)
        if outcome.hang:
            report.failures.append(Failure("hang", after, target.model, "the probe after it got no answer"))
        elif outcome.outputs is None:
            report.failures.append(Failure("crash" if outcome.crash else "probe", after, target.model, f"the probe after it failed: {outcome.error}"))
        else:
            problem = outputs_match(baseline, outcome.outputs, 0.0, 0.0)
            if problem:
                report.failures.append(Failure("probe", after, target.model, f"the probe's answer changed: {problem}"))

    def run(self, cases: int, *, stop_on_crash: bool = True) -> FuzzReport:
        """Sends ``cases`` random cases (each followed by the probe; a case that cannot apply to the
        target drawn, e.g. mismatched batches of a one-input model, is drawn again); returns the report."""
        report = FuzzReport()
        # the cases that reach the backends (valid rows, special values) thrice as often
        kinds = [*GRPC_CASES, "valid", "valid", "special_values", "special_values"] + (list(HTTP_CASES) if self.http else [])
        t0 = time.perf_counter()
        for target in self.targets:
            self._probe(target, report, "start")
        while sum(report.sent.values()) < cases:
            target = self.targets[int(self.rng.integers(0, len(self.targets)))]
            case = str(self.rng.choice(kinds))
            if case.startswith("http_"):
                outcome = self._http_case(target, case, report)
                if case != "http_valid" and not (outcome.hang or outcome.crash):
                    self._judge_refusal(target, case, outcome, report)
            elif case in ("valid", "special_values"):
                tensors = target.sample(self.rng, self._rows(target))
                if case == "special_values":
                    tensors = self._special(tensors)
                outcome = self.grpc.send(target.model, _raw(tensors), target.outputs)
                if not (outcome.hang or outcome.crash):
                    self._judge_answer(target, case, tensors, outcome, report, may_refuse=case == "special_values")
            else:
                tensors = target.sample(self.rng, self._rows(target))
                raw = self._structural(target, case, tensors)
                if raw is None:
                    continue
                outcome = self.grpc.send(target.model, raw, target.outputs)
                if not (outcome.hang or outcome.crash):
                    self._judge_refusal(target, case, outcome, report, raw, tensors)
            report.sent[case] += 1
            if outcome.hang:
                report.failures.append(Failure("hang", case, target.model, "no answer"))
            if outcome.crash or not self.alive():
                report.failures.append(Failure("crash", case, target.model, f"the server went away ({outcome.error})"))
                if stop_on_crash:
                    break
            self._probe(target, report, case)
        report.seconds = time.perf_counter() - t0
        return report


class InProcessEnsemble:
    """The three steps of an exported ensemble (packed layout), loaded in process from the
    repository's files: the reference of the fuzzer's targets. References take any number of rows:
    requests over a maximum batch size are the server's to refuse."""

    def __init__(self, repository: str | Any, name: str) -> None:
        from pathlib import Path  # noqa: PLC0415

        import torch  # noqa: PLC0415

        from tritonrec.serving.config import parameter  # noqa: PLC0415
        from tritonrec.serving.lookup_model import EmbeddingLookupModel  # noqa: PLC0415
        from tritonrec.serving.reference import repository_configs  # noqa: PLC0415
        from tritonrec.serving.scorer_model import TorchScorerModel  # noqa: PLC0415
        from tritonrec.serving.transform_model import TransformModel  # noqa: PLC0415

        repo, self._torch, configs = Path(repository), torch, repository_configs(repository)
        self.max_batch_size: dict[str, int] = {}
        folders = {}
        for model in (name, f"{name}_transform", f"{name}_embeddings", f"{name}_scorer"):
            version, config = configs(model, -1)
            self.max_batch_size[model] = int(config.get("max_batch_size", 0))
            folders[model] = (repo / model / str(version), config)
        self.transform = TransformModel.from_directory(folders[f"{name}_transform"][0] / "plan", "packed", 0, "packed")
        lookup_dir, lookup_config = folders[f"{name}_embeddings"]
        tables = [t for t in parameter(lookup_config, "tables").split(",") if t]
        self.lookup = EmbeddingLookupModel.open(lookup_dir / "store", tables, missing=parameter(lookup_config, "missing_key_policy", "store"),
                                                host=HostOptions(threads=1))
        self.scorer = TorchScorerModel(folders[f"{name}_scorer"][0] / "scorer", "cpu", 0, threads=1)
        self.dense_name, self.embeddings_name = (s.name for s in self.scorer.inputs)

    def run(self, model: Any, tensors: Tensors) -> dict[str, np.ndarray]:
        """One request through ``model`` (one of the three): its outputs as numpy arrays, or raises its error."""
        if model is self.scorer:
            tensors = {k: self._torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}
        result = model.execute([tensors])[0]
        if isinstance(result, Exception):
            raise result
        return {k: (v.numpy() if isinstance(v, self._torch.Tensor) else np.asarray(v)) for k, v in result.items()}

    def ensemble(self, tensors: Tensors) -> dict[str, np.ndarray]:
        """The ensemble's answer: transform, lookup, scorer in turn."""
        t = self.run(self.transform, tensors)
        e = self.run(self.lookup, {"ids": t["OUTPUT_INT64"]})
        s = self.run(self.scorer, {self.dense_name: t["OUTPUT_FP32"], self.embeddings_name: e["embeddings"]})
        return {"probability": s[self.scorer.info.output]}


def ensemble_targets(repository: str | Any, name: str, columns: Mapping[str, np.ndarray], pool_rows: int = 512) -> list[Target]:
    """The four targets of an ensemble exported by ``tritonrec export`` (packed layout): the
    ensemble ``name`` and its steps ``name_transform``, ``name_embeddings``, ``name_scorer``, with
    :class:`InProcessEnsemble` as reference.

    Args:
        repository: the model repository.
        columns: raw columns (the plan's inputs, (n,) each) that valid requests draw their rows from.
        pool_rows: rows of ``columns`` to draw from.
    """
    ref = InProcessEnsemble(repository, name)
    n = min(pool_rows, len(next(iter(columns.values()))))
    raw = pack_request(ref.transform, {c: np.asarray(v[:n]) for c, v in columns.items()})
    codes = ref.run(ref.transform, raw)
    pools = {  # the valid inputs of each target, n rows each
        name: raw, f"{name}_transform": raw, f"{name}_embeddings": {"ids": codes["OUTPUT_INT64"]},
        f"{name}_scorer": {ref.dense_name: codes["OUTPUT_FP32"],
                           ref.embeddings_name: ref.run(ref.lookup, {"ids": codes["OUTPUT_INT64"]})["embeddings"]},
    }
    references = {
        name: ref.ensemble, f"{name}_transform": lambda t: ref.run(ref.transform, t),
        f"{name}_embeddings": lambda t: ref.run(ref.lookup, t), f"{name}_scorer": lambda t: ref.run(ref.scorer, t),
    }
    outputs = {name: ["probability"], f"{name}_transform": ["OUTPUT_FP32", "OUTPUT_INT64"],
               f"{name}_embeddings": ["embeddings"], f"{name}_scorer": [ref.scorer.info.output]}

    def sampler(pool: Tensors) -> Callable[[np.random.Generator, int], Tensors]:
        return lambda rng, k: (lambda r: {key: v[r] for key, v in pool.items()})(rng.integers(0, n, size=k))

    return [
        Target(model, {key: (v.dtype, v.shape[1:]) for key, v in pools[model].items()}, outputs[model], ref.max_batch_size[model],
               sampler(pools[model]), references[model], finite_outputs=model in (name, f"{name}_scorer"))
        for model in (name, f"{name}_transform", f"{name}_embeddings", f"{name}_scorer")
    ]
