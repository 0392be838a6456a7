"""The serving core: everything Triton-facing, tested without Triton.

The Python-based backends (``backends/<name>/model.py``) are thin adapters over this package and
import nothing else of tritonrec. Beneath it: :mod:`tritonrec.transform` (the compiled plan) and
:mod:`embedding_cache` (the store), which know nothing of Triton.

- served models: :mod:`~tritonrec.serving.transform_model`, :mod:`~tritonrec.serving.lookup_model`,
  :mod:`~tritonrec.serving.scorer_model`
- requests and tensors: :mod:`~tritonrec.serving.requests` (``RequestError``, ``run_batched``: how every served model runs a batch of requests),
  :mod:`~tritonrec.serving.specs` (``TensorSpec``), :mod:`~tritonrec.serving.lists` (list-column
  layouts), :mod:`~tritonrec.serving.tensors` (DLPack in and out, ``respond``),
  :mod:`~tritonrec.serving.dtypes` (numpy <-> Triton type names)
- models' configuration: :mod:`~tritonrec.serving.config`, :mod:`~tritonrec.serving.fingerprint`,
  :mod:`~tritonrec.serving.metrics` (custom Triton metrics)
- the server: :mod:`~tritonrec.serving.server` (find, prepare, run tritonserver),
  :mod:`~tritonrec.serving.supervise` and :mod:`~tritonrec.serving.canary`
- clients: :mod:`~tritonrec.serving.client`, :mod:`~tritonrec.serving.query`,
  :mod:`~tritonrec.serving.fuzz`

This file imports nothing, so that any of these modules can be imported alone.
"""
