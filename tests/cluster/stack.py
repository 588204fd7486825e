"""The cluster the tests run against, and plain HTTP to it.

Every request goes on a new connection: HAProxy then balances each one, and
a test that means to reach one server (its own port) reaches exactly that one.
"""

import http.client
import importlib.util
import json
import os
import random
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

BASE_DIR = Path(__file__).resolve().parents[2]

# What the session's cluster is started with (conftest.py), and what the
# tests rely on: how many servers and web processes there are, the limits
# they are held to.
SERVERS = 3
WEB_CONCURRENCY = 2
# Low enough to reach in a few requests; per hour, so that a window boundary
# falls within a test almost never (test_throttling.py checks it did not).
READ_ONLY_REQUESTS_PER_HOUR = 9
# Explicit, so that the tries of a waiting capture are counted whatever the
# environment says (test_long_polling.py reads the count).
WORKER_RATE = "100000/min"
TOKEN_CACHE_SECONDS = 2

T = TypeVar("T")


def load_supervisor() -> ModuleType:
    """scripts/supervisor.py, which is a script, not a package module."""
    spec = importlib.util.spec_from_file_location(
        "taskq_supervisor", BASE_DIR / "scripts" / "supervisor.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_base_port(count: int) -> int:
    """A port that is free on 127.0.0.1 with the `count - 1` ports after it."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - count)
        if all(_is_free(base + n) for n in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports found")


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def group_alive(pgid: int) -> bool:
    """Whether any process is left in the process group (the stack starts
    each of its processes in a group of its own)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(condition: Callable[[], T], seconds: float, what: str) -> T:
    """Poll `condition` until it returns something true; return that."""
    deadline = time.monotonic() + seconds
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.02)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: object = None,
    timeout: float = 10.0,
) -> Answer:
    """One request on a connection of its own (raises OSError on no answer)."""
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body)
        headers["Content-Type"] = "application/json"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        return Answer(
            response.status,
            {name.lower(): value for name, value in response.getheaders()},
            response.read(),
        )
    finally:
        conn.close()


def answers_200(port: int, path: str = "/healthz") -> bool:
    try:
        return request(port, "GET", path, timeout=2).status == 200
    except OSError:
        return False


@dataclass
class Cluster:
    """A running `scripts/cluster.py run`: HAProxy on `port`, app servers on theirs."""

    directory: Path
    port: int
    servers: dict[str, int]
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log: Path

    def state(self) -> dict[str, Any]:
        """The supervisor's stack.json (replaced whole on each change)."""
        state: dict[str, Any] = json.loads((self.directory / "run" / "stack.json").read_text())
        return state

    def pid(self, name: str) -> int:
        return int(self.state()["processes"][name]["pid"])

    def environ(self, name: str) -> dict[str, str]:
        """The environment the stack's process `name` was started with."""
        raw = Path(f"/proc/{self.pid(name)}/environ").read_bytes()
        pairs = (entry.partition(b"=") for entry in raw.split(b"\0") if entry)
        return {key.decode(): value.decode() for key, _, value in pairs}

    @property
    def cache_url(self) -> str:
        """The shared Django cache (Redis) the app servers were given."""
        return self.environ("app1")["TASKQ_CACHE_URL"]

    def is_whole(self) -> bool:
        """HAProxy and every app server answer /healthz with 200."""
        return all(answers_200(port) for port in (self.port, *self.servers.values()))

    def metric(self, server: str, prefix: str) -> float:
        """The value of the first sample of a server's /metrics that starts with `prefix`."""
        token = os.environ.get("TASKQ_METRICS_TOKEN")
        text = request(self.servers[server], "GET", "/metrics", token=token).body.decode()
        for line in text.splitlines():
            if line.startswith(prefix):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
