"""Fixtures that run a real `herald serve` and talk to it through the official Huawei Cloud SDK.

One server runs per test session, on 127.0.0.1 with an ephemeral port and a temporary data
dir, without --allow-private-targets. Every test gets its own project id (32 lowercase hex,
like a Huawei project id) and its own AK/SK made with `herald credentials create`.
The server's stderr goes to <pytest basetemp>/herald*/herald.stderr.log. Tests that deliver
callbacks to a receiver on 127.0.0.1 use `herald_private`, a second server (started on first
use) that runs with --allow-private-targets; its stderr is in herald-private*/herald.stderr.log.

Environment:
  HERALD_BIN            path of the herald binary (default <repo>/target/debug/herald)
  HERALD_START_TIMEOUT  seconds to wait for the `listening on` line (default 30)
  HERALD_TEST_BACKEND   `postgres` runs each server (and its CLI) on a fresh schema of
                        HERALD_TEST_DATABASE_URL, made and dropped with psql; unset or
                        `embedded` for the embedded store
"""

import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkcore.http.http_handler import HttpHandler
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer
from huaweicloudsdklive.v1 import LiveClient

REPO = Path(__file__).resolve().parents[2]
HERALD_BIN = Path(os.environ.get("HERALD_BIN", REPO / "target" / "debug" / "herald"))
START_TIMEOUT = float(os.environ.get("HERALD_START_TIMEOUT", "30"))
TEST_BACKEND = os.environ.get("HERALD_TEST_BACKEND") or "embedded"
STOP_TIMEOUT = 15

# `requests` (used by the SDK and by the raw tests) honours *_PROXY; keep loopback direct.
_no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY"), os.environ.get("no_proxy"),
                                   "127.0.0.1", "localhost"]))
os.environ["NO_PROXY"] = os.environ["no_proxy"] = _no_proxy


class Herald:
    """A running `herald serve` plus its CLI bound to the same data dir."""

    def __init__(self, proc, base_url, data_dir, log_path, env):
        self.proc, self.base_url, self.data_dir, self.log_path = proc, base_url, data_dir, log_path
        self.host = urlparse(base_url).netloc
        self.env = env

    def cli(self, *args):
        """Run `herald ARGS --data-dir DIR --json` and return its one-line JSON output."""
        cmd = [str(HERALD_BIN), *args, "--data-dir", str(self.data_dir), "--json"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=self.env)
        assert done.returncode == 0, f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr}"
        lines = done.stdout.strip().splitlines()
        assert lines, f"{' '.join(cmd)} printed nothing; stderr:\n{done.stderr}"
        return json.loads(lines[-1])


def _stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _read_lines(stream, out):
    for line in stream:
        out.put(line)
    out.put(None)  # EOF: the server closed stdout (normally because it exited)


def _wait_listening(proc, lines, log_path, deadline):
    seen = []
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            break
        if line is None:  # stdout closed: give the exit status a moment to appear
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            break
        m = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)", line.strip())
        if m:
            return m.group(1)
        seen.append(line)
    why = f"exited with code {proc.poll()}" if proc.poll() is not None else f"timed out after {START_TIMEOUT}s"
    _stop(proc)
    pytest.fail(f"`herald serve` never printed 'listening on http://127.0.0.1:PORT' ({why}); "
                f"stdout: {seen!r}\n"
                f"stderr:\n{log_path.read_text(errors='replace')[-4000:]}")


def _wait_healthy(base_url, proc, log_path, deadline):
    while True:
        try:
            if requests.get(base_url + "/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            _stop(proc)
            pytest.fail(f"GET {base_url}/healthz never answered 200; stderr:\n"
                        f"{log_path.read_text(errors='replace')[-4000:]}")
        time.sleep(0.05)  # poll interval, bounded by the deadline


def _psql(url, sql):
    done = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"psql {sql!r}: {done.stderr}"


def _store(name):
    """The environment that puts a server on its backend, and a function that cleans up.

    On PostgreSQL every server gets a schema of its own (its data dir holds its own master
    key). The name carries this process's pid, so a schema left behind by a run that died
    is dropped by the next Rust test run (herald_store::testing drops orphans by pid).
    """
    env = dict(os.environ)
    env.pop("HERALD_DATABASE_URL", None)
    if TEST_BACKEND == "embedded":
        return env, lambda: None
    if TEST_BACKEND != "postgres":
        pytest.fail(f"HERALD_TEST_BACKEND={TEST_BACKEND}: expected postgres or embedded")
    base = os.environ.get("HERALD_TEST_DATABASE_URL")
    if not base:
        pytest.fail("HERALD_TEST_BACKEND=postgres needs HERALD_TEST_DATABASE_URL")
    schema = f"herald_test_{os.getpid()}_py{name.replace('-', '')}{uuid.uuid4().hex[:8]}"
    _psql(base, f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in base else "?"
    env["HERALD_DATABASE_URL"] = f"{base}{sep}options=-c%20search_path%3D{schema}"
    return env, lambda: _psql(base, f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _serve(tmp_path_factory, name, *extra_args):
    """Run `herald serve` on 127.0.0.1:0 with a fresh data dir; yield a Herald, stop it after."""
    if not (HERALD_BIN.is_file() and os.access(HERALD_BIN, os.X_OK)):
        pytest.fail(f"herald binary not found at {HERALD_BIN}: run `cargo build` or set HERALD_BIN")
    root = tmp_path_factory.mktemp(name)
    data_dir, log_path = root / "data", root / "herald.stderr.log"
    data_dir.mkdir()
    env, cleanup = _store(name)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(HERALD_BIN), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir), *extra_args],
            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True, env=env)
    lines = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT
    base_url = _wait_listening(proc, lines, log_path, deadline)
    _wait_healthy(base_url, proc, log_path, deadline)
    try:
        yield Herald(proc, base_url, data_dir, log_path, env)
    finally:
        _stop(proc)
        cleanup()


@pytest.fixture(scope="session")
def herald(tmp_path_factory):
    yield from _serve(tmp_path_factory, "herald")


@pytest.fixture(scope="session")
def herald_private(tmp_path_factory):
    """A second server, run with --allow-private-targets, for end-to-end delivery tests."""
    yield from _serve(tmp_path_factory, "herald-private", "--allow-private-targets")


@pytest.fixture(scope="session")
def base_url(herald):
    return herald.base_url


@pytest.fixture
def project():
    return uuid.uuid4().hex


@pytest.fixture
def creds(herald, project):
    """{"project_id", "access_key", "secret_key"} for this test's project."""
    c = herald.cli("credentials", "create", "--project", project)
    assert c["project_id"] == project and c["access_key"] and c["secret_key"], c
    return c


@pytest.fixture
def make_client(base_url):
    """Build a LiveClient the way a user would, with only the endpoint changed.

    with_endpoints() keeps an endpoint that starts with "http" as is (http:// works; others get
    https:// prepended). HttpConfig defaults: no proxy unless configured, retry_times=0 (only
    429 would be retried), ssl verification irrelevant for http. on_response sees every raw
    `requests.Response` (the SDK models do not expose response headers).
    """
    clients = []

    def make(ak, sk, project_id, on_response=None):
        config = HttpConfig.get_default_config()
        config.retry_times = 0
        config.timeout = (5, 30)
        handler = HttpHandler()
        if on_response:
            handler.add_response_handler(lambda **kw: on_response(kw["response"]))
        client = (LiveClient.new_builder()
                  .with_http_config(config)
                  .with_credentials(BasicCredentials(ak, sk, project_id))
                  .with_endpoints([base_url])
                  .with_http_handler(handler)
                  .build())
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def sdk_responses():
    """Every raw HTTP response received by `live_client`, in order."""
    return []


@pytest.fixture
def live_client(make_client, creds, sdk_responses):
    return make_client(creds["access_key"], creds["secret_key"], creds["project_id"],
                       sdk_responses.append)


class RawApi:
    """Requests signed by the SDK's own Signer but sent with `requests`, so a test controls the wire."""

    def __init__(self, herald):
        self.base_url, self.host = herald.base_url, herald.host

    def sign(self, method, path, creds, *, query=(), body=None, headers=None):
        """Return a signed SdkRequest; `.uri` is the SDK's wire form (sorted query string)."""
        hdrs = {"Content-Type": "application/json", "X-Project-Id": creds["project_id"], **(headers or {})}
        if body is not None and not isinstance(body, (str, bytes)):
            body = json.dumps(body)
        req = SdkRequest(method=method, schema="http", host=self.host, resource_path=path,
                         query_params=list(query), header_params=hdrs, body=body)
        return Signer(BasicCredentials(creds["access_key"], creds["secret_key"])).sign(req)

    def send(self, req, *, uri=None, body=None, headers=None):
        """Send a signed request, optionally with another URI/body/headers than were signed."""
        return requests.request(req.method, self.base_url + (uri or req.uri),
                                headers={**req.header_params, **(headers or {})},
                                data=req.body if body is None else body,
                                timeout=30, allow_redirects=False)

    def call(self, method, path, creds, **kw):
        return self.send(self.sign(method, path, creds, **kw))

    def unsigned(self, method, path, **kw):
        return requests.request(method, self.base_url + path, timeout=30, allow_redirects=False, **kw)


@pytest.fixture
def raw(herald):
    return RawApi(herald)
