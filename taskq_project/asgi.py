"""The web application as `make run` and production serve it: uvicorn workers under gunicorn.

Each worker process runs an event loop that reads every request whole, head
and body, before a thread is given to it. A client that trickles its request
in costs a socket and a few kilobytes, never one of the threads that run
Django, so slow clients cannot stall anyone else.

On the way in, `application` bounds what a request may send before anything
is kept: a request target over `MAX_TARGET_BYTES` answers 414, a body over
`TASKQ_MAX_BODY_BYTES` (declared, or counted as chunks arrive) answers 413,
both as JSON, and an oversized body is not read any further. (The request
head is bounded by taskq_project.server.)

The complete request then goes to Django's WSGI handler on a fixed pool of
`GUNICORN_THREADS` threads per process (4 by default). Django's own ASGI handler was measured
and not chosen: it starts a thread per request and hops between the loop and
threads several times for every request (half the capture and release
throughput at batch size 1, docs/benchmarks.md), and its short-lived threads
cannot keep persistent database connections. Here each thread keeps its
connection (`DATABASE_CONN_MAX_AGE`) as gunicorn's threads did, and a
request crosses from the loop to a thread and back once.
"""

import asyncio
import io
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskq_project.settings")

from django.conf import settings
from django.core.wsgi import get_wsgi_application

from taskq_project import http_metrics
from tasks_app import waiting

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

django_application = get_wsgi_application()

# The longest path and query string accepted: a list filtered by several
# statuses and a cursor, with percent-encoded ids, fits.
MAX_TARGET_BYTES = 8190
# Requests are short and mostly wait on PostgreSQL: a few threads per process
# keep it busy, each with its own database connection.
WEB_THREADS = int(os.environ.get("GUNICORN_THREADS", "4"))
# How long a complete request may wait for a free thread before it is
# answered 503 without running: when every thread waits on a database that
# has frozen, clients and load balancers still hear an answer.
QUEUE_SECONDS = float(os.environ.get("TASKQ_WEB_QUEUE_SECONDS", "10"))
# A response up to this size is sent in one piece once Django is done with
# it; a larger one (a static file) is sent as it is produced.
BUFFERED_RESPONSE_BYTES = 1 << 20

_executors: dict[str, ThreadPoolExecutor] = {}
# The health check has threads of its own: a load balancer still hears how
# the server is when every request thread waits on the database.
HEALTH_PATHS = frozenset({"/healthz", "/healthz/"})
HEALTH_THREADS = 2


def executor(path: str = "") -> ThreadPoolExecutor:
    # Made on first use, in the worker process: threads do not survive a fork.
    name = "health" if path in HEALTH_PATHS else "web"
    if name not in _executors:
        size = HEALTH_THREADS if name == "health" else WEB_THREADS
        _executors[name] = ThreadPoolExecutor(max_workers=size, thread_name_prefix=f"taskq-{name}")
    return _executors[name]


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    # Counted here, once the answer has started, so that a long-polling
    # capture counts once, with its wait, and the answers given before Django
    # (413, 414, a full queue's 503) count too. Django names the route in the
    # box (taskq_project.http_metrics.RouteMiddleware).
    started = time.perf_counter()
    box: dict[str, Any] = {}
    scope[http_metrics.OBSERVED_KEY] = box

    async def observed_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            box["code"] = message["status"]
        await send(message)

    try:
        await _serve(scope, receive, observed_send)
    finally:
        if "code" in box:
            http_metrics.observe(
                route=box.get("route") or http_metrics.route_of_path(scope["path"]),
                method=scope["method"],
                code=box["code"],
                seconds=time.perf_counter() - started,
            )


async def _serve(scope: Scope, receive: Receive, send: Send) -> None:
    target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    if target > MAX_TARGET_BYTES:
        await answer(
            send,
            414,
            "uri_too_long",
            f"Request target too long: at most {MAX_TARGET_BYTES} bytes of path and query.",
        )
        return
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    declared = content_length(scope)
    if declared is not None and limit is not None and declared > limit:
        await answer(send, 413, "payload_too_large", too_large(limit))
        return
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            # Not a close: the server drops the rest of the body as it comes,
            # so the client can finish sending and read this answer (a close
            # with its data unread would reach it as a reset instead).
            await answer(send, 413, "payload_too_large", too_large(limit), close=False)
            return
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    wait = waiting.requested(scope, body)
    if wait is not None:
        await waiting_capture(scope, body, receive, send, *wait)
        return
    response = await run(scope, body, send)
    if response is not None:
        await respond_with(response, scope, send)


async def run(scope: Scope, body: bytes, send: Send) -> "Response | None":
    """Django's answer to the request, from a pool thread; None when this
    function has answered instead (no thread free in time, or a failure)."""
    loop = asyncio.get_running_loop()
    ticket = Ticket()
    future = loop.run_in_executor(executor(scope["path"]), ticket.run, wsgi_environ(scope, body))
    try:
        done, _ = await asyncio.wait({future}, timeout=QUEUE_SECONDS)
        if not done and ticket.abandon():
            future.cancel()
            await answer(
                send,
                503,
                "server_busy",
                f"No thread of this server was free for {QUEUE_SECONDS:g}s; nothing was done.",
                retry_after=1,
            )
            return None
        return await future
    except Exception:
        log.exception("the request could not be served")
        await answer(send, 500, "error", "Internal server error.")
        return None


async def respond_with(response: "Response", scope: Scope, send: Send) -> None:
    status, headers, body, rest = response
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if rest is None:
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.body", "body": body, "more_body": True})
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(executor(scope["path"]), stream, rest, loop, send)


# What a capture that leased nothing answers (tasks_app's renderer is compact).
EMPTY_CAPTURE = b'{"list":[]}'


async def waiting_capture(
    scope: Scope, body: bytes, receive: Receive, send: Send, namespace_id: str, wait: int
) -> None:
    """A capture with `wait`: tried at once, then again each time the
    namespace's waiters are woken (tasks_app.waiting), until it leases
    something, `wait` seconds pass, or the client goes away.

    Each try is an ordinary request through Django (authentication, roles,
    throttling, validation, the capture statement); no thread is held while
    it waits. A client that leaves is never answered, and no try starts after
    it left; a lease taken in the instant it left simply expires.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    hub = waiting.process_hub()
    waiter = hub.enter(namespace_id)
    gone = asyncio.Event()
    watcher = loop.create_task(_watch_disconnect(receive, gone))
    woken_before = False
    try:
        while True:
            response = await run(scope, body, send)
            if response is None:
                return
            status, _, answer_body, _ = response
            got = status == 200 and answer_body != EMPTY_CAPTURE
            if got or woken_before:
                # (A first try that found nothing tells the hub nothing new.)
                hub.captured(waiter, got=got)
            remaining = deadline - loop.time()
            if gone.is_set():
                return
            if got or status != 200 or remaining <= 0:
                await respond_with(response, scope, send)
                return
            woken = loop.create_task(hub.wait(waiter, remaining))
            left = loop.create_task(gone.wait())
            await asyncio.wait({woken, left}, return_when=asyncio.FIRST_COMPLETED)
            left.cancel()
            if gone.is_set():
                woken.cancel()
                return
            if not woken.result():
                await respond_with(response, scope, send)
                return
            woken_before = True
    finally:
        watcher.cancel()
        hub.leave(waiter)


async def _watch_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    # The body has been read: the next message is the client going away.
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return


Response = tuple[int, list[tuple[bytes, bytes]], bytes, Iterable[bytes] | None]


class Ticket:
    """A request's place in the queue for a thread: it runs, or is abandoned, never both.

    Only a request that has not started can be abandoned, so a 503 for a
    full queue means that nothing was done. One that has started is waited
    for: its statements are bounded by the database's statement timeout.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state = "queued"

    def abandon(self) -> bool:
        with self.lock:
            if self.state == "queued":
                self.state = "abandoned"
                return True
            return False

    def run(self, environ: dict[str, Any]) -> Response:
        with self.lock:
            if self.state == "abandoned":
                return (503, [], b"", None)  # never sent: the loop has answered
            self.state = "running"
        return respond(environ)


def respond(environ: dict[str, Any]) -> Response:
    """Django's answer, in a pool thread: its status, headers and body.

    A body over BUFFERED_RESPONSE_BYTES comes back started, with the rest of
    its iterator, which `stream` finishes.
    """
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started[:] = [status, headers]
        return None

    iterable: Any = django_application(environ, start_response)
    parts: list[bytes] = []
    size = 0
    iterator = iter(iterable)
    try:
        for part in iterator:
            parts.append(part)
            size += len(part)
            if size > BUFFERED_RESPONSE_BYTES:
                break
        else:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()
            iterable = None
    except BaseException:
        close = getattr(iterable, "close", None)
        if close is not None:
            close()
        raise
    status, headers = started
    encoded = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    rest = None if iterable is None else _closing(iterator, iterable)
    return int(status.split(" ", 1)[0]), encoded, b"".join(parts), rest


def _closing(iterator: Iterable[bytes], iterable: Any) -> Iterable[bytes]:
    try:
        yield from iterator
    finally:
        close = getattr(iterable, "close", None)
        if close is not None:
            close()


def stream(rest: Iterable[bytes], loop: asyncio.AbstractEventLoop, send: Send) -> None:
    """The rest of a large body, from a pool thread, each part as it comes."""

    async def forward(message: Message) -> None:
        await send(message)

    for part in rest:
        message = {"type": "http.response.body", "body": part, "more_body": True}
        asyncio.run_coroutine_threadsafe(forward(message), loop).result()
    asyncio.run_coroutine_threadsafe(forward({"type": "http.response.body"}), loop).result()


def wsgi_environ(scope: Scope, body: bytes) -> dict[str, Any]:
    """The WSGI environ of a complete ASGI request (PEP 3333: strings are latin-1)."""
    raw_path = bytes(scope.get("raw_path") or scope["path"].encode())
    query = bytes(scope.get("query_string") or b"")
    server = scope.get("server") or ("localhost", 80)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": "",
        "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),
        "QUERY_STRING": query.decode("latin-1"),
        # The path as sent, before percent-decoding (as gunicorn passes it):
        # views refuse an id ending in an encoded '/'.
        "RAW_URI": (raw_path + (b"?" + query if query else b"")).decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1] or 80),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        # Read whole already: a chunked body reads like any other.
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if http_metrics.OBSERVED_KEY in scope:
        environ[http_metrics.OBSERVED_KEY] = scope[http_metrics.OBSERVED_KEY]
    client = scope.get("client")
    if client:
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = client[0], str(client[1])
    for name, value in scope.get("headers", ()):
        key = name.decode("latin-1").upper().replace("-", "_")
        if key in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
            continue
        if key != "CONTENT_TYPE":
            key = "HTTP_" + key
        text = value.decode("latin-1")
        environ[key] = f"{environ[key]},{text}" if key in environ else text
    return environ


def content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def too_large(limit: int) -> str:
    return f"Request body too large: at most {limit} bytes."


async def answer(
    send: Send,
    status: int,
    code: str,
    detail: str,
    *,
    retry_after: int | None = None,
    close: bool = True,
) -> None:
    body = orjson.dumps({"detail": detail, "code": code})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    elif close:
        # A body declared too large is never read: the client should stop.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            # Requests in flight have finished: the server waited for them.
            for pool in list(_executors.values()):
                await asyncio.get_running_loop().run_in_executor(None, pool.shutdown)
            await send({"type": "lifespan.shutdown.complete"})
            return
