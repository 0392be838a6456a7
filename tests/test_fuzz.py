"""Bad input, as a suite: a few hundred random requests over the ensemble and each of its models
(random dtypes, shapes, names, values, empty and oversized batches, truncated bodies over gRPC and
HTTP) through a real tritonserver: a named error or the in-process answer, never a crash or a hang,
and a valid request right after each one gets the same answer as before
(see :mod:`tritonrec.serving.fuzz`; `benchmarks/bench_robustness.py` runs 10,000)."""

from __future__ import annotations

import pytest

from tritonrec.export import export_ensemble
from tritonrec.serving.fuzz import GRPC_CASES, HTTP_CASES, Fuzzer, ensemble_targets
from tritonrec.pipeline.synthetic import CATEGORICAL, CONTINUOUS

pytestmark = pytest.mark.triton


def test_random_bad_requests_get_a_named_error_or_the_reference_answer(criteo_trained, tmp_path, start_server):
    pipeline = criteo_trained["pipeline"]
    repo = tmp_path / "repo"
    export_ensemble(pipeline.workflow_dir, pipeline.store_dir, pipeline.scorer_dir, repo, "criteo", max_batch_size=32)
    columns = {c: criteo_trained["held_out"][c] for c in CONTINUOUS + CATEGORICAL}
    targets = ensemble_targets(repo, "criteo", columns)
    with start_server(repo, admin_key="fuzz-admin-key-0123456789") as server:
        fuzzer = Fuzzer(server.grpc_url, targets, http_url=server.http_url, alive=server.is_running, seed=7, timeout_s=30)
        try:
            report = fuzzer.run(600)
        finally:
            fuzzer.close()
        assert server.is_running()
    assert report.ok, report.summary()
    # every kind of case ran, and the good ones were answered, not refused
    assert set(report.sent) == set(GRPC_CASES) | set(HTTP_CASES), report.sent
    assert report.answered["valid"] == report.sent["valid"] > 0
    assert report.answered["http_valid"] == report.sent["http_valid"] > 0
    assert report.refused["special_values"] > 0 and report.answered["special_values"] > 0
    assert sum(report.sent.values()) == 600 and report.probes == 600 + len(targets)
