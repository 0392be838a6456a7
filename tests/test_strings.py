"""String columns: Categorify on str inputs equals nvtabular's own Workflow.transform (CPU), with
vocabularies, frequency thresholds, hash buckets (pandas' SipHash of the UTF-8 bytes and the row's
position), nulls, empty and unseen strings; bad strings get named errors."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tritonrec import _native
from tritonrec.pipeline.workflow import fit_workflow, nvtabular_transform
from tritonrec.transform import TransformPlan, compile_workflow
from tritonrec.transform.parity import compare

WORDS = np.array([f"item-{i}" for i in range(400)] + ["", "ünïcødé ✓", "日本語", "a" * 300, "NaN", "None"], dtype=object)


def _fit_values(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = WORDS[np.minimum(rng.zipf(1.3, size=n) - 1, WORDS.size - 1)].copy()
    values[rng.random(n) < 0.1] = None
    return values


@pytest.fixture(scope="module")
def strings(tmp_path_factory):
    import nvtabular as nvt
    from nvtabular import ops

    out = tmp_path_factory.mktemp("strings")
    graph = (
        (["s1"] >> ops.Categorify())
        + (["s2"] >> ops.Categorify(freq_threshold=3))
        + (["s3"] >> ops.Categorify(num_buckets=11, freq_threshold=2))
        + (["s4"] >> ops.Categorify(max_size=30, dtype=np.int32))
        + (["s5"] >> ops.HashBucket(13))
        + (["s1", "s2"] >> ops.HashedCross(17))
        + (["n1"] >> ops.Categorify())
    )
    fit = {f"s{j}": _fit_values(4000, j) for j in range(1, 6)}
    fit["n1"] = np.random.default_rng(9).integers(0, 50, size=4000).astype(np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workflow = fit_workflow(nvt.Workflow(graph), fit, list(fit), out)
    plan = compile_workflow(out)
    plan.save(out / "plan")
    return {"workflow": workflow, "plan": TransformPlan.load(out / "plan"), "fit": fit}


def _batch(n: int, seed: int, known: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for j in range(1, 6):
        seen = WORDS[rng.integers(0, WORDS.size, size=n)]
        unseen = np.array([f"new-{v}" for v in rng.integers(0, 10**9, size=n)], dtype=object)
        pick = rng.random(n)
        values = np.where(pick < known, seen, unseen).astype(object)
        values[pick > 0.95] = None
        values[(pick > 0.9) & (pick <= 0.95)] = ""
        out[f"s{j}"] = values
    out["n1"] = rng.integers(-5, 60, size=n).astype(np.int64)
    return out


def test_string_columns_compile_with_an_object_schema(strings):
    plan = strings["plan"]
    dtypes = {c.name: c.dtype for c in plan.input_schema}
    assert all(dtypes[f"s{j}"] == np.dtype(object) for j in range(1, 6)) and dtypes["n1"] == np.dtype(np.int64)
    out = {c.name: c.dtype.name for c in plan.output_schema}
    assert out["s1"] == "int64" and out["s4"] == out["s5"] == "int32"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 3000), seed=st.integers(0, 2**32 - 1), known=st.floats(0.0, 1.0))
def test_string_parity(strings, n, seed, known):
    columns = _batch(n, seed, known)
    # NVTabular fails on a batch whose column is all null: a guard row at the end keeps it going
    guard = {c: np.array(["item-0"], dtype=object) if c.startswith("s") else np.array([1], dtype=np.int64) for c in columns}
    padded = {c: np.concatenate([v, guard[c]]) for c, v in columns.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = {c: v[:n] for c, v in nvtabular_transform(strings["workflow"], padded).items()}
    got = strings["plan"].transform(columns)
    report = compare(expected, got)
    assert report.ok, report.summary()


def test_bytes_inputs_are_read_as_utf8(strings):
    columns = _batch(50, 1, 0.7)
    as_bytes = {c: (np.array([None if v is None else v.encode() for v in a], dtype=object) if c.startswith("s") else a) for c, a in columns.items()}
    got_str, got_bytes = strings["plan"].transform(columns), strings["plan"].transform(as_bytes)
    for c in got_str:
        np.testing.assert_array_equal(got_bytes[c], got_str[c])


@pytest.mark.parametrize("n", [1, 2, 200])
@pytest.mark.parametrize("layout", ["per-column", "packed"])
@pytest.mark.parametrize("marker", ["", "<NA>"])
def test_a_declared_null_string_is_served_as_nvtabulars_null(strings, layout, marker, n):
    """Triton's BYTES cannot carry a null: a model exported with null_string reads that value as
    null (NVTabular's code 1, its null hash bucket); without it the value is an ordinary string."""
    from tritonrec.serving.client import pack_request, unpack_response
    from tritonrec.serving.transform_model import TransformModel

    plan = strings["plan"]
    columns = _batch(n, 3, 0.6)
    expected = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        guard = {c: np.array(["item-0"], dtype=object) if c.startswith("s") else np.array([1], dtype=np.int64) for c in columns}
        expected = nvtabular_transform(strings["workflow"], {c: np.concatenate([v, guard[c]]) for c, v in columns.items()})
    sent = {c: (np.array([marker.encode() if v is None else v.encode() for v in a], dtype=object) if c.startswith("s") and marker
                else np.array([marker if v is None else v for v in a], dtype=object) if c.startswith("s") else a)
            for c, a in columns.items()}
    if marker == "":  # "" is also a value of the batch: it becomes null too, as it would in NVTabular only if sent as null
        expected = nvtabular_transform(strings["workflow"], {c: np.concatenate([np.where(v == "", None, v) if c.startswith("s") else v,
                                                                               guard[c]]) for c, v in columns.items()})
    marked = TransformModel(plan, layout, 0, null_string=marker)
    got = unpack_response(marked, marked.execute([pack_request(marked, sent)])[0])
    report = compare({c: v[:n] for c, v in expected.items()}, got)
    assert report.ok, report.summary()
    plain = TransformModel(plan, layout, 0)
    unmarked = unpack_response(plain, plain.execute([pack_request(plain, sent)])[0])
    nulls = np.array([v is None for v in columns["s1"]], dtype=bool)
    assert (unmarked["s1"][nulls] == 2).all() and (got["s1"][nulls] == 1).all()  # OOV without the marker, null with it
    with pytest.raises(ValueError, match="null_string 3: expected a string"):
        TransformModel(plan, layout, 0, null_string=3)


def test_bad_strings_are_refused_by_name(strings):
    columns = _batch(4, 2, 0.5)
    columns["s2"] = np.array(["ok", b"\xff\xfe", None, "x"], dtype=object)
    with pytest.raises(ValueError, match=r"input column 's2', row 1: bytes that are not valid UTF-8"):
        strings["plan"].transform(columns)
    columns["s2"] = np.array(["ok", "y", None, 3], dtype=object)
    with pytest.raises(ValueError, match=r"input column 's2', row 3: expected str, bytes or None, got int"):
        strings["plan"].transform(columns)


def test_string_hash_is_pandas_hash():
    values = np.array(["", "a", "ünïcødé ✓", "x" * 1000, None, "12345678", "1234567"], dtype=object)
    hashes, nulls = _native.hash_strings(values)
    np.testing.assert_array_equal(hashes, pd.util.hash_array(values))
    assert nulls.tolist() == [0, 0, 0, 0, 1, 0, 0]


def test_a_request_with_a_bad_string_fails_alone(strings):
    from tritonrec.serving.requests import RequestError
    from tritonrec.serving.transform_model import TransformModel

    model = TransformModel(strings["plan"], "per-column")
    good = {c: v.reshape(-1, 1) for c, v in _batch(20, 3, 0.8).items()}
    bad = {c: v.copy() for c, v in good.items()}
    bad["s3"][7, 0] = b"\xc3\x28"  # an invalid 2-byte sequence
    results = model.execute([good, bad, good])
    assert isinstance(results[1], RequestError) and "input column 's3', row 7: bytes that are not valid UTF-8" in str(results[1])
    expected = strings["plan"].transform({c: v.reshape(-1) for c, v in good.items()})
    for i in (0, 2):
        for c in expected:
            np.testing.assert_array_equal(results[i][c].reshape(-1), expected[c])


@pytest.mark.triton
def test_strings_through_tritonserver(strings, tmp_path, start_server):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from tritonrec.serving.client import infer
    from tritonrec.export import export_transform

    plan = strings["plan"]
    export_transform(plan, tmp_path, "strings", layout="per-column", max_batch_size=4096)
    config = (tmp_path / "strings" / "config.pbtxt").read_text()
    assert 'name: "s1", data_type: TYPE_STRING' in config
    outputs = [c.name for c in plan.output_schema]
    with start_server(tmp_path) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        for seed in range(3):
            columns = _batch(300, seed, 0.7)
            for c in columns:  # Triton's BYTES carry no null: a client sends "" or a value
                if c.startswith("s"):
                    columns[c] = np.array(["" if v is None else v for v in columns[c]], dtype=object)
            sent = {c: (np.array([v.encode() for v in a], dtype=object) if a.dtype == object else a).reshape(-1, 1) for c, a in columns.items()}
            got = infer(client, "strings", sent, outputs)
            expected = plan.transform(columns)
            for c in outputs:
                np.testing.assert_array_equal(got[c].reshape(-1), expected[c], err_msg=c)
        bad = {c: v.copy() for c, v in sent.items()}
        bad["s2"][5, 0] = b"\xff"
        with pytest.raises(InferenceServerException, match=r"input column 's2', row 5: bytes that are not valid UTF-8"):
            infer(client, "strings", bad, outputs)
        again = infer(client, "strings", sent, outputs)  # the server serves on
        np.testing.assert_array_equal(again["s1"].reshape(-1), expected["s1"])
