"""`tritonrec serve` cannot be crashed, wedged or hijacked from the network, cleans up after itself
and reports failure truthfully (each test names the defect it guards against).

Defects reproduced on aa33caf: a nested JSON body crashed the server over HTTP and left a stub and
its shared memory behind; another model's shared-memory region could be registered and used;
``plan``/``store``/``scorer`` parameters read files outside the repository; ``serve REPO
--http-port P -- OPTION`` failed to parse; a server outlived a killed ``tritonrec serve``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest

from tritonrec.serving.client import infer
from tritonrec.export import export_ensemble
from tritonrec.serving.server import SHM_DIR, TritonServer, child_processes, free_port, process_group_members

pytestmark = pytest.mark.triton
TRITONREC = str(Path(sys.executable).parent / "tritonrec")
NESTED_BODY = b"[" * 200_000 + b"]" * 200_000  # Triton 2.51's JSON parser recurses once per level


@pytest.fixture(scope="module")
def repo(criteo_trained, tmp_path_factory):
    pipeline = criteo_trained["pipeline"]
    path = tmp_path_factory.mktemp("secure") / "repo"
    export_ensemble(pipeline.workflow_dir, pipeline.store_dir, pipeline.scorer_dir, path, "criteo", max_batch_size=64)
    return path


class Cli:
    """A running ``tritonrec serve`` and the endpoints it printed."""

    def __init__(self, repo: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen([TRITONREC, "serve", str(repo), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=env)
        self.lines: list[str] = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        self.endpoints = {parts[0]: parts[1] for parts in (line.split() for line in self.lines[1:]) if len(parts) >= 2}
        assert "gRPC" in self.endpoints, "".join(self.lines) + self.process.stderr.read()

    @property
    def grpc(self) -> str:
        return self.endpoints["gRPC"]

    def server_pid(self) -> int:
        """The tritonserver this CLI started (its child)."""
        children = child_processes(self.process.pid, "tritonserver")
        assert len(children) == 1, f"tritonserver children of the CLI: {children}"
        return children[0]

    def finish(self, sig: int = signal.SIGTERM, timeout: float = 90) -> tuple[int, str, str]:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        out, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, "".join(self.lines) + out, err


def _listening_ports(pid: int) -> set[int]:
    """TCP ports process ``pid`` listens on (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _gone(pgid: int, prefix: str, timeout: float = 30) -> tuple[list[int], list[str]]:
    """Waits for the group and the shared-memory regions to go; returns what is left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left, regions = process_group_members(pgid), [p.name for p in SHM_DIR.glob(f"{prefix}*")]
        if not left and not regions:
            break
        time.sleep(0.2)
    return left, regions


def _post(host_port: str, path: str, body: bytes) -> str:
    import http.client

    host, port = host_port.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        return str(connection.getresponse().status)
    except (ConnectionError, http.client.HTTPException) as e:
        return type(e).__name__
    finally:
        connection.close()


def _lookup_answers(grpc_url: str) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        return infer(client, "criteo_embeddings", {"ids": np.zeros((2, 26), np.int64)}, ["embeddings"])["embeddings"]
    finally:
        client.close()


def test_stock_serve_is_grpc_only_admin_is_closed_and_a_killed_cli_takes_its_server_along(repo):
    """Defects 1, 2 and 5: no HTTP endpoint for a nested body to crash; the shared-memory and other
    admin APIs refused (another model's region cannot be registered); canaries pass; SIGKILL of
    the CLI ends tritonserver, its stubs and their shared memory."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    cli = Cli(repo, "--canary-interval", "0.5")
    try:
        assert cli.endpoints["HTTP"] == "off"
        server = cli.server_pid()
        grpc_port, metrics_port = int(cli.grpc.rsplit(":", 1)[1]), int(cli.endpoints["metrics"].rsplit(":", 1)[1].split("/")[0])
        assert _listening_ports(server) == {grpc_port, metrics_port}
        assert "--http-address" not in Path(f"/proc/{server}/cmdline").read_text()
        assert _post(f"127.0.0.1:{metrics_port}", "/v2/models/criteo/infer", NESTED_BODY) != "RemoteDisconnected"
        before = _lookup_answers(cli.grpc)

        client = grpcclient.InferenceServerClient(cli.grpc)
        regions = [p for p in SHM_DIR.glob(f"tritonrec_{cli.process.pid}_*")]
        assert regions, "the Python backend's regions carry the CLI's unique prefix"
        for call in (
            lambda: client.register_system_shared_memory("stolen", "/" + regions[0].name, 1024),
            lambda: client.get_model_repository_index(),
            lambda: client.unload_model("criteo_embeddings"),
            lambda: client.update_log_settings({"log_verbose_level": 1}),
        ):
            with pytest.raises(InferenceServerException, match="restricted"):
                call()
        # statistics stay open (read-only, what the metrics endpoint says too; perf_analyzer reads them)
        assert client.get_inference_statistics("criteo_embeddings", as_json=True)["model_stats"]
        client.close()
        np.testing.assert_array_equal(_lookup_answers(cli.grpc), before)

        deadline = time.monotonic() + 30
        metrics = ""
        while time.monotonic() < deadline and 'tritonrec_canary_ok{model="criteo"} 1.0' not in metrics:
            time.sleep(0.5)
            metrics = urllib.request.urlopen(cli.endpoints["canary"], timeout=5).read().decode()
        for model in ("criteo", "criteo_transform", "criteo_embeddings", "criteo_scorer"):
            assert f'tritonrec_canary_ok{{model="{model}"}} 1.0' in metrics, metrics
            assert f'tritonrec_canary_failures_total{{model="{model}"}} 0.0' in metrics, metrics

        cli.process.send_signal(signal.SIGKILL)
        cli.process.communicate(timeout=30)
        left, regions = _gone(server, f"tritonrec_{cli.process.pid}_")
        assert not left and not regions, (left, regions)
    finally:
        if cli.process.poll() is None:
            cli.finish()


def test_admin_key_opens_admin_apis_and_is_never_printed(repo, tmp_path):
    """The key comes from a file or the environment; clients send it as a header; nothing prints it.
    Options after -- reach tritonserver wherever tritonrec's own options stand (defect 4)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    key = "k3y-" + os.urandom(12).hex()
    key_file = tmp_path / "admin.key"
    key_file.write_text(key + "\n")
    http_port = free_port()
    cli = Cli(repo, "--http", "--http-port", str(http_port), "--admin-key-file", str(key_file), "--canary-interval", "0",
              "--", "--log-info=true")
    try:
        assert cli.endpoints["HTTP"] == f"127.0.0.1:{http_port}"
        client = grpcclient.InferenceServerClient(cli.grpc)
        with pytest.raises(InferenceServerException, match="restricted"):
            client.get_model_repository_index()
        with pytest.raises(InferenceServerException, match="restricted"):
            client.get_model_repository_index(headers={"triton-grpc-protocol-admin-key": "wrong-" + key})
        index = client.get_model_repository_index(headers={"triton-grpc-protocol-admin-key": key}, as_json=True)
        assert {m["name"] for m in index["models"]} == {"criteo", "criteo_transform", "criteo_embeddings", "criteo_scorer"}
        region = shared_memory.SharedMemory(create=True, size=64)
        try:
            client.register_system_shared_memory("ours", "/" + region.name, 64, headers={"triton-grpc-protocol-admin-key": key})
            client.unregister_system_shared_memory("ours", headers={"triton-grpc-protocol-admin-key": key})
        finally:
            region.close()
            region.unlink()
        client.close()
        request = urllib.request.Request(f"http://127.0.0.1:{http_port}/v2/repository/index", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403
        request.add_header("admin-key", key)
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
        code, out, err = cli.finish()
        assert code == 0, err
        log = Path(cli.endpoints["log"]).read_text()
        assert key not in out and key not in err and key not in log
    finally:
        if cli.process.poll() is None:
            cli.finish()
    env = {**os.environ, "TRITONREC_ADMIN_KEY": "short"}
    result = subprocess.run([TRITONREC, "serve", str(repo)], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1 and "$TRITONREC_ADMIN_KEY: the admin key must be 16 to 256 characters" in result.stderr
    assert "short" not in result.stderr


def test_a_crashed_server_is_reported_cleaned_up_and_restarted(repo):
    """Defect 1: with --http the nested body still crashes Triton 2.51 (its parser, not ours); the
    supervisor says why, ends the stubs, removes their shared memory and restarts the server."""
    cli = Cli(repo, "--http", "--restart", "1", "--canary-interval", "0")
    try:
        before = _lookup_answers(cli.grpc)
        first = cli.server_pid()
        assert _post(cli.endpoints["HTTP"], "/v2/models/criteo/infer", NESTED_BODY) == "RemoteDisconnected"
        deadline = time.monotonic() + 30
        while process_group_members(first) and time.monotonic() < deadline:  # the old group ends
            time.sleep(0.2)
        assert not process_group_members(first)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = cli.process.stdout.readline()
            cli.lines.append(line)
            if line.startswith("tritonserver ready again") or not line:
                break
        assert cli.lines[-1].startswith("tritonserver ready again (restart 1 of 1)"), "".join(cli.lines)
        np.testing.assert_array_equal(_lookup_answers(cli.grpc), before)
        # the second crash exceeds --restart 1: exit 1, everything cleaned up
        second = cli.server_pid()
        assert second != first
        # the repository API is an admin API: refused before its body is parsed
        assert _post(cli.endpoints["HTTP"], "/v2/repository/index", NESTED_BODY) == "403"
        assert _post(cli.endpoints["HTTP"], "/v2/models/criteo_scorer/infer", NESTED_BODY) == "RemoteDisconnected"
        code, err = cli.process.wait(timeout=120), cli.process.stderr.read()
        assert code == 1
        assert err.count("tritonserver died (signal 11 (SIGSEGV))") == 2, err
        assert "restarting tritonserver in 1 s (restart 1 of 1)" in err and "no restarts left (1 used)" in err
        assert "last lines of" in err
        left, regions = _gone(second, f"tritonrec_{cli.process.pid}_")
        assert not left and not regions, (left, regions)
    finally:
        if cli.process.poll() is None:
            cli.finish()


@pytest.mark.parametrize(
    ("option", "reason"),
    [
        ("--no-such-option=1", "tritonserver does not know the option '--no-such-option=1'"),
        ("--log-verbose=abc", "tritonserver rejected the option --log-verbose: Invalid option value. Got abc"),
    ],
)
def test_a_bad_tritonserver_option_is_named(repo, option, reason):
    """Defect 4: the README's order (tritonrec options, then -- and tritonserver's) parses, and a bad
    pass-through option is named in one line."""
    result = subprocess.run([TRITONREC, "serve", str(repo), "--grpc-port", str(free_port()), "--", option],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and reason in result.stderr, result.stderr


def test_options_tritonrec_sets_itself_are_refused_after_the_double_dash(repo):
    result = subprocess.run([TRITONREC, "serve", str(repo), "--", "--grpc-restricted-protocol=health:a=b"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--grpc-restricted-protocol after --: tritonrec serve sets it itself" in result.stderr
    result = subprocess.run([TRITONREC, "serve", str(repo), "--http-port", "1234"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--http-port needs --http" in result.stderr


# -- paths in model parameters (defect 3) -------------------------------------------------------

def _rename(source: Path, target: Path, name: str, replace: dict[str, str]) -> None:
    (target / "1").mkdir(parents=True)
    config = (source / "config.pbtxt").read_text().replace(f'name: "{source.name}"', f'name: "{name}"')
    for old, new in replace.items():
        assert old in config
        config = config.replace(old, new)
    (target / "config.pbtxt").write_text(config)


def test_parameters_cannot_name_files_outside_the_repository(repo, tmp_path):
    work = tmp_path
    bad = work / "repo"
    shutil.copytree(repo, bad)
    shutil.copytree(repo / "criteo_transform" / "1" / "plan", work / "elsewhere")
    shutil.copytree(repo / "criteo_embeddings" / "1" / "store", work / "elsewhere_store")
    plan = 'key: "plan" value: { string_value: "plan" }'
    store = 'key: "store" value: { string_value: "store" }'
    scorer = 'key: "scorer" value: { string_value: "scorer" }'
    models = {
        "escape_plan": ("criteo_transform", {plan: 'key: "plan" value: { string_value: "../../../elsewhere" }'}),
        "absolute_store": ("criteo_embeddings", {store: f'key: "store" value: {{ string_value: "{work / "elsewhere_store"}" }}'}),
        "passwd_scorer": ("criteo_scorer", {scorer: 'key: "scorer" value: { string_value: "/etc/passwd" }'}),
        "linked_plan": ("criteo_transform", {}),
        "allowed_passwd": ("criteo_scorer", {scorer: 'key: "scorer" value: { string_value: "/etc/passwd" } } '
                                                   'parameters { key: "allow_outside_repository" value: { string_value: "true" }'}),
        "allowed_plan": ("criteo_transform", {plan: f'key: "plan" value: {{ string_value: "{work / "elsewhere"}" }} }} '
                                                    'parameters { key: "allow_outside_repository" value: { string_value: "true" }'}),
    }
    for name, (source, replace) in models.items():
        _rename(bad / source, bad / name, name, replace)
    (bad / "linked_plan" / "1" / "plan").symlink_to(work / "elsewhere")
    with TritonServer(bad, extra_args=("--exit-on-error=false", "--strict-readiness=false")) as server:
        log = server.log()
        for name, reason in (
            ("escape_plan", f"parameter 'plan' is '../../../elsewhere', which resolves to {work / 'elsewhere'}, outside the model repository {bad}"),
            ("absolute_store", f"parameter 'store' is '{work / 'elsewhere_store'}', which resolves to {work / 'elsewhere_store'}, outside the model repository"),
            ("passwd_scorer", "parameter 'scorer' is '/etc/passwd', which resolves to /etc/passwd, outside the model repository"),
            ("linked_plan", f"parameter 'plan' is 'plan', which resolves to {work / 'elsewhere'}, outside the model repository"),
            ("allowed_passwd", "parameter 'scorer' is '/etc/passwd', which resolves to /etc/passwd: expected a directory, found a file"),
        ):
            assert f"model '{name}': {reason}" in log, (name, log[-3000:])
            with pytest.raises(urllib.error.HTTPError):
                urllib.request.urlopen(f"http://{server.http_url}/v2/models/{name}/ready", timeout=5)
        with urllib.request.urlopen(f"http://{server.http_url}/v2/models/allowed_plan/ready", timeout=5) as ready:
            assert ready.status == 200
        assert "Traceback" not in log and "NotADirectoryError" not in log
