"""Find, prepare and run a tritonserver for a model repository.

The server is found in this order: an explicit path, ``tritonserver`` on PATH, then the one
bundled in the ``nvidia-pytriton`` wheel. Before it starts, its backend directory gets a Python
backend stub for this interpreter's Python version and tritonrec's Python-based backends
(``backends/<name>/model.py``), so a model whose config says ``backend: "nvtabular_transform"``
loads with no model.py of its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

from tritonrec.serving.install import copy_backends, python_paths

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the tritonrec package


class ServerError(RuntimeError):
    """tritonserver could not be found or started; the message says why in one line."""


def project_backends_dir() -> Path:
    """Directory holding tritonrec's Python-based backends (one folder with a model.py each)."""
    installed = _PACKAGE_DIR / "_backends"
    if installed.is_dir():
        return installed
    source = _PACKAGE_DIR.parent / "backends"  # running from a source checkout
    if source.is_dir():
        return source
    raise ServerError(f"tritonrec's backends are missing (looked in {installed} and {source})")


def project_backends() -> list[str]:
    """Names of tritonrec's Python-based backends."""
    return sorted(p.parent.name for p in project_backends_dir().glob("*/model.py"))


@dataclasses.dataclass(frozen=True)
class ServerInstall:
    """A tritonserver binary and where its backends and bundled libraries are."""

    binary: Path
    backend_dir: Path
    library_dirs: tuple[Path, ...] = ()
    """Directories to put on LD_LIBRARY_PATH (the wheel's bundled libraries)."""
    stub_dir: Path | None = None
    """The wheel's ``python_backend_stubs`` folder (one stub per Python version), if bundled."""


def _pytriton_install() -> ServerInstall | None:
    try:
        import pytriton  # noqa: PLC0415
    except ImportError:
        return None
    root = Path(pytriton.__file__).resolve().parent / "tritonserver"
    binary = root / "bin" / "tritonserver"
    if not binary.is_file():
        return None
    libs = root.parent.parent / "nvidia_pytriton.libs"
    return ServerInstall(binary, root / "backends", (libs,) if libs.is_dir() else (), root / "python_backend_stubs")


def find_tritonserver(explicit: str | os.PathLike[str] | None = None) -> ServerInstall:
    """Locates tritonserver: ``explicit``, then PATH, then the nvidia-pytriton wheel.

    Raises:
        ServerError: none found, or ``explicit`` is not an executable file.
    """
    if explicit is not None:
        binary = Path(explicit)
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            raise ServerError(f"--tritonserver {binary}: not an executable file")
        return ServerInstall(binary.resolve(), binary.resolve().parent.parent / "backends")
    on_path = shutil.which("tritonserver")
    if on_path:
        binary = Path(on_path).resolve()
        return ServerInstall(binary, binary.parent.parent / "backends")
    bundled = _pytriton_install()
    if bundled is not None:
        return bundled
    raise ServerError(
        "no tritonserver found: pass --tritonserver PATH, put tritonserver on PATH, or install the "
        "server extra (pip install 'tritonrec[server]', which brings nvidia-pytriton's bundled server)"
    )


def prepare_backend_directory(install: ServerInstall) -> Path:
    """Makes ``install.backend_dir`` ready: the Python stub for this Python and tritonrec's backends.

    Returns:
        The backend directory to pass as ``--backend-directory``.

    Raises:
        ServerError: no Python backend there, no stub for this Python, or the directory is not writable.
    """
    backend_dir = install.backend_dir
    python_dir = backend_dir / "python"
    if not (python_dir / "libtriton_python.so").is_file():
        raise ServerError(f"{python_dir}: no Python backend (libtriton_python.so) next to tritonserver")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    try:
        if install.stub_dir is not None:
            stub = install.stub_dir / version / "triton_python_backend_stub"
            if not stub.is_file():
                raise ServerError(f"the bundled server has no Python backend stub for Python {version} ({stub})")
            target = python_dir / "triton_python_backend_stub"
            if not target.is_file() or target.stat().st_size != stub.stat().st_size or _read(target) != _read(stub):
                shutil.copy2(stub, target)
        copy_backends(backend_dir, project_backends_dir(), project_backends())
    except PermissionError as e:
        raise ServerError(f"cannot install tritonrec's backends into {backend_dir}: {e.strerror}") from None
    return backend_dir


def _read(path: Path) -> bytes:
    return path.read_bytes()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free now."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1", exclude: Iterable[int] = ()) -> list[int]:
    """``count`` distinct TCP ports on ``host``, free now and none of ``exclude``: every socket is
    held open until all are chosen, so that the OS cannot hand out one port twice (free_port called
    three times can: a server then gets the same port for HTTP and gRPC and does not start)."""
    taken = set(exclude)
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(s)
            s.bind((host, 0))
            port = int(s.getsockname()[1])
            if port not in taken:
                taken.add(port)
                ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``port`` and it can be bound on all interfaces and ``host``."""
    for address in (host, "0.0.0.0"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((address, port))
            except OSError:
                return False
    return True


def server_environment(install: ServerInstall) -> dict[str, str]:
    """Environment for tritonserver so its Python stubs run this interpreter's environment.

    LD_LIBRARY_PATH gets this Python's LIBDIR first (else the stub may load another build of
    libpython against this standard library) and the wheel's bundled libraries; PATH gets this
    environment's bin; PYTHONPATH gets this environment's site-packages.
    """
    env = dict(os.environ)
    site, libdir, bindir = python_paths()
    lib_paths = [libdir, *map(str, install.library_dirs)]
    if env.get("LD_LIBRARY_PATH"):
        lib_paths.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in lib_paths if p)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
    if env.get("PYTHONPATH"):
        site.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(site))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


_MODEL_FAILURE = re.compile(r"failed to load '([^']+)'[^:]*: (.*)")
_PORT_FAILURE = re.compile(r"(failed to start \w+ service.*|Socket '[^']*' already in use.*|Address already in use.*"
                           r"|The server cannot listen to .* at the same address and port.*)", re.I)
_UNRECOGNIZED_OPTION = re.compile(r"unrecognized option '([^']*)'")
_BAD_OPTION = re.compile(r'^Bad option: "([^"]*)"')


def summarize_failure(log: str) -> str:
    """The one line that says why a server did not start, from its log."""
    lines = log.splitlines()
    for line in lines:
        match = _UNRECOGNIZED_OPTION.search(line)
        if match:
            return f"tritonserver does not know the option {match.group(1)!r}"
    for i, line in enumerate(lines):
        match = _BAD_OPTION.search(line)
        if match:
            detail = next((rest.strip() for rest in lines[i + 1 :] if rest.strip()), "")
            return f"tritonserver rejected the option {match.group(1)}: {detail}".rstrip(": ")
    for line in lines:
        match = _MODEL_FAILURE.search(line)
        if match:
            return f"model '{match.group(1)}' failed to load: {match.group(2).strip()}"
    for line in lines:
        match = _PORT_FAILURE.search(line)
        if match:
            return f"port in use: {match.group(1).strip()}"
    errors = [line for line in lines if line.startswith("E") or "error" in line.lower()]
    if errors:
        return errors[-1].strip()
    tail = [line for line in lines if line.strip()]
    return tail[-1].strip() if tail else "tritonserver exited without output"


def describe_exit(returncode: int | None) -> str:
    """``exit code N`` or ``signal N (SIGNAME)`` for a ``subprocess`` return code."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"signal {-returncode} ({name})"
    return f"exit code {returncode}"


ADMIN_CATEGORIES = ("model-repository", "shared-memory", "trace", "logging")
"""Triton's restricted-API categories that :class:`TritonServer` puts behind the admin key:
loading and unloading models, registering shared memory, tracing and log settings (the APIs that
change the server). Health, metadata, model configuration, statistics and inference stay open:
statistics are read-only and say what the metrics endpoint already says (per-model counts and
durations), and perf_analyzer needs them (it cannot send a header over gRPC)."""

ADMIN_HEADER = "admin-key"
"""Name of the admin key's header: HTTP clients send ``admin-key: <key>``; gRPC clients send
``triton-grpc-protocol-admin-key: <key>`` (Triton prefixes restricted gRPC headers)."""

GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"

_KEY_CHARACTERS = re.compile(r"[A-Za-z0-9._~-]{16,256}")


def check_admin_key(key: str, source: str) -> str:
    """``key`` with surrounding whitespace removed, if it can be an admin key.

    Raises:
        ServerError: naming ``source`` (e.g. ``--admin-key-file PATH``) and what is expected; the
            key itself is never part of a message.
    """
    key = key.strip()
    if not _KEY_CHARACTERS.fullmatch(key):
        raise ServerError(
            f"{source}: the admin key must be 16 to 256 characters from A-Z a-z 0-9 . _ ~ - "
            f"(it is {len(key)} characters{'' if key.isascii() else ', not all ASCII'})"
        )
    return key


def new_admin_key() -> str:
    """A random admin key (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def _live_processes() -> Iterator[tuple[int, str, int, int]]:
    """(pid, command name, parent pid, process group) of every live (not zombie) process, from ``/proc`` (Linux)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # ended meanwhile
            continue
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, pgrp, ...
        if len(fields) > 2 and fields[0] != "Z":
            yield int(stat.parent.name), text[text.index("(") + 1 : text.rindex(")")], int(fields[1]), int(fields[2])


def process_group_members(pgid: int) -> list[int]:
    """Process ids whose process group is ``pgid``."""
    return [pid for pid, _, _, group in _live_processes() if group == pgid]


def child_processes(parent_pid: int, name: str) -> list[int]:
    """Process ids of the live children of ``parent_pid`` whose command name is ``name`` (e.g. ``"tritonserver"``)."""
    return [pid for pid, comm, ppid, _ in _live_processes() if ppid == parent_pid and comm == name]


def _wait_group_gone(pgid: int, grace_s: float) -> list[int]:
    """Waits up to ``grace_s`` for group ``pgid`` to have no live process; returns those left."""
    deadline = time.monotonic() + grace_s
    while (left := process_group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def end_process_group(pgid: int, grace_s: float = 5.0) -> tuple[list[int], list[int]]:
    """SIGTERM to every live process of group ``pgid``, SIGKILL to those left after ``grace_s``.

    Returns:
        (the process ids that were alive, those that needed SIGKILL: Python backend stubs blocked
        on a dead server ignore SIGTERM).
    """
    alive = process_group_members(pgid)
    if not alive:
        return [], []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    stubborn = _wait_group_gone(pgid, grace_s)
    if stubborn:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        _wait_group_gone(pgid, grace_s)
    return alive, stubborn


SHM_DIR = Path("/dev/shm")


def remove_shared_memory(prefix: str) -> list[str]:
    """Removes the POSIX shared-memory regions whose names start with ``prefix``; returns their names."""
    if not prefix or "/" in prefix:
        raise ValueError(f"shared-memory prefix {prefix!r}: expected a non-empty name without '/'")
    removed = []
    for region in SHM_DIR.glob(f"{prefix}*"):
        with contextlib.suppress(FileNotFoundError):
            region.unlink()
            removed.append(region.name)
    return removed


_PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before any fork
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _end_with_parent(parent_pid: int) -> None:
    """In the forked child before exec: SIGTERM when the parent (the thread that forked) ends."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent ended before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


class TritonServer:
    """A running tritonserver on a model repository, on loopback ports.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. Ports not given are picked
    free. ``log_path`` receives the server's stdout and stderr.

    The server runs in its own process group, with the Python backend's stubs (its children), and
    gets SIGTERM when the thread that started it ends (``PR_SET_PDEATHSIG``): start it from a
    thread that outlives it (the main thread, as the CLI, tests and benchmarks do). :meth:`stop`
    (also after the server died) ends every process of the group, stubs included, and removes the
    shared-memory regions of this server's Python backend, which get the unique name prefix
    :attr:`shm_prefix`.

    Args:
        http: serve Triton's HTTP/JSON endpoint too (Triton 2.51's JSON parser has no depth limit:
            one deeply nested body crashes the server, so :mod:`tritonrec.cli` serves gRPC only
            unless asked). Without it readiness is read over gRPC (``tritonclient[grpc]``).
        admin_key: when given, the :data:`ADMIN_CATEGORIES` of both endpoints need it in the
            :data:`ADMIN_HEADER` header; None leaves Triton's APIs open.
    """

    def __init__(
        self,
        model_repository: str | os.PathLike[str],
        *,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        tritonserver: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        extra_args: tuple[str, ...] = (),
        host: str = "127.0.0.1",
        http: bool = True,
        admin_key: str | None = None,
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.host = host
        self.http = http
        self._admin_key = admin_key
        self.install = find_tritonserver(tritonserver)
        given = {"--http-port": http_port if http else None, "--grpc-port": grpc_port, "--metrics-port": metrics_port}
        seen: dict[int, str] = {}
        for name, port in given.items():
            if not port:
                continue
            if port in seen:
                raise ServerError(f"{name} {port}: the same port as {seen[port]} (each endpoint needs a port of its own)")
            seen[port] = name
            if not port_is_free(port, host):
                raise ServerError(f"{name} {port}: port is taken")
        missing = [name for name, port in given.items() if not port and (http or name != "--http-port")]
        ports = {**given, **dict(zip(missing, free_ports(len(missing), host, seen)))}
        self.http_port, self.grpc_port, self.metrics_port = ports["--http-port"], ports["--grpc-port"], ports["--metrics-port"]
        self.extra_args = tuple(extra_args)
        self.shm_prefix = f"tritonrec_{os.getpid()}_{secrets.token_hex(4)}_"
        self._log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
        self._process: subprocess.Popen[bytes] | None = None
        self._grpc_client: object | None = None
        self.returncode: int | None = None
        """The exit status of the last server process (negative: the signal that ended it)."""
        self.leftover_processes: list[int] = []
        """Processes of the last server's group still alive after it exited (ended by :meth:`stop`)."""
        self.removed_regions: list[str] = []
        """Shared-memory regions of the last server that :meth:`stop` removed."""

    @property
    def http_url(self) -> str | None:
        """``host:port`` of the HTTP endpoint, None when HTTP is off."""
        return f"{self.host}:{self.http_port}" if self.http else None

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def log_path(self) -> Path:
        return self._log_path

    def admin_headers(self) -> dict[str, str]:
        """gRPC headers that open the admin categories (empty when they are not restricted)."""
        return {GRPC_ADMIN_HEADER: self._admin_key} if self._admin_key else {}

    def log(self) -> str:
        """The server's output so far."""
        try:
            return self._log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def last_log_lines(self, n: int = 20) -> list[str]:
        """The last ``n`` non-empty lines of the server's output, without its start-up tables."""
        return [line for line in self.log().splitlines() if line.strip() and not line.startswith(("|", "+-"))][-n:]

    def command(self) -> list[str]:
        """tritonserver's command line (the admin key is on it: local users can read it in ``ps``)."""
        restricted = []
        if self._admin_key:
            categories = ",".join(ADMIN_CATEGORIES)
            restricted.append(f"--grpc-restricted-protocol={categories}:{ADMIN_HEADER}={self._admin_key}")
            if self.http:
                restricted.append(f"--http-restricted-api={categories}:{ADMIN_HEADER}={self._admin_key}")
        http = [f"--http-port={self.http_port}", f"--http-address={self.host}"] if self.http else ["--allow-http=false"]
        return [
            str(self.install.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self.install.backend_dir}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *http,
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--log-verbose=0",
            "--exit-timeout-secs=10",
            *restricted,
            *self.extra_args,
        ]

    def start(self, timeout_s: float = 120.0) -> TritonServer:
        """Starts the server and waits until it reports ready (HTTP ``/v2/health/ready``, else gRPC).

        Raises:
            ServerError: the model repository is missing, the server exited, or it was not ready
                within ``timeout_s``; the message says why in one line.
        """
        if self.is_running():
            raise ServerError("tritonserver is already running")
        if not self.model_repository.is_dir():
            raise ServerError(f"model repository {self.model_repository} is not a directory")
        prepare_backend_directory(self.install)
        self.returncode = None
        log = open(self._log_path, "wb")  # noqa: SIM115 - owned by the process lifetime
        parent = os.getpid()
        self._process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_environment(self.install),
            # The Python stub puts its working directory first on sys.path: run it where no
            # source checkout can shadow the installed packages.
            cwd=str(self.model_repository),
            start_new_session=True,
            preexec_fn=lambda: _end_with_parent(parent),  # noqa: PLW1509 - async-signal-safe calls only
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                reason = summarize_failure(self.log())
                self.stop()
                raise ServerError(f"tritonserver did not start: {reason} (log: {self._log_path})")
            if self.is_ready():
                return self
            time.sleep(0.1)
        reason = summarize_failure(self.log())
        self.stop()
        raise ServerError(f"tritonserver not ready after {timeout_s:.0f} s: {reason} (log: {self._log_path})")

    def is_ready(self) -> bool:
        """True when the server says it is ready (HTTP ``/v2/health/ready`` 200, else gRPC ServerReady)."""
        if self.http:
            try:
                with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1.0) as r:
                    return r.status == 200
            except (urllib.error.URLError, OSError):
                return False
        try:
            import tritonclient.grpc as grpcclient  # noqa: PLC0415
            from tritonclient.utils import InferenceServerException  # noqa: PLC0415
        except ImportError:
            raise ServerError("a server without HTTP is probed over gRPC: install tritonclient[grpc] (pip install 'tritonrec[server]')") from None
        if self._grpc_client is None:
            self._grpc_client = grpcclient.InferenceServerClient(self.grpc_url)
        try:
            return bool(self._grpc_client.is_server_ready(client_timeout=1.0))  # type: ignore[attr-defined]
        except InferenceServerException:
            return False

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """Stops the server (SIGINT, then SIGKILL after ``timeout_s``), ends what is left of its
        process group (stubs: SIGTERM, then SIGKILL) and removes its Python backend's shared-memory
        regions. Also cleans up after a server that died. Returns its exit status."""
        process, self._process = self._process, None
        if self._grpc_client is not None:
            with contextlib.suppress(Exception):
                self._grpc_client.close()  # type: ignore[attr-defined]
            self._grpc_client = None
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.leftover_processes, _ = end_process_group(process.pid)
        self.removed_regions = remove_shared_memory(self.shm_prefix)
        self.returncode = process.returncode
        return process.returncode

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_server(model_repository: str | os.PathLike[str], **kwargs: object) -> Iterator[TritonServer]:
    """Context manager: a started :class:`TritonServer` (see its arguments), stopped on exit."""
    server = TritonServer(model_repository, **kwargs)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()
