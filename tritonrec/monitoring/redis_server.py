"""A local ``redis-server`` (Debian's, which ``scripts/setup.sh`` installs) on a free loopback port,
for tests, benchmarks and demos of the feedback loop; production points at its own Redis."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any


class RedisNotFound(RuntimeError):
    """No ``redis-server`` on PATH; the message says how to get one."""


class RedisServer:
    """``redis-server`` bound to 127.0.0.1 on a free port (or ``port``), its files in ``workdir``.

    Args:
        workdir: its working directory (the append-only file when ``persistent``).
        persistent: keep the data across a crash (append-only file, fsync on every write), as a
            production Redis would; else nothing is saved and a restart starts empty.

    :meth:`start` again after :meth:`kill` comes back on the same port. Also a context manager.
    """

    def __init__(self, workdir: str | os.PathLike[str], *, persistent: bool = False, port: int | None = None) -> None:
        from tritonrec.serving.server import free_port  # noqa: PLC0415

        self.port = port or free_port("127.0.0.1")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = Path(workdir)
        self.persistent = persistent
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        """Starts it and waits until it answers PING. RedisNotFound without the binary;
        RuntimeError when it does not answer within ``timeout_s``."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisNotFound("needs redis-server on PATH (scripts/setup.sh installs Debian's with root and apt-get)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        durability = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *durability, "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return self
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout_s} s")

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.kill()
