"""Putting tritonrec's backends into another Triton install (an NGC container, a server built from
source): ``tritonrec install-backends BACKEND_DIR``.

tritonrec's backends are Python-based: Triton runs each ``<backend>/model.py`` in its Python
backend's stub process, which must (1) be built for the Python that tritonrec is installed in (the
stub links one libpython) and (2) find ``tritonrec`` on its ``PYTHONPATH``. :func:`install_backends`
copies the backends, checks the stub's Python and writes ``tritonrec.env``, the environment the
server needs (source it before starting tritonserver, from any directory but a tritonrec source
checkout: the stub puts its working directory on ``sys.path``, where the checkout's folders, without
the built extensions, would shadow the installed packages).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import sys
import sysconfig
from pathlib import Path

ENV_FILE = "tritonrec.env"
STUB = "triton_python_backend_stub"


class InstallError(OSError):
    """A backend directory tritonrec's backends cannot run from; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Installed:
    """What :func:`install_backends` did: the backends copied, the env file, the stub's Python."""

    backends: list[str]
    env_file: Path
    stub_python: str | None
    """``"3.X"`` read from the stub binary, or None when it could not be read."""


def copy_backends(backend_dir: Path, source: Path, names: list[str]) -> None:
    """Copies each backend ``source/<name>/*.py`` to ``backend_dir/<name>/`` (files that differ only)."""
    for name in names:
        dest = backend_dir / name
        dest.mkdir(parents=True, exist_ok=True)
        for file in (source / name).glob("*.py"):
            if not (dest / file.name).is_file() or (dest / file.name).read_bytes() != file.read_bytes():
                shutil.copy2(file, dest / file.name)


def stub_python(stub: Path) -> str | None:
    """The Python version (``"3.X"``) a Python backend stub links, from the libpython name in the binary."""
    try:
        found = re.search(rb"libpython(3\.\d+)", stub.read_bytes())
    except OSError:
        return None
    return found.group(1).decode() if found else None


def python_paths() -> tuple[list[str], str, str]:
    """This Python's package directories (for a stub's PYTHONPATH), its LIBDIR (for
    LD_LIBRARY_PATH, first: else the stub may load another build of libpython) and its bin
    directory (for PATH, first: the stub's embedded Python finds its prefix, a virtual
    environment's included, from the ``python3`` on PATH; PYTHONPATH alone was not enough)."""
    site = list(dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]))
    return site, sysconfig.get_config_var("LIBDIR") or "", str(Path(sys.executable).parent)


def environment_lines() -> list[str]:
    """Shell lines giving a stub this Python, its packages and libpython (see :func:`install_backends`)."""
    site, libdir, bindir = python_paths()
    return [
        f"# tritonrec {sys.version_info.major}.{sys.version_info.minor} environment for tritonserver's Python stubs",
        f"export PATH={bindir}{os.pathsep}$PATH",
        f"export PYTHONPATH={os.pathsep.join(site)}${{PYTHONPATH:+{os.pathsep}$PYTHONPATH}}",
        f"export LD_LIBRARY_PATH={libdir}${{LD_LIBRARY_PATH:+{os.pathsep}$LD_LIBRARY_PATH}}",
    ]


def install_backends(backend_dir: str | os.PathLike[str], source: Path, names: list[str]) -> Installed:
    """Copies tritonrec's backends (``names`` under ``source``) into a Triton backend directory.

    Raises:
        InstallError: no such directory, no Python backend in it (``python/libtriton_python.so``), a
            stub built for another Python than this one (naming both and the fixes), or the
            directory is not writable.
    """
    backend_dir = Path(backend_dir)
    python_dir = backend_dir / "python"
    if not backend_dir.is_dir():
        raise InstallError(f"{backend_dir}: no such directory (expected a Triton backend directory, e.g. /opt/tritonserver/backends)")
    if not (python_dir / "libtriton_python.so").is_file():
        raise InstallError(f"{python_dir}: no Python backend (libtriton_python.so): tritonrec's backends run on it")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    linked = stub_python(python_dir / STUB)
    if linked is not None and linked != version:
        raise InstallError(
            f"{python_dir / STUB} runs Python {linked}, tritonrec is installed for Python {version}: install tritonrec into "
            f"the server's Python {linked}, or put a stub built for Python {version} there (the nvidia-pytriton wheel carries "
            f"one per version under pytriton/tritonserver/python_backend_stubs/{version}/)")
    try:
        copy_backends(backend_dir, source, names)
        env_file = backend_dir / ENV_FILE
        env_file.write_text("\n".join(environment_lines()) + "\n")
    except PermissionError as e:
        raise InstallError(f"cannot write into {backend_dir}: {e.strerror}") from None
    return Installed(names, env_file, linked)
