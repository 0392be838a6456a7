"""BYTES (string) inputs through a real tritonserver with a plan built by hand (no nvtabular), so
that it also runs where numpy 2 is installed (the GPU machine): Triton's python_backend hands
BYTES tensors over by ``as_numpy()``, not DLPack, and numpy 1 and 2 differ in that path."""

from __future__ import annotations

import numpy as np
import pytest

from tritonrec import _native
from tritonrec.transform._table import KeyTable
from tritonrec.transform.ops import Categorify
from tritonrec.transform.plan import ColumnSpec, PlanGroup, TransformPlan

pytestmark = pytest.mark.triton
VOCAB = [np.array([f"u{i}" for i in range(500)], dtype=object), np.array(["", "é", "日本", "x" * 200, "b"], dtype=object)]


def _plan() -> TransformPlan:
    keys = [_native.hash_strings(v)[0].view(np.int64) for v in VOCAB]
    columns = [np.full(k.size, j, dtype=np.int64) for j, k in enumerate(keys)]
    codes = [np.arange(3, 3 + k.size, dtype=np.int64) for k in keys]
    table = KeyTable.build(np.concatenate(columns), np.concatenate(keys), np.concatenate(codes))
    group = PlanGroup(["a", "b"], ["a", "b"], np.dtype(object), [Categorify(table, [0, 5], object, np.int64)])
    specs = [ColumnSpec(n, np.dtype(object)) for n in ("a", "b")]
    return TransformPlan(specs, [ColumnSpec(n, np.dtype(np.int64)) for n in ("a", "b")], [group], "23.08.00")


def test_hand_built_string_plan(tmp_path, start_server):
    from tritonrec.export import export_transform
    from tritonrec.serving.client import infer_http

    plan = _plan()
    rng = np.random.default_rng(0)
    n = 256
    a = np.where(rng.random(n) < 0.7, VOCAB[0][rng.integers(0, 500, n)], np.array([f"z{i}" for i in range(n)], dtype=object)).astype(object)
    b = np.where(rng.random(n) < 0.7, VOCAB[1][rng.integers(0, 5, n)], np.array([f"w{i}" for i in range(n)], dtype=object)).astype(object)
    expected = plan.transform({"a": a, "b": b})
    # known strings get their codes; unseen ones 2 (a) or a hash bucket 2..6 (b)
    assert (expected["a"][np.isin(a, VOCAB[0])] >= 3).all() and (expected["a"][~np.isin(a, VOCAB[0])] == 2).all()
    assert ((expected["b"][~np.isin(b, VOCAB[1])] >= 2) & (expected["b"][~np.isin(b, VOCAB[1])] < 7)).all()
    export_transform(plan, tmp_path, "s", layout="per-column", max_batch_size=1024)
    if int(np.__version__.split(".")[0]) >= 2:
        # Triton 2.51's Python stub misreads BYTES tensors under numpy 2 and dies on the first
        # request: the model refuses to load instead, saying why
        from tritonrec.serving.server import ServerError, TritonServer

        with pytest.raises(ServerError, match=r"model 's'.*string \(BYTES\) inputs \['a', 'b'\] need numpy < 2"):
            TritonServer(tmp_path).start(timeout_s=60)
        return
    sent = {"a": np.array([v.encode() for v in a], dtype=object).reshape(-1, 1), "b": np.array([v.encode() for v in b], dtype=object).reshape(-1, 1)}
    log = tmp_path / "server.log"
    with start_server(tmp_path, log_path=log) as server:
        try:
            got = infer_http(server.http_url, "s", {"a": a.reshape(-1, 1), "b": b.reshape(-1, 1)}, ["a", "b"])  # JSON: no client library
        except RuntimeError as e:
            raise AssertionError(f"{e}\nserver log:\n{log.read_text()[-3000:]}") from None
        for c in ("a", "b"):
            np.testing.assert_array_equal(got[c].reshape(-1), expected[c])
        try:
            import tritonclient.grpc as grpcclient
            from tritonclient.utils import InferenceServerException
        except ImportError:  # the GPU machine has no tritonclient: invalid UTF-8 cannot travel in JSON
            return
        from tritonrec.serving.client import infer

        client = grpcclient.InferenceServerClient(server.grpc_url)
        np.testing.assert_array_equal(infer(client, "s", sent, ["a", "b"])["b"].reshape(-1), expected["b"])
        bad = {c: v.copy() for c, v in sent.items()}
        bad["b"][3, 0] = b"\xe6\x97"  # a truncated 3-byte sequence
        with pytest.raises(InferenceServerException, match=r"input column 'b', row 3: bytes that are not valid UTF-8") as error:
            infer(client, "s", bad, ["a", "b"])
        assert error.value.status() == "StatusCode.INVALID_ARGUMENT"  # the client's fault
        np.testing.assert_array_equal(infer(client, "s", sent, ["a", "b"])["a"].reshape(-1), expected["a"])


def test_string_inputs_are_refused_where_the_stub_cannot_read_them(monkeypatch):
    from tritonrec.serving import tensors as triton_tensors

    monkeypatch.setattr(triton_tensors, "NUMPY_2", True)
    with pytest.raises(ValueError, match=r"string \(BYTES\) inputs \['s'\] need numpy < 2 .*'bytes_inputs_under_numpy2'"):
        triton_tensors.check_string_inputs({"s"}, allow_under_numpy_2=False)
    triton_tensors.check_string_inputs({"s"}, allow_under_numpy_2=True)  # a stub built for numpy 2
    triton_tensors.check_string_inputs(set(), allow_under_numpy_2=False)  # numeric models are not affected
    monkeypatch.setattr(triton_tensors, "NUMPY_2", False)
    triton_tensors.check_string_inputs({"s"}, allow_under_numpy_2=False)


def test_a_string_plan_exports_for_gpu_instances(tmp_path):
    """Strings are hashed on the host even on a GPU instance; the export says KIND_GPU."""
    from tritonrec.export import export_transform

    config = (export_transform(_plan(), tmp_path, "s", instance_kind="KIND_GPU") / "config.pbtxt").read_text()
    assert "kind: KIND_GPU" in config and 'name: "a", data_type: TYPE_STRING' in config
