"""A client written the way Merlin's Criteo inference client is (NVIDIA-Merlin/gcp-ml-ops,
``inference/criteo-inference-client.py``): 39 per-column inputs [B, 1], C1..C26 INT32, I1..I13
INT64, output ``OUTPUT0``, against a workflow fitted Merlin's way (Normalize without ``out_dtype``:
float64 dense features). The ensemble serves it with ``input_dtypes``, ``cast_float64`` and
``output_name``; answers equal the three models run in process, one row and a batch."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from embedding_cache import build_store
from tritonrec.export import export_ensemble, store_metadata
from tritonrec.pipeline.synthetic import CATEGORICAL, CONTINUOUS
from tritonrec.pipeline.workflow import fit_workflow
from tritonrec.scorer.artifact import ScorerInfo, save_scorer
from tritonrec.scorer.dlrm import DLRMDense
from tritonrec.transform import compile_workflow

DIM = 8


def _rows(n: int, seed: int) -> dict[str, np.ndarray]:
    """Criteo-shaped raw rows as Merlin's client has them: integer counts and int32 category ids."""
    rng = np.random.default_rng(seed)
    rows = {c: rng.integers(0, 200, n).astype(np.int64) for c in CONTINUOUS}
    rows.update({c: rng.integers(0, 3000, n).astype(np.int32) for c in CATEGORICAL})
    return rows


@pytest.fixture(scope="module")
def merlin_style(tmp_path_factory):
    import nvtabular as nvt
    from nvtabular import ops

    work = tmp_path_factory.mktemp("merlin")
    dense = CONTINUOUS >> ops.FillMissing() >> ops.Clip(min_value=0) >> ops.LogOp() >> ops.Normalize()  # float64 out
    workflow = nvt.Workflow(dense + (CATEGORICAL >> ops.Categorify()))
    fit = _rows(5000, 0)
    fit = {c: (v.astype(np.float32) if c in CONTINUOUS else v.astype(np.int64)) for c, v in fit.items()}  # the training data's dtypes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_workflow(workflow, fit, CONTINUOUS + CATEGORICAL, work / "workflow")
    plan = compile_workflow(work / "workflow")
    assert set(plan.packed_outputs) == {"float64", "int64"}
    sizes = store_metadata(plan)["table_sizes"]
    rng = np.random.default_rng(1)
    build_store(work / "store", {c: (np.arange(sizes[c]), rng.normal(size=(sizes[c], DIM))) for c in CATEGORICAL},
                metadata=store_metadata(plan))
    torch.manual_seed(0)
    save_scorer(work / "scorer", DLRMDense(len(CONTINUOUS), len(CATEGORICAL), DIM, [16], [16]).eval(),
                ScorerInfo(plan.fingerprint, tuple(CATEGORICAL), sizes, len(CONTINUOUS), DIM))
    return plan, work


def _in_process(plan, work, rows: dict[str, np.ndarray]) -> np.ndarray:
    """transform -> lookup -> scorer as three models in this process, on the plan's own dtypes."""
    from tritonrec.serving.lookup_model import EmbeddingLookupModel
    from tritonrec.serving.scorer_model import TorchScorerModel

    columns = {c.name: rows[c.name].astype(c.dtype) for c in plan.input_schema}
    out = plan.transform(columns)
    dense = np.stack([out[c] for c in plan.packed_outputs["float64"]], axis=1).astype(np.float32)
    ids = np.stack([out[c] for c in plan.packed_outputs["int64"]], axis=1)
    with EmbeddingLookupModel.open(work / "store", plan.packed_outputs["int64"]) as lookup:
        embeddings = lookup.execute([{"ids": ids}])[0]["embeddings"]
    scorer = TorchScorerModel(work / "scorer", "cpu")
    return scorer.execute([{"dense": dense, "embeddings": embeddings}])[0]["probability"].reshape(-1)


def test_export_refuses_float64_dense_outputs_naming_the_option(merlin_style, tmp_path):
    plan, work = merlin_style
    with pytest.raises(ValueError, match=r"float64: \['I1', .*or export with cast_float64=True \(--cast-float64\)"):
        export_ensemble(plan, work / "store", work / "scorer", tmp_path / "repo", "criteo")


def test_input_dtypes_that_lose_values_are_refused(merlin_style, tmp_path):
    plan, work = merlin_style
    with pytest.raises(ValueError, match=r"column 'C1' sent as float32 cannot become the plan's int64 without loss"):
        export_ensemble(plan, work / "store", work / "scorer", tmp_path / "r1", "m", layout="per-column", cast_float64=True,
                        input_dtypes={"C1": "float32"})
    with pytest.raises(ValueError, match=r"pattern 'X\*' matches no raw input column"):
        export_ensemble(plan, work / "store", work / "scorer", tmp_path / "r2", "m", layout="per-column", cast_float64=True,
                        input_dtypes={"X*": "int32"})
    with pytest.raises(ValueError, match=r"only for the per-column layout"):
        export_ensemble(plan, work / "store", work / "scorer", tmp_path / "r3", "m", layout="packed", cast_float64=True,
                        input_dtypes={"C1": "int32"})


@pytest.mark.triton
def test_merlins_criteo_client_is_served_unchanged(merlin_style, tmp_path, start_server):
    import tritonclient.grpc as grpcclient

    from tritonrec.cli import main

    plan, work = merlin_style
    repo = tmp_path / "repo"
    assert main(["export", str(work / "workflow"), str(repo), "--name", "criteo", "--layout", "per-column", "--store", str(work / "store"),
                 "--scorer", str(work / "scorer"), "--input-dtype", "C*=int32", "--input-dtype", "I*=int64", "--cast-float64",
                 "--output-name", "OUTPUT0"]) == 0
    rows = _rows(300, 5)
    want = _in_process(plan, work, rows)
    with start_server(repo) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        for batch in (slice(0, 1), slice(0, 300)):
            inputs = []
            for name in CONTINUOUS + CATEGORICAL:  # as the Merlin client builds its request
                data = rows[name][batch].reshape(-1, 1)
                tensor = grpcclient.InferInput(name, list(data.shape), "INT64" if name in CONTINUOUS else "INT32")
                tensor.set_data_from_numpy(data)
                inputs.append(tensor)
            result = client.infer("criteo", inputs, outputs=[grpcclient.InferRequestedOutput("OUTPUT0")])
            np.testing.assert_allclose(result.as_numpy("OUTPUT0").reshape(-1), want[batch], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n", [0, 1, 2, 50])
@pytest.mark.parametrize("layout", ["per-column", "packed"])
def test_cast_float64_packs_every_float_output_as_float32_in_output_order(merlin_style, layout, n):
    from tritonrec.serving.client import pack_request
    from tritonrec.serving.transform_model import TransformModel

    plan, _ = merlin_style
    rows = _rows(n, 7)
    columns = {c.name: rows[c.name].astype(c.dtype) for c in plan.input_schema}
    model = TransformModel(plan, layout, 0, "packed", cast_float64=True)
    assert [s.name for s in model.outputs] == ["OUTPUT_INT64", "OUTPUT_FP32"] and model.outputs[1].dims == (len(CONTINUOUS),)
    got = model.execute([pack_request(model, columns)])[0]
    want = plan.transform(columns)
    floats = [c.name for c in plan.output_schema if c.dtype.kind == "f"]
    assert got["OUTPUT_FP32"].dtype == np.float32
    np.testing.assert_array_equal(got["OUTPUT_FP32"], np.stack([want[c] for c in floats], axis=1).astype(np.float32).reshape(n, len(floats)))
    np.testing.assert_array_equal(got["OUTPUT_INT64"], np.stack([want[c] for c in plan.packed_outputs["int64"]], axis=1).reshape(n, len(CATEGORICAL)))
