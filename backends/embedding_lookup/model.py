"""Triton Python-based backend "embedding_lookup": ids [batch, n_tables] INT64 -> embeddings
[batch, n_tables, dim] FP32 from an ``embedding_cache`` store.

Parameters (config.pbtxt): ``store`` (store directory; relative paths are inside the version
directory; default ``store``; it must resolve inside the model repository unless
``allow_outside_repository`` is ``"true"``), ``tables`` (comma-separated table names, one per ids column),
``missing_key_policy`` (``store``: each table's own, ``zeros`` or ``error``), ``host_budget_bytes``
(host memory for a store with a RocksDB tier; empty: every row in memory), ``threads`` (lookup
threads; default all cores), ``plan_fingerprint`` (when set, the store must record it),
``store_role`` (``secondary``: every instance opens a RocksDB tier read-only, so any number of
instances and models share one store; ``primary``: the model's first instance is its one writer;
see :func:`tritonrec.serving.config.store_role`). Every file of the store is verified against its
checksum at load. Metrics:
``tritonrec_embedding_lookups_total``, ``tritonrec_embedding_misses_total``,
``tritonrec_embedding_lookup_duration_us``. KIND_GPU instances put a GPU cache on their device ahead
of the store (parameters ``gpu_cache_bytes``, required there, ``gpu_eviction`` ``lru``/``lfu``,
``gpu_admission`` ``true``/``false``, ``gpu_cache_dtype`` ``float32``/``float16``/``bfloat16``,
``gpu_async_insert`` ``true``/``false``), look all tables up in one call, and take and return tensors in device memory (inputs that
arrive in host memory are copied over). ``multi_hot`` (``table:sum,table:mean``) makes tables
multi-hot: they take ``<table>__values`` + ``<table>__lengths`` (padded, when Triton batches) or
``<table>__offsets`` (flat, ``max_batch_size: 0``) instead of a column of ``ids``, and their output
slot is the sum or mean of the rows' vectors. All logic is in
:class:`tritonrec.serving.lookup_model.EmbeddingLookupModel`.
"""

from __future__ import annotations

import json
import time

import triton_python_backend_utils as pb_utils

from tritonrec.serving.config import check_declared_tensors, model_path
from tritonrec.serving.lookup_model import LOAD_ERRORS, EmbeddingLookupModel
from tritonrec.serving.metrics import LookupMetrics
from tritonrec.serving.tensors import device_input_array, device_output_tensor, input_array, output_tensor, respond


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        name = args["model_name"]
        self.gpu = args["model_instance_kind"] == "GPU"
        device = int(args["model_instance_device_id"]) if self.gpu else None
        try:
            store_dir = model_path(args, config, "store")
            self.model = EmbeddingLookupModel.from_config(config, store_dir, device=device, instance_name=args["model_instance_name"])
            tables = self.model.tables
            check_declared_tensors(config, "input", self.model.inputs, f"the store ({len(tables)} tables of dim {self.model.dim})")
            check_declared_tensors(config, "output", self.model.outputs, f"the store ({len(tables)} tables of dim {self.model.dim})")
        except LOAD_ERRORS as e:
            raise pb_utils.TritonModelException(f"model '{name}': {e}") from None
        store = self.model.store
        pb_utils.Logger.log_info(
            f"model '{name}' instance '{args['model_instance_name']}': store {store.path} opened as {store.role}, "
            f"{store.verified_bytes} bytes verified in {store.verify_seconds:.3f} s"
        )
        self.metrics = LookupMetrics(pb_utils, name, self.model.take_counter_deltas)

    def execute(self, requests):
        t0 = time.perf_counter()
        if self.gpu:
            responses = respond(
                pb_utils, requests, self.model.execute, device_input_array,
                lambda result: [device_output_tensor(pb_utils, "embeddings", result["embeddings"])], "embedding lookup",
            )
        else:
            responses = respond(
                pb_utils, requests, self.model.execute, input_array,
                lambda result: [output_tensor(pb_utils, "embeddings", result["embeddings"])], "embedding lookup",
            )
        self.metrics.observe_duration((time.perf_counter() - t0) * 1e6)
        return responses

    def finalize(self):
        self.metrics.close()
        self.model.close()

