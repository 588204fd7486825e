"""The load of the fault-injection run: a registrar, lease workers and the drain.

The registrar and each worker run in a process of their own (spawned by
scripts/faults.py, so this module imports nothing but the standard library).
Every request is recorded, in the format `tests.faults.checker` reads, to a
JSON-lines file of the client's own: one line per request, flushed at once,
so that even a run that dies leaves its history behind.

Nothing here retries silently: a request that is sent again is a second
record. HTTP goes through `http.client`, one connection per request, so no
library resends a request on a connection it found closed.
"""

import http.client
import json
import random
import threading
import time
from pathlib import Path
from typing import Any, Protocol

# Far longer than a healthy answer takes, shorter than the nemesis pauses
# the database: those requests end as unknown outcomes.
HTTP_TIMEOUT = 4.0

# What a worker does with a lease, and how often.
ACTIONS = ("done", "failed", "idle", "extend", "stall")
WEIGHTS = (45, 15, 10, 15, 15)
# Lease jobs a worker runs at once before it captures again.
MAX_JOBS = 4


class Stop(Protocol):
    def is_set(self) -> bool: ...


class Recorder:
    def __init__(self, path: Path, client: str) -> None:
        self.client = client
        self.file = path.open("a", encoding="utf-8")
        # A worker's lease jobs run in threads and share its file.
        self.lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps({"client": self.client, **record}) + "\n"
        with self.lock:
            self.file.write(line)
            self.file.flush()

    def close(self) -> None:
        self.file.close()


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return {"raw": raw[:500].decode("utf-8", "replace")}


def _named(leases: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"id": lease["id"], "lease_token": lease["lease_token"]} for lease in leases]


class Api:
    def __init__(self, port: int, token: str, recorder: Recorder, timeout: float = HTTP_TIMEOUT):
        self.port = port
        self.token = token
        self.recorder = recorder
        self.timeout = timeout

    def call(self, op: str, method: str, path: str, body: Any) -> tuple[int | None, Any]:
        payload = None if body is None else json.dumps(body).encode()
        status: int | None = None
        answer: Any = None
        error: str | None = None
        send_wall, send = time.time(), time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            conn.request(
                method,
                path,
                body=payload,
                headers={
                    "Authorization": f"Bearer {self.token}",
                    "Content-Type": "application/json",
                },
            )
            response = conn.getresponse()
            raw = response.read()
            # Only a whole answer is an answer: a connection cut mid-body is unknown.
            status, answer = response.status, _decode(raw)
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        recv_wall, recv = time.time(), time.monotonic()
        self.recorder.write(
            {
                "op": op,
                "send": send,
                "recv": recv,
                "send_wall": send_wall,
                "recv_wall": recv_wall,
                "request": body,
                "status": status,
                "body": answer,
                "error": error,
            }
        )
        return status, answer

    def capture(self, namespace: str, limit: int) -> tuple[int | None, Any]:
        return self.call(
            "capture", "POST", "/v1/task/capture", {"namespace_id": namespace, "limit": limit}
        )

    def release(
        self, status: str, leases: list[dict[str, Any]], rng: random.Random, tries: int = 3
    ) -> int:
        """Release, sending again while the outcome is unknown, as a real worker would.

        Returns how many of the attempts had an unknown outcome.
        """
        body = {
            "status": status,
            "leases": _named(leases),
        }
        unknown = 0
        for _ in range(tries):
            code, _answer = self.call("release", "PUT", "/v1/task/release", body)
            if code is not None and code < 500:
                break
            unknown += 1
            time.sleep(rng.uniform(0.3, 1.0))
        return unknown

    def extend(self, leases: list[dict[str, Any]], seconds: int) -> None:
        body = {
            "leases": _named(leases),
            "timeout": seconds,
        }
        self.call("extend", "PUT", "/v1/task/extend", body)


def worker(
    index: int, port: int, token: str, namespace: str, seed: int, history: str, stop: Stop
) -> None:
    """Capture, and finish each lease one way or another, until told to stop.

    Each batch is finished by jobs in threads of their own, one per way of
    finishing, as a worker running a job per lease would; the worker captures
    again while they run, up to `MAX_JOBS` at once.
    """
    rng = random.Random(f"{seed}-worker-{index}")
    recorder = Recorder(Path(history) / f"w{index}.jsonl", f"w{index}")
    api = Api(port, token, recorder)
    jobs: list[threading.Thread] = []
    try:
        while not stop.is_set():
            jobs = [job for job in jobs if job.is_alive()]
            if len(jobs) >= MAX_JOBS:
                time.sleep(0.05)
                continue
            status, body = api.capture(namespace, rng.randint(1, 3))
            if status != 200:
                time.sleep(rng.uniform(0.2, 0.6))
                continue
            if not body["list"]:
                time.sleep(rng.uniform(0.05, 0.25))
                continue
            jobs += _start_jobs(api, body["list"], rng)
    finally:
        for job in jobs:
            job.join()
        recorder.close()


def _start_jobs(
    api: Api, leases: list[dict[str, Any]], rng: random.Random
) -> list[threading.Thread]:
    planned: dict[str, list[dict[str, Any]]] = {action: [] for action in ACTIONS}
    for lease in leases:
        planned[rng.choices(ACTIONS, WEIGHTS)[0]].append(lease)
    jobs = [
        threading.Thread(target=_finish, args=(api, action, chosen, random.Random(rng.random())))
        for action, chosen in planned.items()
        if chosen
    ]
    for job in jobs:
        job.start()
    return jobs


def _finish(api: Api, action: str, leases: list[dict[str, Any]], rng: random.Random) -> None:
    time.sleep(rng.uniform(0, 0.3))
    if action in ("done", "failed", "idle"):
        api.release(action, leases, rng)
    elif action == "extend":
        # Work longer than the lease, kept alive by one heartbeat halfway.
        # Extending by the longest timeout never shortens a lease.
        half = 0.6 * min(lease["timeout"] for lease in leases)
        time.sleep(half)
        api.extend(leases, max(lease["timeout"] for lease in leases))
        time.sleep(half)
        api.release("done", leases, rng)
    else:
        # Past the lease: by now the sweeper or another worker may have it.
        time.sleep(max(lease["timeout"] for lease in leases) + rng.uniform(0.3, 1.5))
        api.release("done", leases, rng)


def registrar(
    port: int, token: str, namespace: str, seed: int, history: str, stop: Stop, rate: float
) -> None:
    """Register batches of new tasks, about `rate` tasks a second, until told to stop.

    Ids are never sent twice, even after an unknown outcome, so whether a
    task exists tells which request made it.
    """
    rng = random.Random(f"{seed}-registrar")
    recorder = Recorder(Path(history) / "registrar.jsonl", "registrar")
    api = Api(port, token, recorder)
    batch = 0
    try:
        while not stop.is_set():
            count = rng.randint(1, 10)
            tasks = [
                {
                    "id": f"t{batch:05d}-{i}",
                    "namespace_id": namespace,
                    "timeout": rng.randint(2, 4),
                    "retries_left": 2,
                }
                for i in range(count)
            ]
            api.call("register", "POST", "/v1/task", tasks)
            batch += 1
            time.sleep(count / rate * rng.uniform(0.5, 1.5))
    finally:
        recorder.close()


def drain(api: Api, namespace: str, rng: random.Random, max_unknown: int = 20) -> int:
    """Capture and release done until nothing is capturable; the unknown outcomes met.

    A drain that met none has seen every capturable task through to done.
    """
    unknown = 0
    while unknown < max_unknown:
        status, body = api.capture(namespace, 100)
        if status != 200:
            unknown += 1
            time.sleep(0.5)
            continue
        if not body["list"]:
            break
        unknown += api.release("done", body["list"], rng, tries=5)
    return unknown
