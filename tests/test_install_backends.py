"""``tritonrec install-backends`` into a Triton install that is not tritonrec's: the bundled server's
binary and Python backend copied into a backend directory of their own, as an NGC container or a
server built from source has them, started by hand with the written environment; the transform it
serves answers as the plan does in process, for one row and for many."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tritonrec.cli import main
from tritonrec.export import export_transform
from tritonrec.serving.install import STUB, stub_python
from tritonrec.serving.server import find_tritonserver, free_port
from tritonrec.transform import compile_workflow

pytestmark = pytest.mark.triton
VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


def _external_backends(tmp_path: Path, stub_version: str = VERSION) -> Path:
    """A backend directory holding only Triton's Python backend, its stub for ``stub_version``."""
    install = find_tritonserver()
    backends = tmp_path / "backends"
    (backends / "python").mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(install.backend_dir / "python" / name, backends / "python" / name)
    stub = install.stub_dir / stub_version / STUB if install.stub_dir else install.backend_dir / "python" / STUB
    shutil.copy2(stub, backends / "python" / STUB)
    return backends


@contextlib.contextmanager
def _by_hand(backends: Path, repo: Path, log: Path):
    """tritonserver started as a user would: `set -a; . tritonrec.env; set +a; tritonserver ...`."""
    import tritonclient.grpc as grpcclient

    install = find_tritonserver()
    port = free_port()
    libs = os.pathsep.join(map(str, install.library_dirs))  # the install's own libraries, not tritonrec's business
    command = (f"set -a; . {backends / 'tritonrec.env'}; set +a; export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:{libs}; "
               f"exec {install.binary} --backend-directory={backends} --model-repository={repo} --allow-http=false "
               f"--grpc-port={port} --allow-metrics=false --grpc-address=127.0.0.1")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LD_LIBRARY_PATH")}  # only what the env file gives
    with open(log, "wb") as out:
        # from the repository's directory, as the user's shell would be anywhere but a tritonrec checkout (whose
        # source folders, without the built extensions, would shadow the installed packages in the stub)
        process = subprocess.Popen(["bash", "-c", command], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                   cwd=repo)
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(Exception):
                if client.is_server_ready():
                    break
            time.sleep(0.2)
        assert process.poll() is None and client.is_server_ready(), log.read_text()[-3000:]
        yield client
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_installed_backends_serve_in_another_install(criteo_small, tmp_path, capsys):
    from tritonrec.serving.client import infer, pack_request, unpack_response
    from tritonrec.serving.transform_model import TransformModel

    backends = _external_backends(tmp_path)
    assert main(["install-backends", str(backends)]) == 0
    out = capsys.readouterr().out
    assert f"(Python stub: {VERSION})" in out and f". {backends / 'tritonrec.env'}" in out
    assert sorted(p.name for p in backends.iterdir()) == ["embedding_lookup", "nvtabular_transform", "python", "torch_scorer", "tritonrec.env"]
    plan = compile_workflow(criteo_small["workflow"])
    export_transform(plan, tmp_path / "repo", "criteo", layout="packed")
    model = TransformModel(plan, "packed", 16384)
    with _by_hand(backends, tmp_path / "repo", tmp_path / "server.log") as client:
        for rows in (slice(0, 1), slice(0, 500)):
            columns = {c: v[rows] for c, v in criteo_small["held_out"].items()}
            request = pack_request(model, columns)
            served = infer(client, "criteo", request, [s.name for s in model.outputs])
            want = unpack_response(model, model.execute([request])[0])
            got = unpack_response(model, served)
            for name in want:
                np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_directories_the_backends_cannot_run_from_are_named(tmp_path, capsys):
    assert main(["install-backends", str(tmp_path / "nowhere")]) == 1
    assert "nowhere: no such directory (expected a Triton backend directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["install-backends", str(tmp_path / "empty")]) == 1
    assert "empty/python: no Python backend (libtriton_python.so)" in capsys.readouterr().err
    other = "3.10" if VERSION != "3.10" else "3.12"
    backends = _external_backends(tmp_path / "other", other)
    assert stub_python(backends / "python" / STUB) == other
    assert main(["install-backends", str(backends)]) == 1
    err = capsys.readouterr().err
    assert f"runs Python {other}, tritonrec is installed for Python {VERSION}" in err and "python_backend_stubs" in err
    assert not (backends / "nvtabular_transform").exists()
