"""Shared fixtures: small fitted workflows, and real tritonserver instances on loopback ports."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable

import numpy as np
import pytest

from tritonrec.pipeline.synthetic import CATEGORICAL, CONTINUOUS, CriteoGenerator, CriteoShape

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:  # nvtabular and merlin warn on import: not ours to fix
        import nvtabular  # noqa: F401
    except ImportError:  # the GPU machine runs the tests that need no NVTabular (-m gpu)
        pass


def _has_gpu() -> bool:
    try:
        import embedding_cache

        return embedding_cache.cuda_device_count() > 0
    except ImportError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


SMALL_SHAPE = CriteoShape(cardinalities=tuple(int(c) for c in np.logspace(1, 4, 26)))
"""Criteo-shaped, with cardinalities 10..1e4 so fitting takes a second."""


@pytest.fixture(scope="session")
def criteo_small(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A fitted Criteo-shaped workflow (20k rows) with held-out rows: keys workflow, dir, held_out."""
    from tritonrec.pipeline.workflow import criteo_workflow, fit_workflow

    generator = CriteoGenerator(SMALL_SHAPE)
    out = tmp_path_factory.mktemp("criteo_workflow")
    train = generator.sample(20_000, seed=11)
    workflow = fit_workflow(criteo_workflow(), train, CONTINUOUS + CATEGORICAL, out)
    held = generator.sample(3_000, seed=12)
    return {"workflow": workflow, "dir": out, "held_out": {c: held[c] for c in CONTINUOUS + CATEGORICAL}}


@pytest.fixture(scope="session")
def start_server() -> Callable[..., contextlib.AbstractContextManager]:
    """Factory: ``with start_server(repo) as server:`` runs a real tritonserver, stopped after."""
    from tritonrec.serving.server import running_server

    return running_server


@pytest.fixture(scope="session")
def criteo_trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small trained pipeline: workflow, plan, DLRM, its store and scorer, and held-out rows.

    Keys: pipeline (a TrainedPipeline), held_out (raw columns and label, 2000 rows), dense and
    ids (the held-out rows' features), expected (the DLRM's offline probabilities, float32 (n,)).
    """
    from tritonrec.pipeline.synthetic import LABEL
    from tritonrec.pipeline.train import plan_features, train_pipeline
    from tritonrec.scorer.dlrm import DLRMConfig, TrainOptions, predict

    generator = CriteoGenerator(SMALL_SHAPE)
    train = generator.sample(20_000, seed=21)
    held = generator.sample(2_000, seed=22)
    pipeline = train_pipeline(
        tmp_path_factory.mktemp("trained"), train, dlrm_config=DLRMConfig(), train_options=TrainOptions(epochs=1, threads=2)
    )
    dense, ids = plan_features(pipeline.plan, held)
    return {
        "pipeline": pipeline,
        "held_out": {c: held[c] for c in [*CONTINUOUS, *CATEGORICAL, LABEL]},
        "dense": dense,
        "ids": ids,
        "expected": predict(pipeline.model, dense, ids),
    }


@pytest.fixture(scope="session")
def criteo_persistent_store(criteo_trained, tmp_path_factory):
    """The trained DLRM's store again, with its rows in RocksDB (``save_dlrm(..., persistent=True)``).
    Shared: tests export it (which copies it) before damaging or serving it."""
    from tritonrec.scorer.dlrm import save_dlrm

    pipeline = criteo_trained["pipeline"]
    out = tmp_path_factory.mktemp("persistent")
    store_dir, _ = save_dlrm(pipeline.model, pipeline.plan, out / "store", out / "scorer", persistent=True)
    return store_dir


class RedisProcess:
    """A real ``redis-server`` on a free loopback port (:class:`tritonrec.monitoring.redis_server.RedisServer`);
    the test is skipped where there is none. :meth:`kill` and :meth:`start` again on the same port for fault tests."""

    def __init__(self, workdir, persistent: bool = False) -> None:
        from tritonrec.monitoring.redis_server import RedisServer

        self.server = RedisServer(workdir, persistent=persistent)
        self.port, self.url = self.server.port, self.server.url

    def start(self, timeout_s: float = 10.0) -> RedisProcess:
        from tritonrec.monitoring.redis_server import RedisNotFound

        try:
            self.server.start(timeout_s)
        except RedisNotFound as e:
            pytest.skip(str(e))
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        self.server.kill()


@pytest.fixture
def redis_server(tmp_path):
    """A started :class:`RedisProcess`, killed after the test."""
    server = RedisProcess(tmp_path).start()
    yield server
    server.kill()


# Every tritonserver and Python backend stub a test starts must be gone when the run ends (a
# server once outlived its `tritonrec serve` by 50 minutes after `make test`).
_SERVER_PROCESSES = ("tritonserver", "triton_python_backend_stub")


def _server_processes() -> dict[int, str]:
    """pid -> command line of every tritonserver / stub process on the machine."""
    from pathlib import Path

    found = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
            state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and argv and argv[0] and Path(argv[0].decode(errors="replace")).name in _SERVER_PROCESSES:
            found[int(cmdline.parent.name)] = b" ".join(argv).decode(errors="replace")
    return found


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config._servers_before = set(_server_processes())  # type: ignore[attr-defined]


def _descends_from(pid: int, ancestor: int) -> bool:
    """True when ``ancestor`` is a parent, grandparent, ... of live process ``pid`` (Linux /proc)."""
    from pathlib import Path

    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if pid == ancestor:
            return True
    return False


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import os
    import signal
    import time

    before = getattr(session.config, "_servers_before", set())
    factory = getattr(session.config, "_tmp_path_factory", None)
    basetemp = str(factory.getbasetemp()) if factory is not None else None
    deadline = time.monotonic() + 15  # a server stopped by the last teardown may still be exiting
    while True:
        # this session's: under its own temporary directory or below this process (another test
        # session on the machine, e.g. a CI run of a clone, has servers of its own)
        left = {pid: cmd for pid, cmd in _server_processes().items()
                if pid not in before and ((basetemp is not None and basetemp in cmd) or _descends_from(pid, os.getpid()))}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if left:
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        listing = "\n".join(f"  {pid}: {cmd[:200]}" for pid, cmd in left.items())
        print(f"\nFAILED: the tests left {len(left)} tritonserver/stub process(es) running (now killed):\n{listing}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
