"""Finding, preparing and starting tritonserver; the `tritonrec serve` and `export-transform` CLIs."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tritonrec.export import export_transform
from tritonrec.serving.server import ServerError, TritonServer, find_tritonserver, prepare_backend_directory, project_backends

pytestmark = pytest.mark.triton
TRITONREC = str(Path(sys.executable).parent / "tritonrec")


@pytest.fixture(scope="module")
def repo(criteo_small, tmp_path_factory):
    path = tmp_path_factory.mktemp("serve_repo")
    export_transform(criteo_small["dir"], path, "criteo", layout="packed")
    return path


def test_bundled_server_is_found_and_prepared():
    install = find_tritonserver()
    assert install.binary.is_file() and os.access(install.binary, os.X_OK)
    backend_dir = prepare_backend_directory(install)
    assert (backend_dir / "python" / "triton_python_backend_stub").is_file()
    assert "nvtabular_transform" in project_backends()
    assert (backend_dir / "nvtabular_transform" / "model.py").is_file()


def test_explicit_path_must_be_executable(tmp_path):
    fake = tmp_path / "tritonserver"
    fake.write_text("not a program")
    with pytest.raises(ServerError, match="not an executable file"):
        find_tritonserver(fake)


def test_taken_port_is_reported(repo):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ServerError, match=rf"--http-port {port}: port is taken"):
            TritonServer(repo, http_port=port)


def test_each_endpoint_gets_a_port_of_its_own(repo):
    """Ports left to choose are distinct and miss the given ones (three free_port calls could return
    one port twice, and tritonserver then refuses to start: seen in CI); one port given for two
    endpoints is refused naming both; the server's own line says why when it refuses anyway."""
    from tritonrec.serving.server import free_ports, summarize_failure

    for _ in range(50):
        ports = free_ports(3, exclude=[40_000])
        assert len(set(ports)) == 3 and 40_000 not in ports
    assert free_ports(0) == []
    server = TritonServer(repo, grpc_port=ports[0])
    assert len({server.http_port, server.grpc_port, server.metrics_port}) == 3 and server.grpc_port == ports[0]
    with pytest.raises(ServerError, match=rf"--grpc-port {ports[1]}: the same port as --http-port"):
        TritonServer(repo, http_port=ports[1], grpc_port=ports[1])
    log = ("  --load-model <string>\n\tSpecifying this argument will result in error. Note that this option will only\n"
           "The server cannot listen to HTTP requests and GRPC requests at the same address and port 127.0.0.1:43999\n")
    assert summarize_failure(log) == ("port in use: The server cannot listen to HTTP requests and GRPC requests at the same "
                                      "address and port 127.0.0.1:43999")


def test_failing_model_is_reported_in_one_line(repo, tmp_path):
    bad = tmp_path / "bad_repo"
    shutil.copytree(repo, bad)
    (bad / "criteo" / "1" / "plan" / "manifest.json").write_text("{broken")
    with pytest.raises(ServerError) as error:
        TritonServer(bad).start(timeout_s=60)
    message = str(error.value)
    assert "model 'criteo' failed to load" in message and "manifest.json: damaged manifest" in message
    assert "\n" not in message


def test_config_that_disagrees_with_the_plan_is_refused_at_load(repo, tmp_path):
    bad = tmp_path / "bad_repo"
    shutil.copytree(repo, bad)
    config = bad / "criteo" / "config.pbtxt"
    config.write_text(config.read_text().replace("dims: [ 26 ]", "dims: [ 25 ]"))
    with pytest.raises(ServerError, match=r"input 'INPUT_INT64' is TYPE_INT64 \[25\] in config.pbtxt; the plan .*needs TYPE_INT64 \[26\]"):
        TritonServer(bad).start(timeout_s=60)


def test_missing_repository(tmp_path):
    with pytest.raises(ServerError, match="is not a directory"):
        TritonServer(tmp_path / "nowhere").start()


def _cli_serve(repo, *extra):
    """Starts ``tritonrec serve repo [extra]``; returns (process, HTTP address) once it says it is ready."""
    process = subprocess.Popen([TRITONREC, "serve", str(repo), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Ctrl-C"):
            break
    return process, next(line.split()[-1] for line in lines if line.strip().startswith("HTTP"))


def test_cli_serve_runs_until_sigterm(repo):
    process = None
    try:
        process, http = _cli_serve(repo, "--http")
        with urllib.request.urlopen(f"http://{http}/v2/models/criteo/ready", timeout=5) as response:
            assert response.status == 200
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert "tritonserver stopped" in out
    finally:
        if process is not None and process.poll() is None:
            process.kill()


def test_cli_serve_passes_tritonserver_options_after_a_double_dash(repo):
    """Options after ``--`` reach tritonserver: in explicit model control nothing is loaded at start."""
    process = None
    try:
        process, http = _cli_serve(repo, "--http", "--", "--model-control-mode=explicit")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://{http}/v2/models/criteo/ready", timeout=5)
        assert e.value.code == 400
        with urllib.request.urlopen(f"http://{http}/v2/health/ready", timeout=5) as response:
            assert response.status == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.communicate(timeout=60)


def test_cli_serve_says_why_it_cannot_start(tmp_path):
    result = subprocess.run([TRITONREC, "serve", str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "is not a directory" in result.stderr


def test_cli_export_transform(criteo_small, tmp_path):
    result = subprocess.run(
        [TRITONREC, "export-transform", str(criteo_small["dir"]), str(tmp_path), "--name", "x", "--layout", "packed"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "x" / "1" / "plan" / "manifest.json").is_file()
    bad = subprocess.run([TRITONREC, "export-transform", str(tmp_path / "none"), str(tmp_path), "--name", "y"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "not a saved nvtabular workflow" in bad.stderr
