"""Supervising one tritonserver: say why it died, clean up, restart, and probe models with canaries.

:class:`Supervisor` is what ``tritonrec serve`` runs after the server is ready. From the thread
that calls :meth:`Supervisor.run` (the main thread: a server gets SIGTERM when the thread that
started it ends) it watches the process; when tritonserver dies it reports the exit code or
signal and the log's last lines, ends every process of its group (Python backend stubs
included) and removes the shared-memory regions with the server's prefix, then restarts it up to
``restarts`` times with exponential backoff (1, 2, 4, ... s, at most 30 s) or returns 1. A canary
thread probes every READY model every ``canary_interval_s`` (see :mod:`tritonrec.serving.canary`) and
logs each model that starts or stops failing.

Metrics (``prometheus_client``, on the supervisor's own endpoint):

- ``tritonrec_canary_failures_total{model}``: canary requests that failed (counter).
- ``tritonrec_canary_requests_total{model}``: canary requests sent (counter).
- ``tritonrec_canary_ok{model}``: 1 when the model's last canary passed, else 0 (gauge).
- ``tritonrec_canary_seconds{model}``: duration of the model's last canary (gauge).
- ``tritonrec_server_restarts_total``: restarts after the server died (counter).
- ``tritonrec_server_up``: 1 while tritonserver runs (gauge).
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections.abc import Callable

from tritonrec.serving.canary import CanaryProber, CanaryResult
from tritonrec.serving.server import ServerError, TritonServer, describe_exit

MAX_BACKOFF_S = 30.0


@dataclasses.dataclass(frozen=True)
class SupervisorOptions:
    """How :class:`Supervisor` watches a server.

    Attributes:
        restarts: restarts allowed after the server dies (0: exit when it dies).
        canary_interval_s: seconds between canary rounds (0: no canaries).
        canary_timeout_s: seconds a canary answer may take.
        start_timeout_s: seconds a restarted server may take to become ready.
        log_lines: lines of the server's log quoted when it dies.
    """

    restarts: int = 0
    canary_interval_s: float = 5.0
    canary_timeout_s: float = 10.0
    start_timeout_s: float = 120.0
    log_lines: int = 20


class SupervisorMetrics:
    """The supervisor's Prometheus metrics, in a registry of their own (see the module docstring)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics  # noqa: PLC0415

        disable_created_metrics()  # no *_created series beside the counters
        self.registry = CollectorRegistry()
        self.canary_failures = Counter("tritonrec_canary_failures", "Canary requests that failed", ["model"], registry=self.registry)
        self.canary_requests = Counter("tritonrec_canary_requests", "Canary requests sent", ["model"], registry=self.registry)
        self.canary_ok = Gauge("tritonrec_canary_ok", "1 when the model's last canary passed", ["model"], registry=self.registry)
        self.canary_seconds = Gauge("tritonrec_canary_seconds", "Duration of the model's last canary", ["model"], registry=self.registry)
        self.restarts = Counter("tritonrec_server_restarts", "Restarts of tritonserver after it died", registry=self.registry)
        self.up = Gauge("tritonrec_server_up", "1 while tritonserver runs", registry=self.registry)
        self._server = None

    def observe(self, result: CanaryResult) -> None:
        self.canary_requests.labels(result.model).inc()
        failures = self.canary_failures.labels(result.model)  # a 0 series from the model's first canary on
        if not result.ok:
            failures.inc()
        self.canary_ok.labels(result.model).set(1 if result.ok else 0)
        self.canary_seconds.labels(result.model).set(result.seconds)

    def serve(self, port: int, host: str) -> None:
        """Serves ``/metrics`` on ``host:port`` from a daemon thread."""
        from prometheus_client import start_http_server  # noqa: PLC0415

        self._server, _ = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _stderr(message: str) -> None:
    print(f"tritonrec serve: {message}", file=sys.stderr, flush=True)


def _stdout(message: str) -> None:
    print(message, flush=True)


class Supervisor:
    """Watches a started :class:`TritonServer` (see the module docstring).

    Args:
        server: a server that :meth:`TritonServer.start` made ready.
        options: restarts and canaries.
        metrics: where to count; None: a fresh :class:`SupervisorMetrics`.
        warn, say: where failure lines and progress lines go (default: stderr and stdout).
    """

    def __init__(
        self,
        server: TritonServer,
        options: SupervisorOptions = SupervisorOptions(),
        metrics: SupervisorMetrics | None = None,
        warn: Callable[[str], None] = _stderr,
        say: Callable[[str], None] = _stdout,
    ) -> None:
        self.server = server
        self.options = options
        self.metrics = metrics or SupervisorMetrics()
        self.warn = warn
        self.say = say
        self.restarts_done = 0
        self._failing: dict[str, str] = {}
        self._lock = threading.Lock()

    def canary_round(self, prober: CanaryProber) -> list[CanaryResult]:
        """Probes every READY model once; logs models that start or stop failing; counts."""
        results = prober.probe_all()
        with self._lock:
            for result in results:
                self.metrics.observe(result)
                before = self._failing.get(result.model)
                if not result.ok and before is None:
                    self.warn(f"canary of model '{result.model}' FAILED: {result.reason}")
                elif result.ok and before is not None:
                    self.say(f"canary of model '{result.model}' passes again")
                if result.ok:
                    self._failing.pop(result.model, None)
                else:
                    self._failing[result.model] = result.reason
        return results

    def failing_models(self) -> dict[str, str]:
        """Model -> reason, for models whose last canary failed."""
        with self._lock:
            return dict(self._failing)

    def _canaries(self, stop: threading.Event) -> None:
        from tritonclient.utils import InferenceServerException  # noqa: PLC0415

        prober = CanaryProber(self.server.grpc_url, self.options.canary_timeout_s, self.server.admin_headers())
        first = True
        try:
            while not stop.is_set():
                if self.server.is_running():
                    try:
                        results = self.canary_round(prober)
                    except InferenceServerException:
                        pass  # the server is going down or restarting: the main loop reports that
                    else:
                        if first:
                            passed = sum(r.ok for r in results)
                            self.say(f"canaries: {passed} of {len(results)} models pass, next every {self.options.canary_interval_s:g} s")
                            first = False
                if stop.wait(self.options.canary_interval_s):
                    break
        finally:
            prober.close()

    def report_death(self) -> None:
        """Cleans up after a server that died and says why, with the log's last lines."""
        self.server.stop()
        lines = self.server.last_log_lines(self.options.log_lines)
        cleanup = []
        if self.server.leftover_processes:
            cleanup.append(f"ended {len(self.server.leftover_processes)} leftover process(es) of its group {self.server.leftover_processes}")
        if self.server.removed_regions:
            cleanup.append(f"removed {len(self.server.removed_regions)} shared-memory region(s) {self.server.shm_prefix}*")
        self.warn(
            f"tritonserver died ({describe_exit(self.server.returncode)})"
            + (f"; {'; '.join(cleanup)}" if cleanup else "")
            + f"; last lines of {self.server.log_path}:\n"
            + "\n".join(f"    {line}" for line in lines)
        )

    def run(self, stop: threading.Event) -> int:
        """Supervises until ``stop`` is set (returns 0 after stopping the server) or the server
        dies with no restarts left (returns 1). Call from the thread that started the server."""
        self.metrics.up.set(1)
        canary_stop = threading.Event()
        canary = None
        if self.options.canary_interval_s > 0:
            canary = threading.Thread(target=self._canaries, args=(canary_stop,), name="tritonrec-canary", daemon=True)
            canary.start()
        try:
            while not stop.wait(0.5):
                if self.server.is_running():
                    continue
                self.metrics.up.set(0)
                self.report_death()
                if not self._restart(stop):
                    return 0 if stop.is_set() else 1
                self.metrics.up.set(1)
            code = self.server.stop()
            self.say(f"tritonserver stopped ({describe_exit(code)})")
            return 0
        finally:
            canary_stop.set()
            if canary is not None:
                canary.join(timeout=self.options.canary_timeout_s + 5)
            self.server.stop()
            self.metrics.up.set(0)

    def _restart(self, stop: threading.Event) -> bool:
        """Restarts the server (with backoff) while restarts are left; False when none is or ``stop`` was set."""
        while self.restarts_done < self.options.restarts:
            self.restarts_done += 1
            backoff = min(2.0 ** (self.restarts_done - 1), MAX_BACKOFF_S)
            self.warn(f"restarting tritonserver in {backoff:g} s (restart {self.restarts_done} of {self.options.restarts})")
            if stop.wait(backoff):
                return False
            self.metrics.restarts.inc()
            try:
                self.server.start(timeout_s=self.options.start_timeout_s)
            except ServerError as e:
                self.warn(str(e))
                continue
            self.say(f"tritonserver ready again (restart {self.restarts_done} of {self.options.restarts})")
            return True
        if self.options.restarts:
            self.warn(f"no restarts left ({self.options.restarts} used)")
        return False
