"""Canary requests: a model that hangs, answers NaN or changes its answer is reported although
Triton still calls it READY (`tritonrec serve --check`, the supervisor's log and metrics)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tritonrec.serving.canary import canary_inputs, check_outputs, same_answer

TRITONREC = str(Path(sys.executable).parent / "tritonrec")

MODEL = '''
import time
import numpy as np
import triton_python_backend_utils as pb_utils
from tritonrec.serving.tensors import input_array, output_tensor

class TritonPythonModel:
    def initialize(self, args):
        self.calls = 0

    def execute(self, requests):
        out = []
        for request in requests:
            x = input_array(pb_utils.get_input_tensor_by_name(request, "x"))
            self.calls += 1
            y = {body}
            out.append(pb_utils.InferenceResponse([output_tensor(pb_utils, "y", np.array(y, dtype=np.float32))]))
        return out
'''
BODIES = {
    "double": "x * 2",
    "hang": "time.sleep(20) or x",
    "nan": "x * np.nan",
    "drift": "x + self.calls",
    "opted_out": "x * np.nan",
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    path = tmp_path_factory.mktemp("canary")
    for name, body in BODIES.items():
        (path / name / "1").mkdir(parents=True)
        (path / name / "1" / "model.py").write_text(MODEL.replace("{body}", body))
        (path / name / "config.pbtxt").write_text(textwrap.dedent(f'''
            name: "{name}"
            backend: "python"
            max_batch_size: 8
            input [ {{ name: "x", data_type: TYPE_FP32, dims: [ 3 ] }} ]
            output [ {{ name: "y", data_type: TYPE_FP32, dims: [ 3 ] }} ]
        ''') + ('parameters { key: "tritonrec_canary" value: { string_value: "off" } }\n' if name == "opted_out" else ""))
    return path


def test_canary_inputs_fill_one_row_of_every_input():
    config = {
        "max_batch_size": 16,
        "input": [
            {"name": "INPUT_INT64", "data_type": "TYPE_INT64", "dims": ["26"]},
            {"name": "city", "data_type": "TYPE_STRING", "dims": ["1"]},
            {"name": "tags__values", "data_type": "TYPE_INT64", "dims": ["-1"]},
            {"name": "tags__lengths", "data_type": "TYPE_INT32", "dims": ["1"]},
        ],
    }
    inputs = canary_inputs(config)
    assert inputs["INPUT_INT64"].shape == (1, 26) and inputs["INPUT_INT64"].dtype == np.int64 and not inputs["INPUT_INT64"].any()
    assert inputs["city"].dtype == object and inputs["city"].tolist() == [[b""]]
    assert inputs["tags__values"].shape == (1, 1) and inputs["tags__lengths"].tolist() == [[1]]
    flat = canary_inputs({"max_batch_size": 0, "input": [
        {"name": "tags__values", "data_type": "TYPE_INT64", "dims": [-1]},
        {"name": "tags__offsets", "data_type": "TYPE_INT32", "dims": [-1]},
    ]})
    assert flat["tags__values"].tolist() == [0] and flat["tags__offsets"].tolist() == [0, 1]
    assert flat["tags__offsets"].dtype == np.int32


def test_check_outputs_and_same_answer():
    config = {"max_batch_size": 4, "output": [{"name": "p", "data_type": "TYPE_FP32", "dims": [1]}]}
    good = {"p": np.array([[0.25]], np.float32)}
    assert check_outputs(config, good) is None
    assert check_outputs(config, {}) == "output 'p' is missing"
    assert "is float64" in check_outputs(config, {"p": np.array([[0.25]])})
    assert "has shape [1, 2]" in check_outputs(config, {"p": np.zeros((1, 2), np.float32)})
    assert check_outputs(config, {"p": np.array([[np.inf]], np.float32)}) == "output 'p' holds inf"
    assert same_answer(good, {"p": np.array([[0.25 + 1e-7]], np.float32)}) is None
    assert "changed since the first canary" in same_answer(good, {"p": np.array([[0.5]], np.float32)})
    assert "changed since" in same_answer({"c": np.array([[3]])}, {"c": np.array([[4]])})


@pytest.mark.triton
def test_serve_check_names_each_model_that_fails_its_canary(repo):
    result = subprocess.run([TRITONREC, "serve", str(repo), "--check", "--canary-timeout", "2"],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "canary double: ok" in result.stdout and "canary drift: ok" in result.stdout
    assert "canary hang: FAILED: no answer within 2 s" in result.stderr
    assert "canary nan: FAILED: output 'y' holds nan" in result.stderr
    assert "opted_out" not in result.stdout + result.stderr


@pytest.mark.triton
def test_supervisor_reports_a_changed_answer_and_counts_failures(repo, tmp_path):
    from tritonrec.serving.canary import CanaryProber
    from tritonrec.serving.server import TritonServer
    from tritonrec.serving.supervise import Supervisor, SupervisorMetrics, SupervisorOptions

    lines: list[str] = []
    healthy = tmp_path / "repo"
    for name in ("double", "drift"):
        import shutil

        shutil.copytree(repo / name, healthy / name)
    with TritonServer(healthy, http=False, admin_key="an-admin-key-of-20-chars") as server:
        metrics = SupervisorMetrics()
        supervisor = Supervisor(server, SupervisorOptions(canary_interval_s=0), metrics, warn=lines.append, say=lines.append)
        prober = CanaryProber(server.grpc_url, 5.0, server.admin_headers())
        try:
            assert all(r.ok for r in supervisor.canary_round(prober))
            second = {r.model: r for r in supervisor.canary_round(prober)}
            supervisor.canary_round(prober)
        finally:
            prober.close()
    assert second["double"].ok and not second["drift"].ok
    assert "changed since the first canary (largest difference 1.0)" in second["drift"].reason
    assert lines == [f"canary of model 'drift' FAILED: {second['drift'].reason}"]  # logged once, not every round
    sample = metrics.registry.get_sample_value
    assert sample("tritonrec_canary_failures_total", {"model": "drift"}) == 2
    assert sample("tritonrec_canary_failures_total", {"model": "double"}) == 0
    assert sample("tritonrec_canary_requests_total", {"model": "double"}) == 3
    assert sample("tritonrec_canary_ok", {"model": "drift"}) == 0
    assert supervisor.failing_models().keys() == {"drift"}
