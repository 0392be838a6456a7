"""The endpoints file: where a running ``tritonrec serve`` listens, for clients on the same machine.

``tritonrec serve --endpoints-file FILE`` writes it once the server is ready (JSON: ``grpc``,
``http`` or null, ``metrics``, ``canary``, ``pid``, ``repository``; written whole, then renamed into place) and
removes it when it stops; ``tritonrec query`` and ``tritonrec perf --endpoints-file FILE`` read the gRPC address (and
perf the model repository) from it,
so clients need not know the free ports ``serve`` picked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class EndpointsError(ValueError):
    """An endpoints file that cannot be read; the message names it and says why."""


def write_endpoints(path: str | os.PathLike[str], endpoints: dict[str, Any]) -> Path:
    """Writes ``endpoints`` (JSON-able) to ``path`` atomically (a sibling temporary file renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(endpoints, indent=1) + "\n")
    os.replace(temporary, path)
    return path


def remove_endpoints(path: str | os.PathLike[str]) -> None:
    """Removes the file if it still names this process (another server may have replaced it)."""
    path = Path(path)
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def read_endpoints(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The endpoints a server wrote; EndpointsError when the file is absent, not JSON, names no
    gRPC address, or names a process that is gone (a server that did not stop cleanly)."""
    path = Path(path)
    try:
        endpoints = json.loads(path.read_text())
    except FileNotFoundError:
        raise EndpointsError(f"{path}: no such file (is `tritonrec serve --endpoints-file {path}` running?)") from None
    except (OSError, ValueError) as e:
        raise EndpointsError(f"{path}: not an endpoints file ({e})") from None
    if not isinstance(endpoints, dict) or not isinstance(endpoints.get("grpc"), str):
        raise EndpointsError(f"{path}: not an endpoints file (no gRPC address)")
    pid = endpoints.get("pid")
    if isinstance(pid, int) and not Path(f"/proc/{pid}").exists() and os.name == "posix" and Path("/proc/self").exists():
        raise EndpointsError(f"{path}: written by process {pid}, which is no longer running (a server that did not stop cleanly)")
    return endpoints
