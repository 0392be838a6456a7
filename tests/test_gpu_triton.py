"""GPU instances through a real tritonserver (the GPU machine): the transform plan with cupy on a
KIND_GPU instance equals the numpy plan (tensors by DLPack, kept on the device)."""

from __future__ import annotations

import numpy as np
import pytest

from embedding_cache import GpuCacheOptions
from test_gpu import _hand_built_plan

pytestmark = [pytest.mark.gpu, pytest.mark.triton]


@pytest.mark.parametrize("layout", ["per-column", "packed"])
def test_the_transform_on_a_gpu_instance_equals_the_numpy_plan(tmp_path, start_server, layout):
    pytest.importorskip("cupy")
    from tritonrec.export import export_transform
    from tritonrec.serving.client import infer_http
    from tritonrec.serving.client import pack_request, unpack_response
    from tritonrec.serving.transform_model import TransformModel

    plan, vocab = _hand_built_plan()
    rng = np.random.default_rng(5)
    rows = 2000
    dense = rng.lognormal(1, 1.5, size=(rows, 4)).astype(np.float32)
    dense[rng.random(dense.shape) < 0.2] = 0.0  # JSON carries no NaN (NaN is covered in process by test_gpu.py)
    ids = np.stack([np.where(rng.random(rows) < 0.8, rng.choice(v, size=rows), rng.integers(-(2**62), 2**62, size=rows)) for v in vocab], axis=1)
    columns = {**{f"I{i}": dense[:, i] for i in range(4)}, **{f"C{j}": ids[:, j] for j in range(3)}}
    expected = plan.transform(columns)
    model = TransformModel(plan, layout)
    export_transform(plan, tmp_path, "t", layout=layout, max_batch_size=4096, instance_kind="KIND_GPU")
    config = (tmp_path / "t" / "config.pbtxt").read_text()
    assert "kind: KIND_GPU" in config and 'key: "FORCE_CPU_ONLY_INPUT_TENSORS" value: { string_value: "no" }' in config
    log = tmp_path / "server.log"
    with start_server(tmp_path, log_path=log) as server:
        try:
            outputs = infer_http(server.http_url, "t", pack_request(model, columns), [s.name for s in model.outputs])
        except RuntimeError as e:
            raise AssertionError(f"{e}\nserver log:\n{log.read_text()[-3000:]}") from None
    got = unpack_response(model, outputs)
    for name, want in expected.items():
        if want.dtype.kind == "f":
            np.testing.assert_allclose(got[name], want, rtol=1e-6, atol=1e-6, err_msg=name)  # CUDA's logf vs glibc's: 1 ulp
        else:
            np.testing.assert_array_equal(got[name], want, err_msg=name)


def test_a_multi_hot_ensemble_on_gpu_instances_equals_the_cpu_one(tmp_path, start_server):
    """A plan with a list column (built by hand: no nvtabular here) exported as an ensemble twice,
    all KIND_GPU and all KIND_CPU, into one server: the same probabilities."""
    pytest.importorskip("cupy")
    torch = pytest.importorskip("torch")
    from embedding_cache import build_store
    from tritonrec.export import export_ensemble
    from tritonrec.scorer.artifact import ScorerInfo, save_scorer
    from tritonrec.scorer.dlrm import DLRMDense
    from tritonrec.serving.client import infer_http
    from tritonrec.serving.client import pack_request
    from tritonrec.serving.transform_model import TransformModel
    from tritonrec.transform._table import KeyTable
    from tritonrec.transform.ops import Categorify, ListSlice, LogOp
    from tritonrec.transform.plan import ColumnSpec, ListColumn, PlanGroup, TransformPlan

    vocab = np.arange(0, 600, 3, dtype=np.int64)
    table = KeyTable.build(np.zeros(vocab.size, dtype=np.int64), vocab, np.arange(3, 3 + vocab.size, dtype=np.int64))
    plan = TransformPlan(
        [ColumnSpec("I1", np.dtype(np.float32)), ColumnSpec("C1", np.dtype(np.int64)), ColumnSpec("tags", np.dtype(np.int64), True)],
        [ColumnSpec("I1", np.dtype(np.float32)), ColumnSpec("C1", np.dtype(np.int64)), ColumnSpec("tags", np.dtype(np.int64), True)],
        [
            PlanGroup(["I1"], ["I1"], np.dtype(np.float32), [LogOp()]),
            PlanGroup(["C1"], ["C1"], np.dtype(np.int64), [Categorify(table, [0], np.int64, np.int64)]),
            PlanGroup(["tags"], ["tags"], np.dtype(np.int64), [Categorify(table, [0], np.int64, np.int64), ListSlice(-5, 2**63 - 1, False, 0.0, 5)], True),
        ],
        "23.08.00",
    )
    sizes = {c: r[0] for c, r in plan.categorical_codes().items()}
    rng = np.random.default_rng(0)
    store = build_store(tmp_path / "store", {c: (np.arange(s), rng.normal(0, 0.5, (s, 16)).astype(np.float32)) for c, s in sizes.items()},
                        metadata={"plan_fingerprint": plan.fingerprint, "table_sizes": sizes})
    torch.manual_seed(0)
    save_scorer(tmp_path / "scorer", DLRMDense(1, 2, 16, [32], [32]).eval(), ScorerInfo(plan.fingerprint, ("C1", "tags"), sizes, 1, 16))
    repo = tmp_path / "repo"
    for name, kind in (("gpu", "KIND_GPU"), ("cpu", "KIND_CPU")):
        export_ensemble(plan, store, tmp_path / "scorer", repo, name, layout="per-column", max_batch_size=4096, transform_kind=kind,
                        lookup_kind=kind, scorer_kind=kind, multi_hot_combiner="sum",
                        gpu_cache=GpuCacheOptions(1 << 20) if kind == "KIND_GPU" else None)
    n = 1500
    lengths = rng.integers(0, 9, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    columns = {"I1": rng.lognormal(0, 1, n).astype(np.float32), "C1": rng.integers(0, 700, n),
               "tags": ListColumn(rng.integers(0, 700, int(offsets[-1])), offsets)}
    request = pack_request(TransformModel(plan, "per-column", 4096, list_layout="padded"), columns)
    log = tmp_path / "server.log"
    with start_server(repo, log_path=log) as server:
        try:
            got = {name: infer_http(server.http_url, name, request, ["probability"])["probability"] for name in ("gpu", "cpu")}
        except RuntimeError as e:
            raise AssertionError(f"{e}\nserver log:\n{log.read_text()[-3000:]}") from None
    np.testing.assert_allclose(got["gpu"], got["cpu"], rtol=1e-5, atol=1e-6)
    assert got["cpu"].shape == (n, 1) and np.unique(got["cpu"]).size > n // 2
