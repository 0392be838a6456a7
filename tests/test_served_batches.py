"""The same rows give the same answer alone and inside any batch, through a real tritonserver.

The ensemble is exported the way the demo serves it, through the CLI: a store whose rows live in
RocksDB with a small host budget (so most lookups read through to disk: the tier whose one-row
lookups once returned zero rows) and two instances of every step (so two lookup instances share
the store, as RocksDB secondaries). Every row is compared with the offline model too.

Embeddings are compared exactly. Probabilities agree within float32 rounding (1e-6): the scorer's
matrix products run other CPU kernels at other batch shapes (seen: 2e-7 between batch 1 and 96).
"""

from __future__ import annotations

import concurrent.futures
import re
import shutil

import numpy as np
import pytest

from embedding_cache import read_store_info
from tritonrec.cli import main
from tritonrec.serving.client import infer
from tritonrec.pipeline.synthetic import CATEGORICAL, CONTINUOUS
from tritonrec.serving.client import pack_request
from tritonrec.serving.transform_model import TransformModel

pytestmark = pytest.mark.triton
ROWS = 96
ROUNDING = 1e-6  # float32 GEMMs of other shapes


@pytest.fixture(scope="module")
def served(criteo_trained, criteo_persistent_store, tmp_path_factory, start_server):
    import tritonclient.grpc as grpcclient

    pipeline = criteo_trained["pipeline"]
    work = tmp_path_factory.mktemp("batches")
    store = criteo_persistent_store
    raw_bytes = sum(t.rows * t.dim * 4 for t in read_store_info(store)[1])
    repo = work / "repo"
    assert main([
        "export", str(pipeline.workflow_dir), str(repo), "--name", "criteo", "--store", str(store), "--scorer", str(pipeline.scorer_dir),
        "--instances", "2", "--max-batch-size", "128", "--host-budget-bytes", str(raw_bytes // 20),
    ]) == 0
    # a copy of the lookup (with its own copy of the store) whose first instance is the store's writer
    shutil.copytree(repo / "criteo_embeddings", repo / "writer")
    config = repo / "writer" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "criteo_embeddings"', 'name: "writer"').replace(
        'key: "store_role" value: { string_value: "secondary" }', 'key: "store_role" value: { string_value: "primary" }'))
    with start_server(repo) as server:
        yield {"client": grpcclient.InferenceServerClient(server.grpc_url), "server": server}


def _tensors(criteo_trained, rows):
    model = TransformModel(criteo_trained["pipeline"].plan, "packed")
    columns = {c: criteo_trained["held_out"][c][rows] for c in CONTINUOUS + CATEGORICAL}
    return pack_request(model, columns)


def test_two_instances_share_the_persistent_store(served):
    log = served["server"].log()
    opened = re.findall(r"model 'criteo_embeddings' instance '[^']+': store \S+ opened as (\w+), (\d+) bytes verified", log)
    assert [role for role, _ in opened] == ["secondary", "secondary"], opened
    assert all(int(verified) > 0 for _, verified in opened)
    # store_role "primary": the model's first instance writes, its second reads beside it
    opened = dict(re.findall(r"model 'writer' instance '([^']+)': store \S+ opened as (\w+)", log))
    assert sorted(opened.values()) == ["primary", "secondary"], opened
    assert opened["writer_0_0"] == "primary"
    ids = np.zeros((3, 26), np.int64)
    np.testing.assert_array_equal(infer(served["client"], "writer", {"ids": ids}, ["embeddings"])["embeddings"],
                                  infer(served["client"], "criteo_embeddings", {"ids": ids}, ["embeddings"])["embeddings"])


def test_each_row_alone_equals_the_same_row_in_batches(served, criteo_trained):
    client = served["client"]
    rows = np.arange(ROWS)
    expected = criteo_trained["expected"][:ROWS]
    alone = np.concatenate([infer(client, "criteo", _tensors(criteo_trained, rows[i : i + 1]), ["probability"])["probability"]
                            for i in rows])
    np.testing.assert_allclose(alone.reshape(-1), expected, atol=1e-5, rtol=0)  # the offline model
    for size in (2, 7, ROWS):
        batched = np.concatenate([infer(client, "criteo", _tensors(criteo_trained, rows[i : i + size]), ["probability"])["probability"]
                                  for i in range(0, ROWS, size)])
        np.testing.assert_allclose(batched, alone, atol=ROUNDING, rtol=0, err_msg=f"batches of {size}")
    # single rows sent at once, merged by Triton's dynamic batcher with each other
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        merged = list(pool.map(lambda i: infer(client, "criteo", _tensors(criteo_trained, rows[i : i + 1]), ["probability"])["probability"], rows))
    np.testing.assert_allclose(np.concatenate(merged), alone, atol=ROUNDING, rtol=0)


def test_each_lookup_alone_equals_the_same_ids_in_a_batch(served, criteo_trained):
    """The embeddings are exact: a row's vectors are the store's, at any batch size."""
    client = served["client"]
    ids = criteo_trained["ids"][:ROWS]
    weights = criteo_trained["pipeline"].model.table_weights()
    reference = np.stack([weights[j][ids[:, j]] for j in range(ids.shape[1])], axis=1)
    alone = np.concatenate([infer(client, "criteo_embeddings", {"ids": ids[i : i + 1]}, ["embeddings"])["embeddings"] for i in range(ROWS)])
    np.testing.assert_array_equal(alone, reference)
    np.testing.assert_array_equal(infer(client, "criteo_embeddings", {"ids": ids}, ["embeddings"])["embeddings"], reference)
