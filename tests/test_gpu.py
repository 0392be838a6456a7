"""GPU: the compiled module sees the device, and the plan runs on cupy arrays as on numpy
(categorical codes equal; floats within one ulp of the math library)."""

from __future__ import annotations

import numpy as np
import pytest

import embedding_cache
from embedding_cache import GpuCacheOptions
from tritonrec.transform._table import KeyTable
from tritonrec.transform.ops import (
    Bucketize, Categorify, Clip, FillMissing, HashBucket, HashedCross, LogOp, Normalize, NormalizeMinMax, TargetEncode,
)
from tritonrec.transform.plan import ColumnSpec, PlanGroup, TransformPlan

pytestmark = pytest.mark.gpu


def test_device_is_visible():
    count, error = embedding_cache.cuda_device_status()
    assert embedding_cache.has_cuda and count >= 1 and error is None


def _hand_built_plan() -> TransformPlan:
    """A Criteo-like plan built from steps directly (no NVTabular needed)."""
    rng = np.random.default_rng(0)
    k_cont, k_cat = 4, 3
    keys, cols, codes = [], [], []
    for j in range(k_cat):
        vocab = rng.choice(np.arange(-(10**6), 10**6), size=5000, replace=False)
        keys.append(vocab)
        cols.append(np.full(vocab.size, j))
        codes.append(np.arange(3, 3 + vocab.size))
    table = KeyTable.build(np.concatenate(cols), np.concatenate(keys), np.concatenate(codes))
    cont = PlanGroup(
        [f"I{i}" for i in range(k_cont)], [f"I{i}" for i in range(k_cont)], np.dtype(np.float32),
        [FillMissing([0.0] * k_cont), Clip([0.0] * k_cont, None), LogOp(), Normalize(rng.normal(size=k_cont), rng.uniform(0.5, 2, k_cont), np.float32)],
    )
    cat = PlanGroup([f"C{j}" for j in range(k_cat)], [f"C{j}" for j in range(k_cat)], np.dtype(np.int64), [Categorify(table, [0, 7, 0], np.int64, np.int64)])
    inputs = [ColumnSpec(f"I{i}", np.dtype(np.float32)) for i in range(k_cont)] + [ColumnSpec(f"C{j}", np.dtype(np.int64)) for j in range(k_cat)]
    outputs = [ColumnSpec(f"I{i}", np.dtype(np.float32)) for i in range(k_cont)] + [ColumnSpec(f"C{j}", np.dtype(np.int64)) for j in range(k_cat)]
    return TransformPlan(inputs, outputs, [cont, cat], "23.08.00"), keys


@pytest.mark.parametrize("rows", [1, 1000, 131072])
def test_cupy_plan_equals_numpy_plan(rows):
    cupy = pytest.importorskip("cupy")
    plan, vocab = _hand_built_plan()
    rng = np.random.default_rng(rows)
    dense = rng.lognormal(1, 1.5, size=(rows, 4)).astype(np.float32)
    dense[rng.random(dense.shape) < 0.2] = np.nan
    ids = np.stack([np.where(rng.random(rows) < 0.8, rng.choice(v, size=rows), rng.integers(-(2**62), 2**62, size=rows)) for v in vocab], axis=1)
    expected = plan.transform_packed({"float32": dense, "int64": ids})
    gpu_plan = plan.to(cupy)
    got = gpu_plan.transform_packed({"float32": cupy.asarray(dense), "int64": cupy.asarray(ids)})
    np.testing.assert_array_equal(cupy.asnumpy(got["int64"]), expected["int64"])
    # CUDA's logf and glibc's differ by up to one ulp; after Normalize's subtraction that is up
    # to ~1e-7 absolute near zero (seen on an H200), so floats compare with an absolute floor.
    np.testing.assert_allclose(cupy.asnumpy(got["float32"]), expected["float32"], rtol=1e-6, atol=1e-6)
    assert isinstance(got["int64"], cupy.ndarray)


@pytest.mark.parametrize("rows", [1, 1000, 131072])
def test_cupy_plan_equals_numpy_plan_for_minmax_buckets_and_hashes(rows):
    cupy = pytest.importorskip("cupy")
    rng = np.random.default_rng(rows)
    groups = [
        PlanGroup(["x", "y"], ["x", "y"], np.dtype(np.float32),
                  [FillMissing([0.5, 1.0]), NormalizeMinMax([-3.0, 2.0], [10.0, 0.0], False, np.float64)]),
        PlanGroup(["i", "j"], ["i", "j"], np.dtype(np.int64), [NormalizeMinMax([-7, 5], [1000, 0], True, np.float32)]),
        PlanGroup(["u"], ["u"], np.dtype(np.int64), [NormalizeMinMax([-7.5], [1000.25], False, np.float64)]),
        PlanGroup(["x"], ["bx"], np.dtype(np.float32), [Bucketize([[-1.0, 0.0, 2.5]])]),
        PlanGroup(["i"], ["bi"], np.dtype(np.int64), [Bucketize([[0.0, 100.0]])]),
        PlanGroup(["i", "j"], ["hi", "hj"], np.dtype(np.int64), [HashBucket([100, 7])]),
        PlanGroup(["x"], ["hx"], np.dtype(np.float32), [HashBucket([13])]),
        PlanGroup(["i", "j"], ["ixj"], np.dtype(np.int64), [HashedCross(31)]),
        PlanGroup(["j"], ["te"], np.dtype(np.int64), [TargetEncode(
            KeyTable.build(np.zeros(500, dtype=np.int64), np.arange(-250, 250, dtype=np.int64), np.arange(500, dtype=np.int64)),
            np.linspace(0.0, 1.0, 500), [0.5], [0.25], np.int64, np.float32)]),
    ]
    names = {"x": np.float32, "y": np.float32, "i": np.int64, "j": np.int64, "u": np.int64}
    inputs = [ColumnSpec(n, np.dtype(d)) for n, d in names.items()]
    outputs = [ColumnSpec(n, np.dtype(np.float64)) for n in ("x", "y")] + [ColumnSpec(n, np.dtype(np.float32)) for n in ("i", "j")] + [
        ColumnSpec("u", np.dtype(np.float64))] + [ColumnSpec(n, np.dtype(np.int32)) for n in ("bx", "bi", "hi", "hj", "hx", "ixj")] + [
        ColumnSpec("te", np.dtype(np.float32))]
    plan = TransformPlan(inputs, outputs, groups, "23.08.00")
    columns = {
        "x": np.where(rng.random(rows) < 0.1, np.nan, rng.normal(0, 3, rows)).astype(np.float32),
        "y": rng.normal(0, 3, rows).astype(np.float32),
        "i": rng.integers(-(2**62), 2**62, rows),
        "j": rng.integers(-1000, 1000, rows),
        "u": rng.integers(-(10**6), 10**6, rows),
    }
    expected = plan.transform(columns)
    got = plan.to(cupy).transform({k: cupy.asarray(v) for k, v in columns.items()})
    for spec in outputs:
        assert got[spec.name].dtype == expected[spec.name].dtype == spec.dtype, spec.name
        np.testing.assert_array_equal(cupy.asnumpy(got[spec.name]), expected[spec.name], err_msg=spec.name)


def test_torch_scorer_on_the_gpu_equals_the_cpu(tmp_path):
    torch = pytest.importorskip("torch")
    from tritonrec.scorer.artifact import ScorerInfo, save_scorer
    from tritonrec.scorer.dlrm import DLRM
    from tritonrec.serving.scorer_model import TorchScorerModel

    torch.manual_seed(0)
    model = DLRM(13, [10] * 26)
    tables = tuple(f"C{j}" for j in range(1, 27))
    save_scorer(tmp_path, model.dense, ScorerInfo("f" * 64, tables, dict.fromkeys(tables, 10), 13, 16))
    rng = np.random.default_rng(1)
    dense = rng.normal(size=(512, 13)).astype(np.float32)
    embeddings = rng.normal(0, 0.1, size=(512, 26, 16)).astype(np.float32)
    cpu = TorchScorerModel(tmp_path).execute([{"dense": dense, "embeddings": embeddings}])[0]["probability"]
    gpu_model = TorchScorerModel(tmp_path, "cuda:0")
    inputs = {"dense": torch.from_numpy(dense).cuda(), "embeddings": torch.from_numpy(embeddings).cuda()}
    gpu = gpu_model.execute([inputs, inputs])
    assert gpu[0]["probability"].device.type == "cuda" and gpu[1]["probability"].shape == (512, 1)
    # TF32 is off by default for matmuls in torch: fp32 on both sides, summation order aside
    np.testing.assert_allclose(gpu[0]["probability"].cpu().numpy(), cpu.numpy(), atol=1e-5, rtol=0)
    # requests whose inputs arrive in host memory beside ones on the device (Triton's fallback when
    # its CUDA pool is full) are merged on the device
    host = {"dense": torch.from_numpy(dense), "embeddings": torch.from_numpy(embeddings)}
    mixed = gpu_model.execute([inputs, host, {"dense": dense, "embeddings": inputs["embeddings"]}])
    for result in mixed:
        assert result["probability"].device.type == "cuda"
        np.testing.assert_allclose(result["probability"].cpu().numpy(), cpu.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("rows", [1, 1000, 131072])
def test_cupy_plan_equals_numpy_plan_for_list_columns(rows):
    """List columns (Categorify, ListSlice with and without padding) on cupy equal the numpy plan,
    in the plan and through the transform model in both list conventions."""
    cupy = pytest.importorskip("cupy")
    from tritonrec.serving.client import pack_request
    from tritonrec.serving.transform_model import TransformModel
    from tritonrec.transform.ops import ListSlice
    from tritonrec.transform.plan import ListColumn

    vocab = np.arange(0, 4000, 2, dtype=np.int64)
    table = KeyTable.build(np.zeros(vocab.size, dtype=np.int64), vocab, np.arange(3, 3 + vocab.size, dtype=np.int64))
    plan = TransformPlan(
        [ColumnSpec("tags", np.dtype(np.int64), True), ColumnSpec("x", np.dtype(np.int64))],
        [ColumnSpec("tags", np.dtype(np.int64), True), ColumnSpec("padded", np.dtype(np.int64), True), ColumnSpec("x", np.dtype(np.int64))],
        [
            PlanGroup(["tags"], ["tags"], np.dtype(np.int64), [Categorify(table, [0], np.int64, np.int64), ListSlice(-3, 2**63 - 1, False, 0.0, 3)], True),
            PlanGroup(["tags"], ["padded"], np.dtype(np.int64), [ListSlice(0, 4, True, 7.0, 4), Categorify(table, [0], np.int64, np.int64)], True),
            PlanGroup(["x"], ["x"], np.dtype(np.int64), [Categorify(table, [0], np.int64, np.int64)]),
        ],
        "23.08.00",
    )
    rng = np.random.default_rng(rows)
    lengths = rng.integers(0, 9, rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = rng.integers(0, 5000, int(offsets[-1]))
    columns = {"tags": ListColumn(values, offsets), "x": rng.integers(0, 5000, rows)}
    expected = plan.transform(columns)
    gpu_plan = plan.to(cupy)
    got = gpu_plan.transform({"tags": ListColumn(cupy.asarray(values), cupy.asarray(offsets)), "x": cupy.asarray(columns["x"])})
    for name in ("tags", "padded"):
        np.testing.assert_array_equal(cupy.asnumpy(got[name].values), expected[name].values, err_msg=name)
        np.testing.assert_array_equal(cupy.asnumpy(got[name].offsets), expected[name].offsets, err_msg=name)
    np.testing.assert_array_equal(cupy.asnumpy(got["x"]), expected["x"])
    for list_layout, batch in (("padded", 1 << 20), ("offsets", 0)):
        cpu_model = TransformModel(plan, "per-column", batch, list_layout=list_layout)
        gpu_model = TransformModel(gpu_plan, "per-column", batch, list_layout=list_layout)
        request = pack_request(cpu_model, columns)
        want = cpu_model.execute([request, request])
        have = gpu_model.execute([{k: cupy.asarray(v) for k, v in request.items()}] * 2)
        for w, h in zip(want, have):
            assert set(w) == set(h)
            for name in w:
                np.testing.assert_array_equal(cupy.asnumpy(h[name]), w[name], err_msg=f"{list_layout} {name}")


@pytest.mark.parametrize("list_layout,max_batch_size", [("padded", 4096), ("offsets", 0)])
def test_multi_hot_lookup_on_the_gpu_equals_the_host(tmp_path, list_layout, max_batch_size):
    cupy = pytest.importorskip("cupy")
    from embedding_cache import build_store
    from tritonrec.serving.lists import list_to_padded
    from tritonrec.serving.lookup_model import EmbeddingLookupModel
    from tritonrec.transform.plan import ListColumn

    rng = np.random.default_rng(0)
    store = build_store(tmp_path / "s", {t: (np.arange(5000), rng.normal(size=(5000, 16)).astype(np.float32)) for t in ("user", "tags")})
    kwargs = {"max_batch_size": max_batch_size, "multi_hot": {"tags": "sum"}, "list_layout": list_layout}
    requests = []
    for n in (1, 700, 3000):
        lengths = rng.integers(0, 9, n)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        values = rng.integers(0, 5000, int(offsets[-1]))
        request = {"ids": rng.integers(0, 5000, (n, 1))}
        if list_layout == "padded":
            request["tags__values"], request["tags__lengths"] = list_to_padded(ListColumn(values, offsets))
        else:
            request["tags__values"], request["tags__offsets"] = values, offsets.astype(np.int32)
        requests.append(request)
    with EmbeddingLookupModel.open(store, ["user", "tags"], **kwargs) as host:
        want = host.execute(requests)
    with EmbeddingLookupModel.open(store, ["user", "tags"], device=0, gpu_cache=GpuCacheOptions(1 << 20), **kwargs) as gpu:
        for _ in range(2):  # cold, then warm cache
            got = gpu.execute([{k: cupy.asarray(v) for k, v in r.items()} for r in requests])
            for w, g in zip(want, got):
                assert isinstance(g["embeddings"], cupy.ndarray)
                np.testing.assert_allclose(cupy.asnumpy(g["embeddings"]), w["embeddings"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["per-column", "packed"])
def test_string_columns_in_a_gpu_plan_are_hashed_on_the_host(layout):
    """A GPU plan with string columns beside numeric ones: the string group runs with numpy on the
    host and its codes move to the device; outputs equal the numpy plan's, in process and through
    the transform model (host string inputs beside device numeric ones)."""
    cupy = pytest.importorskip("cupy")
    from tritonrec import _native
    from tritonrec.serving.client import pack_request
    from tritonrec.serving.transform_model import TransformModel

    words = np.array([f"w{i}" for i in range(300)] + ["", "é", "日本"], dtype=object)
    keys = _native.hash_strings(words)[0].view(np.int64)
    table = KeyTable.build(np.zeros(keys.size, dtype=np.int64), keys, np.arange(3, 3 + keys.size, dtype=np.int64))
    vocab = np.arange(0, 900, 3, dtype=np.int64)
    ints = KeyTable.build(np.zeros(vocab.size, dtype=np.int64), vocab, np.arange(3, 3 + vocab.size, dtype=np.int64))
    plan = TransformPlan(
        [ColumnSpec("s", np.dtype(object)), ColumnSpec("c", np.dtype(np.int64)), ColumnSpec("x", np.dtype(np.float32))],
        [ColumnSpec("s", np.dtype(np.int64)), ColumnSpec("h", np.dtype(np.int32)), ColumnSpec("c", np.dtype(np.int64)), ColumnSpec("x", np.dtype(np.float32))],
        [
            PlanGroup(["s"], ["s"], np.dtype(object), [Categorify(table, [7], object, np.int64)]),
            PlanGroup(["s"], ["h"], np.dtype(object), [HashBucket([11])]),
            PlanGroup(["c"], ["c"], np.dtype(np.int64), [Categorify(ints, [0], np.int64, np.int64)]),
            PlanGroup(["x"], ["x"], np.dtype(np.float32), [LogOp()]),
        ],
        "23.08.00",
    )
    rng = np.random.default_rng(0)
    n = 5000
    columns = {
        "s": np.where(rng.random(n) < 0.7, words[rng.integers(0, words.size, n)], np.array([f"new{i}" for i in range(n)], dtype=object)).astype(object),
        "c": rng.integers(0, 1000, n),
        "x": rng.lognormal(0, 1, n).astype(np.float32),
    }
    expected = plan.transform(columns)
    gpu_plan = plan.to(cupy)
    got = gpu_plan.transform({"s": columns["s"], "c": cupy.asarray(columns["c"]), "x": cupy.asarray(columns["x"])})
    for name, want in expected.items():
        assert isinstance(got[name], cupy.ndarray), name
        np.testing.assert_allclose(cupy.asnumpy(got[name]), want, rtol=1e-6, err_msg=name)
    cpu_model, gpu_model = TransformModel(plan, layout, 8192), TransformModel(gpu_plan, layout, 8192)
    request = pack_request(cpu_model, columns)
    on_device = {k: v if v.dtype == object else cupy.asarray(v) for k, v in request.items()}
    want, have = cpu_model.execute([request, request]), gpu_model.execute([on_device, on_device])
    for w, h in zip(want, have):
        for name in w:
            np.testing.assert_allclose(cupy.asnumpy(h[name]), w[name], rtol=1e-6, err_msg=name)
        # the request log's out-of-vocabulary flags of a KIND_GPU transform: host arrays, as the host model's
        flags = gpu_model.oov_flags(h)
        assert isinstance(flags, np.ndarray) and gpu_model.oov_inputs == cpu_model.oov_inputs == ["s", "c"]
        np.testing.assert_array_equal(flags, cpu_model.oov_flags(w))
        np.testing.assert_array_equal(flags[:, 1], ~np.isin(columns["c"], vocab))
        assert 0 < flags[:, 0].sum() < n


def test_staged_crosses_on_the_gpu_equal_the_numpy_plan():
    """A HashedCross of a string column and Categorify codes (hidden per-column hashes, then XOR):
    the cupy plan (the string hashes made on the host) equals the numpy plan, by columns and packed."""
    cupy = pytest.importorskip("cupy")
    from tritonrec.transform.ops import IndexedHash, XorBuckets

    vocab = np.arange(0, 900, 3, dtype=np.int64)
    ints = KeyTable.build(np.zeros(vocab.size, dtype=np.int64), vocab, np.arange(3, 3 + vocab.size, dtype=np.int64))
    plan = TransformPlan(
        [ColumnSpec("s", np.dtype(object)), ColumnSpec("c", np.dtype(np.int64))],
        [ColumnSpec("s_X_c", np.dtype(np.int32)), ColumnSpec("c", np.dtype(np.int64))],
        [
            PlanGroup(["s"], ["s_X_c/hash0"], np.dtype(object), [IndexedHash()]),
            PlanGroup(["c"], ["s_X_c/hash1"], np.dtype(np.int64), [Categorify(ints, [0], np.int64, np.int64), IndexedHash()]),
            PlanGroup(["s_X_c/hash0", "s_X_c/hash1"], ["s_X_c"], np.dtype(np.uint64), [XorBuckets(97)]),
            PlanGroup(["c"], ["c"], np.dtype(np.int64), [Categorify(ints, [0], np.int64, np.int64)]),
        ],
        "23.08.00",
        hidden_schema=[ColumnSpec("s_X_c/hash0", np.dtype(np.uint64)), ColumnSpec("s_X_c/hash1", np.dtype(np.uint64))],
    )
    rng = np.random.default_rng(0)
    n = 20000
    columns = {"s": np.array([f"w{i}" for i in rng.integers(0, 80, n)], dtype=object), "c": rng.integers(0, 1000, n)}
    expected = plan.transform(columns)
    gpu_plan = plan.to(cupy)
    got = gpu_plan.transform({"s": columns["s"], "c": cupy.asarray(columns["c"])})
    for name, want in expected.items():
        np.testing.assert_array_equal(cupy.asnumpy(got[name]), want, err_msg=name)
    packed = gpu_plan.transform_packed({"object": columns["s"].reshape(-1, 1), "int64": cupy.asarray(columns["c"].reshape(-1, 1))})
    np.testing.assert_array_equal(cupy.asnumpy(packed["int32"][:, 0]), expected["s_X_c"])
    np.testing.assert_array_equal(cupy.asnumpy(packed["int64"][:, 0]), expected["c"])


@pytest.mark.parametrize("entries,load_factor", [(1, 0.25), (5000, 0.25), (200000, 0.25), (20000, 0.9)])
def test_the_device_probe_kernel_equals_the_host_lookup(entries, load_factor):
    """The cupy KeyTable lookup (one elementwise kernel) equals the host's, present and absent
    pairs alike, over several columns and long probe runs (a table filled to 0.9)."""
    cupy = pytest.importorskip("cupy")
    rng = np.random.default_rng(entries)
    columns = rng.integers(0, 5, entries)
    keys = rng.choice(2**62, size=entries, replace=False).astype(np.int64) - 2**61
    table = KeyTable.build(columns, keys, rng.integers(0, 2**31 - 1, entries), load_factor=load_factor)
    assert load_factor < 0.5 or table.max_probe > 3
    query = np.concatenate([keys, rng.integers(-(2**62), 2**62, entries)])
    block = np.stack([query, np.roll(query, 1), query[::-1], np.zeros_like(query), query], axis=1)  # column j of the block: table column j
    want = table.lookup_block(block)
    got = table.to(cupy).lookup_block(cupy.asarray(block))
    np.testing.assert_array_equal(cupy.asnumpy(got), want)
    assert (want >= 0).sum() >= entries // 5  # present pairs were looked up, not only absent ones


@pytest.mark.gpu
@pytest.mark.parametrize("multi_hot", [False, True])
def test_ids_absent_from_a_strict_table_fail_only_their_request_on_the_gpu(tmp_path, multi_hot):
    """On the device a strict table's lookup raises for the whole batch: the requests are then
    looked up one by one, so only the one holding the absent id fails, naming it; the others get
    the host's answer (also a batch of one bad request alone)."""
    cupy = pytest.importorskip("cupy")
    from embedding_cache import build_store
    from tritonrec.serving.lists import list_to_padded
    from tritonrec.serving.lookup_model import EmbeddingLookupModel
    from tritonrec.serving.requests import RequestError
    from tritonrec.transform.plan import ListColumn

    rng = np.random.default_rng(3)
    tables = {t: (np.arange(1000), rng.normal(size=(1000, 8)).astype(np.float32)) for t in ("user", "tags")}
    store = build_store(tmp_path / "s", tables, missing={"user": "error", "tags": "error"})
    kwargs = {"max_batch_size": 64, "multi_hot": {"tags": "mean"} if multi_hot else None}
    requests = []
    for n, bad in ((3, False), (2, True), (4, False)):
        request = {"ids": rng.integers(0, 1000, (n, 1 if multi_hot else 2))}
        if bad:
            request["ids"][1, 0] = 5000  # no tier holds it
        if multi_hot:
            lengths = rng.integers(1, 4, n)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            request["tags__values"], request["tags__lengths"] = list_to_padded(ListColumn(rng.integers(0, 1000, int(offsets[-1])), offsets))
        requests.append(request)
    names = ["user", "tags"]
    with EmbeddingLookupModel.open(store, names, **kwargs) as host:
        want = host.execute(requests)
    with EmbeddingLookupModel.open(store, names, device=0, gpu_cache=GpuCacheOptions(1 << 20), **kwargs) as gpu:
        for batch in (requests, requests[1:2]):
            got = gpu.execute([{k: cupy.asarray(v) for k, v in r.items()} for r in batch])
            expected = want if batch is requests else want[1:2]
            for w, g in zip(expected, got):
                if isinstance(w, RequestError):
                    assert isinstance(g, RequestError) and "5000" in str(g), g
                else:
                    np.testing.assert_allclose(cupy.asnumpy(g["embeddings"]), w["embeddings"], rtol=1e-6, atol=1e-6)
    assert isinstance(want[1], RequestError) and not isinstance(want[0], RequestError)
