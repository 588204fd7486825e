"""Long polling: captures that wait for work (`wait`), woken through LISTEN/NOTIFY.

Each web process holds one listening connection to PostgreSQL. The services
that make tasks capturable at once or later (registration, import, a failed
or idle release, the operator actions) send `NOTIFY taskq_work` with the
namespace's id once their change is committed, so every process on every
server hears of it, whichever served the change.

A process wakes one waiting capture of the namespace per notification, and
two more each time a woken capture gets tasks: a burst reaches as many
waiters as it has tasks, the wakes doubling while there is work, and one
task does not send every waiter to the database at once. Several processes
each wake one of theirs; the capture statement (SKIP LOCKED) gives each task
to one of them.

Work that becomes capturable by time alone (a delayed task's turn, a lease
that expires with retries left) sends no notification: the process asks the
database for the namespace's next turn (`lease.NEXT_TURN`) when the
namespace gets its first waiter, after any wake that found nothing, and
every REFRESH_SECONDS while it has waiters (which also catches leases taken
or shortened elsewhere), and sets a timer for that instant. The database
therefore sees a few statements per second per namespace with waiters,
whatever the number of waiters.

The hub lives on the process's event loop; nothing here blocks it.
"""

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import orjson
import psycopg
from django.conf import settings
from django.db import connection as django_connection

from tasks_app import lease

log = logging.getLogger(__name__)

CHANNEL = lease.WORK_CHANNEL
# The most a capture may wait, in seconds (the API's bound on `wait`).
MAX_WAIT_SECONDS = 20
# How often the next turn of a namespace with waiters is read again.
REFRESH_SECONDS = 5.0
# How many more waiters a capture that got tasks wakes.
SPREAD = 2
# The next turn of a namespace is read at most this often: a thousand
# waiters that find nothing at once cost one read, not a thousand.
MIN_REFRESH_SECONDS = 0.1
# While the listening connection is down, waiters try again this often.
FALLBACK_SECONDS = 1.0
RECONNECT_SECONDS = 1.0


def notify(namespace_ids: list[str]) -> None:
    """Tell every waiting capture of these namespaces that work may be there.

    Run on the caller's connection: inside a transaction the notification is
    sent when it commits, in autocommit at once (after the change it follows).
    """
    if not namespace_ids:
        return
    with django_connection.cursor() as cursor:
        cursor.execute(lease.NOTIFY, {"channel": CHANNEL, "ids": sorted(set(namespace_ids))})


@dataclass
class Waiter:
    """A capture waiting in one namespace: woken (its event set) or not."""

    namespace_id: str
    woken: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Namespace:
    waiters: deque[Waiter] = field(default_factory=deque)
    timer: asyncio.TimerHandle | None = None
    refresh: asyncio.Task[None] | None = None
    refreshed_at: float = float("-inf")


class Hub:
    """The waiting captures of one process, and its listening connection."""

    def __init__(self, conninfo: Callable[[], dict[str, Any]]) -> None:
        self._conninfo = conninfo
        self._namespaces: dict[str, _Namespace] = {}
        self._listener: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._query: psycopg.AsyncConnection[Any] | None = None
        self._query_lock = asyncio.Lock()
        self.listening = asyncio.Event()

    def start(self) -> None:
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen())
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_all())

    # --- Waiting -------------------------------------------------------------------

    def enter(self, namespace_id: str) -> Waiter:
        """Join the namespace's queue of waiters, before the first capture
        attempt: a notification that arrives while it runs is not lost."""
        self.start()
        waiter = Waiter(namespace_id)
        entry = self._namespaces.setdefault(namespace_id, _Namespace())
        entry.waiters.append(waiter)
        if len(entry.waiters) == 1:
            self._schedule_refresh(namespace_id)
        return waiter

    def leave(self, waiter: Waiter) -> None:
        entry = self._namespaces.get(waiter.namespace_id)
        if entry is None:
            return
        try:
            entry.waiters.remove(waiter)
        except ValueError:
            pass
        if waiter.woken.is_set():
            # Woken but gone (answered, timed out, disconnected): the work it
            # was woken for may still be there for the next waiter.
            self._wake_one(waiter.namespace_id)
        if not entry.waiters:
            if entry.timer is not None:
                entry.timer.cancel()
            if entry.refresh is not None:
                entry.refresh.cancel()
            del self._namespaces[waiter.namespace_id]

    async def wait(self, waiter: Waiter, timeout: float) -> bool:
        """Until `waiter` is woken (True) or `timeout` seconds pass (False)."""
        limit = timeout if self.listening.is_set() else min(timeout, FALLBACK_SECONDS)
        try:
            await asyncio.wait_for(waiter.woken.wait(), limit)
        except TimeoutError:
            return not self.listening.is_set() and limit < timeout
        waiter.woken.clear()
        return True

    def captured(self, waiter: Waiter, got: bool) -> None:
        """After a woken waiter's capture: it got tasks, so there may be more
        for the next; or it got none, so read when the next turn is."""
        if got:
            # Doubling: a burst is spread over the waiters in a few rounds.
            for _ in range(SPREAD):
                self._wake_one(waiter.namespace_id, skip=waiter)
        else:
            self._schedule_refresh(waiter.namespace_id)

    def _wake_one(self, namespace_id: str, skip: Waiter | None = None) -> None:
        entry = self._namespaces.get(namespace_id)
        if entry is None:
            return
        for waiter in entry.waiters:
            if waiter is not skip and not waiter.woken.is_set():
                waiter.woken.set()
                # To the back of the queue: the next wake goes to another.
                entry.waiters.remove(waiter)
                entry.waiters.append(waiter)
                return

    def _wake_all(self) -> None:
        for entry in self._namespaces.values():
            for waiter in entry.waiters:
                waiter.woken.set()

    # --- Time: the next turn ---------------------------------------------------------

    def _schedule_refresh(self, namespace_id: str) -> None:
        entry = self._namespaces.get(namespace_id)
        if entry is None or (entry.refresh is not None and not entry.refresh.done()):
            return
        entry.refresh = asyncio.get_running_loop().create_task(self._refresh(namespace_id))

    async def _refresh(self, namespace_id: str) -> None:
        loop = asyncio.get_running_loop()
        entry = self._namespaces.get(namespace_id)
        if entry is None:
            return
        await asyncio.sleep(max(0.0, entry.refreshed_at + MIN_REFRESH_SECONDS - loop.time()))
        entry.refreshed_at = loop.time()
        try:
            seconds = await self._next_turn(namespace_id)
        except (psycopg.Error, OSError) as exc:
            log.warning("cannot read the next turn of %r: %s", namespace_id, exc)
            return
        entry = self._namespaces.get(namespace_id)
        if entry is None:
            return
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        if seconds is not None:
            entry.timer = asyncio.get_running_loop().call_later(
                max(seconds, 0.0), self._turn_came, namespace_id
            )

    def _turn_came(self, namespace_id: str) -> None:
        entry = self._namespaces.get(namespace_id)
        if entry is not None:
            entry.timer = None
        self._wake_one(namespace_id)

    async def _refresh_all(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            for namespace_id in list(self._namespaces):
                self._schedule_refresh(namespace_id)

    async def _next_turn(self, namespace_id: str) -> float | None:
        """Seconds until the namespace's next future turn, None when none."""
        async with self._query_lock:
            if self._query is None or self._query.closed:
                conninfo = await asyncio.to_thread(self._conninfo)
                self._query = await psycopg.AsyncConnection.connect(**conninfo, autocommit=True)
            cursor = await self._query.execute(lease.NEXT_TURN, {"namespace_id": namespace_id})
            row = await cursor.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    # --- Listening -------------------------------------------------------------------

    async def _listen(self) -> None:
        while True:
            try:
                conninfo = await asyncio.to_thread(self._conninfo)
                async with await psycopg.AsyncConnection.connect(
                    **conninfo, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    # Notifications sent while nobody listened are gone:
                    # every waiter looks again.
                    self._wake_all()
                    async for notice in conn.notifies():
                        self._wake_one(notice.payload)
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                if self.listening.is_set():
                    log.warning("the listening connection was lost: %s", exc)
            self.listening.clear()
            await asyncio.sleep(RECONNECT_SECONDS)


_hub: Hub | None = None


def process_hub() -> Hub:
    """This process's hub, made on first use on the event loop that serves it."""
    global _hub
    if _hub is None:
        _hub = Hub(listen_conninfo)
    return _hub


def requested(scope: Any, body: bytes) -> tuple[str, int] | None:
    """(namespace id, seconds) when an ASGI request is a capture asking to
    wait; None otherwise, or when its parameters are not plainly valid
    (Django then answers it, with a 400 if they are wrong)."""
    if scope["path"] not in CAPTURE_PATHS or scope["method"] not in ("GET", "POST"):
        return None
    query = parse_qs(bytes(scope.get("query_string") or b"").decode("latin-1"))
    params: dict[str, Any] = {name: values[-1] for name, values in query.items()}
    if scope["method"] == "POST" and body.strip():
        try:
            given = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(given, dict):
            return None
        # As the view reads it: a JSON body replaces the query string.
        params = given
    wait, namespace_id = params.get("wait"), params.get("namespace_id")
    if isinstance(wait, str) and wait.isascii() and wait.isdigit():
        wait = int(wait)
    if isinstance(wait, bool) or not isinstance(wait, int) or not 0 < wait <= MAX_WAIT_SECONDS:
        return None
    if not isinstance(namespace_id, str) or not namespace_id:
        return None
    return namespace_id, wait


CAPTURE_PATHS = frozenset({"/v1/task/capture", "/v1/task/capture/"})


def listen_conninfo() -> dict[str, Any]:
    """Where to LISTEN: PostgreSQL itself, never a pooler in transaction mode
    (which would hand the session to others): TASKQ_LISTEN_DATABASE_URL, else
    the database the app uses."""
    own = settings.TASKQ_LISTEN_DATABASE
    if own:
        params = {**own, "connect_timeout": 5}
    else:
        # (For the embedded server this may start it: called off the loop.)
        params = dict(django_connection.get_connection_params())
        for key in ("cursor_factory", "context", "prepare_threshold", "server_side_binding"):
            params.pop(key, None)
        # The app's statement timeouts (startup options) suit a LISTEN too.
    params["application_name"] = "taskq-listen"
    return params
