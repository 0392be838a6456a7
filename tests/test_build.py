"""CMake configuration of embedding_cache._core: the CUDA switch forces either build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pybind11
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _configure(tmp_path: Path, *defines: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake not on PATH")
    return subprocess.run(
        [cmake, "-S", str(ROOT), "-B", str(tmp_path / "build"), f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
         f"-DPython_EXECUTABLE={sys.executable}", "-DSKBUILD_PROJECT_NAME=tritonrec", "-DSKBUILD_PROJECT_VERSION=0.1.0", *defines],
        capture_output=True, text=True, timeout=300, env=env,
    )


def test_cuda_off_configures_the_cpu_only_module(tmp_path):
    result = _configure(tmp_path, "-DTRITONREC_CUDA=OFF")
    assert result.returncode == 0, result.stderr
    assert "tritonrec: CUDA sources OFF" in result.stdout


def test_cuda_on_without_a_compiler_fails_with_the_reason(tmp_path):
    # A PATH without nvcc, and no CUDA hints: the configure stops with tritonrec's own message.
    env = {k: v for k, v in os.environ.items() if k not in ("CUDACXX", "CUDA_PATH", "CUDA_HOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and not (Path(p) / "nvcc").exists())
    result = _configure(tmp_path, "-DTRITONREC_CUDA=ON", env=env)
    assert result.returncode != 0
    assert "TRITONREC_CUDA=ON but no CUDA compiler was found" in result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_auto_finds_nvcc(tmp_path):
    result = _configure(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "tritonrec: CUDA sources ON" in result.stdout
